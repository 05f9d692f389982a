"""The topic rules (iot_server.policy): examples, the EMQX rule list, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_server import policy
from iot_server.policy import PUBLISH, RECEIVE, SERVICE, SUBSCRIBE

M = "11111111-1111-4111-8111-111111111111"
A = "aaaaaaaa-2222-4222-8222-22222222222b"
B = "bbbbbbbb-3333-4333-8333-333333333333"
OTHER = "44444444-4444-4444-8444-444444444444"

MASTER = policy.device_identity(M, "master", [A, B])
AGENT = policy.device_identity(A, "agent")
ACTIONS = (PUBLISH, SUBSCRIBE, RECEIVE)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    "topic", [f"device/{M}/ping", f"device/{M}/data", f"device/{A}/master", f"device/{B}/master"]
)
def test_master_topics(action, topic):
    """A master uses its ping and data topics and each linked agent's master topic."""
    assert policy.is_allowed(MASTER, action, topic)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("topic", [f"device/{A}/ping", f"device/{A}/data", f"device/{A}/master"])
def test_agent_topics(action, topic):
    """An agent uses its own three topics."""
    assert policy.is_allowed(AGENT, action, topic)


@pytest.mark.parametrize(
    ("identity", "topic"),
    [
        (MASTER, f"device/{M}/master"),  # a master has no master topic of its own
        (MASTER, f"device/{A}/ping"),  # nor its agents' ping or data
        (MASTER, f"device/{A}/data"),
        (MASTER, f"device/{OTHER}/master"),  # nor an unlinked agent's
        (AGENT, f"device/{M}/ping"),  # an agent never reaches its master's topics
        (AGENT, f"device/{B}/master"),
        (AGENT, f"device/{A}"),
        (AGENT, f"device/{A}/ping/x"),
        (AGENT, f"Device/{A}/ping"),
        (AGENT, f"device/{A.upper()}/ping"),
        (AGENT, f"/device/{A}/ping"),
        (AGENT, f"device/{A}/ping/"),
    ],
)
@pytest.mark.parametrize("action", ACTIONS)
def test_other_topics_denied(identity, topic, action):
    """Anything but the exact topics is denied."""
    assert not policy.is_allowed(identity, action, topic)


@pytest.mark.parametrize(
    "topic",
    [
        "device/#",
        "#",
        "+/+/+",
        "device/+/ping",
        f"device/{A}/+",
        f"device/{A}/#",
        f"$share/g/device/{A}/ping",
        f"$SYS/device/{A}/ping",
        "$SYS/#",
        f"device//{A}/ping",
        f"device/{A}/ping\0",
        f"device/{A}/\ud800",
        "",
        "device/" + "x" * 70000 + "/ping",
        None,
        42,
        b"device/x/ping",
    ],
)
@pytest.mark.parametrize("action", ACTIONS)
def test_wildcards_dollar_and_malformed_topics_denied_to_devices(topic, action):
    """Devices get exact topics only: no wildcard, `$`, empty level, NUL, non-UTF-8, oversize."""
    assert not policy.is_allowed(AGENT, action, topic)
    assert not policy.is_allowed(MASTER, action, topic)


def test_unknown_action_denied():
    """Only publish, subscribe and receive exist."""
    assert not policy.is_allowed(AGENT, "all", f"device/{A}/ping")
    assert not policy.is_allowed(SERVICE, "all", "device/x/ping")
    assert not policy.is_allowed(AGENT, "", f"device/{A}/ping")


def test_agents_of_an_agent_are_ignored():
    """Only a master gets its agents' topics, whatever the caller passes."""
    odd = policy.device_identity(A, "agent", [B])
    assert not policy.is_allowed(odd, PUBLISH, f"device/{B}/master")


@pytest.mark.parametrize(
    ("action", "topic", "allowed"),
    [
        (PUBLISH, f"device/{A}/ping", True),
        (SUBSCRIBE, f"device/{A}/ping", True),
        (RECEIVE, f"device/{A}/ping", True),
        (SUBSCRIBE, "device/+/ping", True),
        (RECEIVE, "device/+/ping", True),
        (SUBSCRIBE, "$share/pingers/device/+/ping", True),
        (SUBSCRIBE, f"$share/pingers/device/{A}/ping", True),
        (SUBSCRIBE, "device/+/data", True),
        (SUBSCRIBE, f"device/{A}/data", True),
        (RECEIVE, f"device/{A}/data", True),
        (PUBLISH, "device/+/ping", False),  # publishing needs a concrete topic
        (PUBLISH, f"device/{A}/data", False),
        (PUBLISH, f"device/{A}/master", False),
        (SUBSCRIBE, f"device/{A}/master", False),
        (SUBSCRIBE, "device/#", False),
        (SUBSCRIBE, "#", False),
        (SUBSCRIBE, "device/+/+", False),
        (SUBSCRIBE, "device/#/ping", False),
        (SUBSCRIBE, "device//ping", False),
        (SUBSCRIBE, "$share//device/+/ping", False),
        (SUBSCRIBE, "$share/+/device/+/ping", False),
        (SUBSCRIBE, "$share/g/device/+/data/x", False),
        (SUBSCRIBE, "$share/g/device/+/data", False),
        (PUBLISH, "$share/g/device/x/ping", False),
        (SUBSCRIBE, "$SYS/#", False),
        (SUBSCRIBE, "device/+/ping\0", False),
    ],
)
def test_service_account(action, topic, allowed):
    """The service pings any device and listens to every ping and data topic; nothing more."""
    assert policy.is_allowed(SERVICE, action, topic) is allowed


def test_device_topics_are_stable():
    """The master's list is its own topics, then its agents' in uuid order."""
    assert policy.device_topics(MASTER) == (
        f"device/{M}/ping",
        f"device/{M}/data",
        f"device/{A}/master",
        f"device/{B}/master",
    )
    assert policy.device_topics(SERVICE) == ()


# ---------------------------------------------------------------- EMQX acl rules

EMQX_PERMISSIONS = {"allow", "deny"}
EMQX_ACTIONS = {"publish", "subscribe", "all"}
DENY_ALL = {"permission": "deny", "action": "all", "topic": "#"}


def check_emqx_rule(rule: dict) -> None:
    """Assert `rule` parses under EMQX 5.8's authn `acl` grammar (BROKERS.md): exactly
    permission, action, topic; a topic is a filter or `eq <literal topic>`."""
    assert set(rule) == {"permission", "action", "topic"}
    assert rule["permission"] in EMQX_PERMISSIONS
    assert rule["action"] in EMQX_ACTIONS
    topic = rule["topic"]
    assert isinstance(topic, str) and topic
    if topic.startswith("eq "):
        literal = topic[3:]
        assert policy.is_plain_topic(literal)
        assert "${" not in literal
    else:
        levels = topic.split("/")
        for index, level in enumerate(levels):
            assert level in ("+", "#") or ("+" not in level and "#" not in level)
            assert level != "#" or index == len(levels) - 1


@pytest.mark.parametrize("identity", [MASTER, AGENT, SERVICE], ids=["master", "agent", "service"])
def test_emqx_acl_is_valid_and_ends_in_deny_all(identity):
    """Every rule is well formed, and unmatched requests never fall through."""
    rules = policy.emqx_acl(identity)
    for rule in rules:
        check_emqx_rule(rule)
    assert rules[-1] == DENY_ALL
    assert all(rule["permission"] == "allow" for rule in rules[:-1])


def test_emqx_acl_of_devices_is_literal():
    """Device rules use `eq `, so a uuid can never act as a filter; one per topic."""
    rules = policy.emqx_acl(MASTER)[:-1]
    assert [rule["topic"] for rule in rules] == [
        f"eq {topic}" for topic in policy.device_topics(MASTER)
    ]
    assert {rule["action"] for rule in rules} == {"all"}


def test_emqx_acl_of_the_service():
    """The service's rules are the two families, subscribe-only for data."""
    assert policy.emqx_acl(SERVICE) == [
        {"permission": "allow", "action": "all", "topic": "device/+/ping"},
        {"permission": "allow", "action": "subscribe", "topic": "device/+/data"},
        DENY_ALL,
    ]


# ---------------------------------------------------------------- properties

uuids = st.uuids(version=4).map(str)
leaves = st.sampled_from(["ping", "data", "master"])
# Topics that might confuse a matcher: other devices' topics, wildcards, prefixes.
tricky_topics = st.one_of(
    st.builds(lambda u, leaf: f"device/{u}/{leaf}", uuids, leaves),
    st.builds(lambda u, leaf: f"device/{u.upper()}/{leaf}", uuids, leaves),
    st.builds(lambda u, s: f"device/{u}/{s}", uuids, st.text(max_size=8)),
    st.sampled_from(["device/#", "#", "device/+/ping", "device/+/+", "+/+/master", "$SYS/#"]),
    st.text(max_size=80),
)


@st.composite
def fleets(draw):
    """A master with some agents, a device under test drawn from them, and a stranger."""
    master = draw(uuids)
    agents = draw(st.lists(uuids, max_size=4, unique=True))
    stranger = draw(uuids)
    return master, agents, stranger


def owns(identity: policy.Identity, topic: str) -> bool:
    """The topics a device may touch: its own, plus its agents' master topics for a master."""
    owners = {identity.uuid, *identity.agents}
    levels = topic.split("/")
    return len(levels) == 3 and levels[0] == "device" and levels[1] in owners


@given(fleet=fleets(), topic=tricky_topics, action=st.sampled_from(ACTIONS))
def test_no_device_reaches_another_devices_topic(fleet, topic, action):
    """Property: whatever the topic, a device is only ever allowed its own exact topics
    (for a master, also its own agents' `master` topics), never a wildcard."""
    master_uuid, agents, _ = fleet
    for identity in (
        policy.device_identity(master_uuid, "master", agents),
        *(policy.device_identity(agent, "agent") for agent in agents),
    ):
        if policy.is_allowed(identity, action, topic):
            assert topic in policy.device_topics(identity)
            assert owns(identity, topic)
            assert "+" not in topic and "#" not in topic and not topic.startswith("$")


@given(fleet=fleets(), leaf=leaves, action=st.sampled_from(ACTIONS))
def test_a_stranger_is_never_allowed_a_fleet_topic(fleet, leaf, action):
    """Property: a device outside the fleet is denied every topic of every fleet member."""
    master_uuid, agents, stranger = fleet
    outsider = policy.device_identity(stranger, "agent")
    outsider_master = policy.device_identity(stranger, "master")
    for member in (master_uuid, *agents):
        if member == stranger:
            continue
        topic = f"device/{member}/{leaf}"
        assert not policy.is_allowed(outsider, action, topic)
        assert not policy.is_allowed(outsider_master, action, topic)


@given(agent=uuids, other=uuids, leaf=leaves, action=st.sampled_from(ACTIONS))
def test_an_agent_never_reaches_a_sibling(agent, other, leaf, action):
    """Property: agents of one master cannot touch each other's topics."""
    if agent == other:
        return
    assert not policy.is_allowed(
        policy.device_identity(agent, "agent"), action, f"device/{other}/{leaf}"
    )


@given(uuid=uuids, topic=st.text(max_size=120), action=st.sampled_from(ACTIONS))
def test_arbitrary_text_is_denied_unless_an_own_topic(uuid, topic, action):
    """Property: random text is allowed only when it is literally one of the device's topics."""
    identity = policy.device_identity(uuid, "agent")
    assert policy.is_allowed(identity, action, topic) == (topic in policy.device_topics(identity))


@given(uuid=uuids, action=st.sampled_from(ACTIONS))
def test_every_own_topic_is_allowed(uuid, action):
    """Property: the rules are not vacuous: a device may use each of its own topics."""
    identity = policy.device_identity(uuid, "agent")
    assert all(policy.is_allowed(identity, action, t) for t in policy.device_topics(identity))
