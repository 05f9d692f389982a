"""Who may touch which MQTT topic: the one place the topic rules of SPEC.md live.

Pure Python, no Flask and no database: the hook adapters (EMQX, mosquitto-go-auth) build an
`Identity` from what they know and ask `is_allowed()`; EMQX also gets the same rules as an
`acl` list (`emqx_acl()`). Devices get exact topics only; the service account gets the
`device/+/ping` and `device/+/data` families.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .models import AGENT, MASTER

DEVICE_ROLE = "device"
SERVICE_ROLE = "service"

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
#: A message is about to be delivered to the client (go-auth / amqtt acc 1).
RECEIVE = "receive"
ACTIONS = (PUBLISH, SUBSCRIBE, RECEIVE)

#: MQTT 3.1.1 §1.5.3: a UTF-8 string is at most 65535 bytes long.
MAX_TOPIC_BYTES = 65535


@dataclass(frozen=True)
class Identity:
    """An authenticated MQTT client: a device (uuid, kind, a master's agents) or the service."""

    role: str
    uuid: str | None = None
    kind: str | None = None
    agents: frozenset[str] = frozenset()


SERVICE = Identity(role=SERVICE_ROLE)


def device_identity(uuid: str, kind: str, agents: Iterable[str] = ()) -> Identity:
    """The identity of a device; `agents` only count for a master."""
    linked = frozenset(agents) if kind == MASTER else frozenset()
    return Identity(role=DEVICE_ROLE, uuid=uuid, kind=kind, agents=linked)


def device_topics(identity: Identity) -> tuple[str, ...]:
    """The exact topics a device may publish, subscribe and receive on, in a stable order."""
    if identity.role != DEVICE_ROLE or not identity.uuid:
        return ()
    own = (f"device/{identity.uuid}/ping", f"device/{identity.uuid}/data")
    if identity.kind == AGENT:
        return (*own, f"device/{identity.uuid}/master")
    if identity.kind == MASTER:
        return (*own, *(f"device/{agent}/master" for agent in sorted(identity.agents)))
    return ()


def is_plain_topic(topic: object) -> bool:
    """True for a concrete topic name a device may use: no wildcard, no `$`, no empty level,
    no NUL, valid UTF-8 and at most 65535 bytes (MQTT 3.1.1 §4.7)."""
    if not isinstance(topic, str) or not topic or topic.startswith("$") or "\0" in topic:
        return False
    if "+" in topic or "#" in topic:
        return False
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: JSON can carry them, UTF-8 cannot
        return False
    if size > MAX_TOPIC_BYTES:
        return False
    return all(topic.split("/"))


def is_allowed(identity: Identity, action: str, topic: object) -> bool:
    """Whether `identity` may `action` (publish, subscribe, receive) on `topic`."""
    if action not in ACTIONS or not is_plain_topic_or_filter(topic):
        return False
    if identity.role == DEVICE_ROLE:
        return is_plain_topic(topic) and topic in device_topics(identity)
    if identity.role == SERVICE_ROLE:
        return _service_allows(action, topic)
    return False


def is_plain_topic_or_filter(topic: object) -> bool:
    """Cheap well-formedness shared by every role: a non-empty UTF-8 string without NUL."""
    if not isinstance(topic, str) or not topic or "\0" in topic:
        return False
    try:
        return len(topic.encode("utf-8")) <= MAX_TOPIC_BYTES
    except UnicodeEncodeError:
        return False


def _service_allows(action: str, topic: str) -> bool:
    """The service account: `device/+/ping` both ways, `device/+/data` to listen."""
    if action == PUBLISH:
        return _matches_family(topic, "ping", wildcard=False)
    if topic.startswith("$share/"):
        # `$share/<group>/<filter>`: EMQX authorizes the real filter, amqtt has no shared
        # subscriptions (BROKERS.md); only a subscription carries the prefix.
        group, rest = _split_share(topic)
        if not group or action != SUBSCRIBE:
            return False
        return _matches_family(rest, "ping", wildcard=True)
    # Subscribing (or receiving what the subscription delivers).
    return _matches_family(topic, "ping", wildcard=True) or _matches_family(
        topic, "data", wildcard=True
    )


def _split_share(topic: str) -> tuple[str, str]:
    """`$share/g/a/b` → ("g", "a/b"); a malformed prefix gives an empty group."""
    parts = topic.split("/", 2)
    if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1]:
        return "", ""
    return parts[1], parts[2]


def _matches_family(topic: str, leaf: str, wildcard: bool) -> bool:
    """`device/<x>/<leaf>` for one concrete level x, or the filter `device/+/<leaf>`."""
    levels = topic.split("/")
    if len(levels) != 3 or levels[0] != "device" or levels[2] != leaf:
        return False
    middle = levels[1]
    if middle == "+":
        return wildcard
    return bool(middle) and "+" not in middle and "#" not in middle and not middle.startswith("$")


def emqx_acl(identity: Identity) -> list[dict[str, str]]:
    """The identity's rules in EMQX 5.8's authn `acl` format, ending in a deny-all.

    `eq ` makes EMQX match a device topic literally (no wildcard, no placeholder); without a
    final deny-all, unmatched requests would fall through to other sources (BROKERS.md).
    """
    if identity.role == DEVICE_ROLE:
        rules = [
            {"permission": "allow", "action": "all", "topic": f"eq {topic}"}
            for topic in device_topics(identity)
        ]
    elif identity.role == SERVICE_ROLE:
        rules = [
            {"permission": "allow", "action": "all", "topic": "device/+/ping"},
            {"permission": "allow", "action": "subscribe", "topic": "device/+/data"},
        ]
    else:
        rules = []
    return [*rules, {"permission": "deny", "action": "all", "topic": "#"}]
