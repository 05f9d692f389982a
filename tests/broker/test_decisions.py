"""The hook decisions (iot_server.broker.decisions): callers, logins, topic checks and caches."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from conftest import MQTT_SECRET, new_uuid
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from iot_server import devices as device_service
from iot_server import policy, tokens
from iot_server.broker import caches, callers, device_state
from iot_server.broker import decisions as broker_auth
from iot_server.broker.caches import DenialLog, TtlCache
from iot_server.broker.decisions import ALLOW, DENY, IGNORE
from iot_server.extensions import db
from iot_server.models import AGENT, MASTER, SESSIONS_PER_DEVICE, Device, Owner

PING = (policy.PUBLISH,)
SUB = (policy.SUBSCRIBE,)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """Replace the caches' clock."""
    fake = FakeClock()
    monkeypatch.setattr(caches, "clock", fake)
    return fake


@pytest.fixture
def ctx(app):
    """An app context with the hook caches installed."""
    with app.app_context():
        yield app


@contextmanager
def count_queries():
    """Count the SQL statements sent to the database inside the block."""
    statements: list[str] = []

    def before(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def username(uuid: str) -> str:
    """The device's MQTT username."""
    return f"device_{uuid}"


def revoke(uuid: str) -> None:
    """Revoke through the devices service, as the owner API and the CLI do."""
    device_service.revoke(db.session.get(Device, uuid))


# ---------------------------------------------------------------- hook callers


@pytest.mark.parametrize(
    ("authorization", "remote", "allowed"),
    [
        ("Bearer test-mqtt-secret-0123456789abcdefghijkl", "203.0.113.9", True),
        ("bearer test-mqtt-secret-0123456789abcdefghijkl", "203.0.113.9", True),
        (None, "127.0.0.1", True),
        (None, "127.8.9.10", True),
        (None, "::1", True),
        (None, "::ffff:127.0.0.1", True),
        (None, "203.0.113.9", False),
        (None, "10.0.0.1", False),
        (None, None, False),
        (None, "not-an-address", False),
        ("Bearer wrong", "127.0.0.1", False),  # a wrong secret is refused even from loopback
        ("Bearer ", "127.0.0.1", False),
        ("Basic dGVzdDp0ZXN0", "127.0.0.1", False),
        ("test-mqtt-secret-0123456789abcdefghijkl", "127.0.0.1", False),
        ("Bearer test-mqtt-secret-0123456789abcdefghijkl-and-more", "203.0.113.9", False),
    ],
)
def test_caller_allowed(ctx, authorization, remote, allowed):
    """The secret header from anywhere, or no header from a trusted network."""
    assert callers.caller_allowed(authorization, remote) is allowed


def test_trusted_networks_come_from_config(ctx):
    """HOOK_TRUSTED_NETWORKS lists networks and single addresses."""
    ctx.config["HOOK_TRUSTED_NETWORKS"] = "10.1.0.0/16, 192.0.2.7"
    assert callers.caller_allowed(None, "10.1.200.3")
    assert callers.caller_allowed(None, "192.0.2.7")
    assert not callers.caller_allowed(None, "192.0.2.8")
    assert not callers.caller_allowed(None, "127.0.0.1")
    ctx.config["HOOK_TRUSTED_NETWORKS"] = ""
    assert not callers.caller_allowed(None, "127.0.0.1")


def test_forwarded_header_less_calls_are_refused_without_trusted_proxies(ctx, caplog):
    """Behind a same-host proxy every caller is loopback: the forwarding header gives it away.

    Only the first such call logs that TRUSTED_PROXIES is probably wrong."""
    caplog.set_level(logging.INFO, logger="iot_server.hooks")
    assert callers.caller_allowed(None, "127.0.0.1", forwarded=False)
    for _ in range(3):
        assert not callers.caller_allowed(None, "127.0.0.1", forwarded=True)
    assert callers.caller_allowed(f"Bearer {MQTT_SECRET}", "127.0.0.1", forwarded=True)
    warnings = [r.getMessage() for r in caplog.records if "TRUSTED_PROXIES" in r.getMessage()]
    assert len(warnings) == 1 and "probably wrong" in warnings[0]
    ctx.config["TRUSTED_PROXIES"] = 1  # the proxy is counted: remote_addr is the origin
    assert callers.caller_allowed(None, "127.0.0.1", forwarded=True)


@pytest.mark.parametrize("header", callers.FORWARDING_HEADERS)
def test_forwarding_headers_are_recognised(header):
    assert callers.is_forwarded({header: "203.0.113.9"})
    assert not callers.is_forwarded({"X-Other": "203.0.113.9"})


def test_refused_callers_are_summarised_in_the_logs(ctx, clock, caplog):
    """A broker retrying with a wrong secret writes one line, then a count per window."""
    caplog.set_level(logging.INFO, logger="iot_server.hooks")
    for _ in range(30):
        assert not callers.caller_allowed("Bearer wrong", "203.0.113.9")
        clock.advance(1)
    clock.advance(31)
    assert not callers.caller_allowed("Bearer wrong", "203.0.113.9")
    messages = [r.getMessage() for r in caplog.records if r.name == "iot_server.hooks"]
    assert len(messages) == 3, messages
    assert messages[0].startswith("hook caller refused for 203.0.113.9")
    assert "29 more times" in messages[1]


def test_an_unset_secret_matches_nothing(ctx):
    """Without MQTT_SECRET_KEY, no header (not even an empty Bearer) is the secret."""
    ctx.config["MQTT_SECRET_KEY"] = None
    assert not callers.caller_allowed("Bearer ", "203.0.113.9")
    assert not callers.secret_matches("")
    assert broker_auth.authenticate("iot-server", "", "pinger").result == DENY


# ---------------------------------------------------------------- authentication


def test_device_login(ctx, devices):
    """A registered device with its current token is allowed, with its identity and expiry."""
    master = devices.master()
    agent = devices.agent(master)
    token = devices.token(master)
    decision = broker_auth.authenticate(username(master), token, "esp-1")
    assert decision.result == ALLOW
    assert decision.identity == policy.device_identity(master, "master", [agent])
    from flask_jwt_extended import decode_token

    assert decision.expire_at == decode_token(token)["exp"]
    assert isinstance(decision.expire_at, int)


def writes(statements: list[str]) -> list[str]:
    """The statements that change something (INSERT, UPDATE, DELETE)."""
    verbs = ("INSERT", "UPDATE", "DELETE")
    return [s for s in statements if s.lstrip().upper().startswith(verbs)]


def test_login_remembers_the_session_and_a_known_one_writes_nothing(ctx, devices):
    """The first login writes its client id; the same again is one SELECT and no write."""
    agent = devices.agent(devices.master())
    token = devices.token(agent)
    assert broker_auth.authenticate(username(agent), token, "esp-a").allowed
    assert devices.sessions(agent) == {"esp-a": 1}
    with count_queries() as statements:
        assert broker_auth.authenticate(username(agent), token, "esp-a").allowed
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert writes(statements) == []


def test_a_second_session_does_not_cut_the_first(ctx, devices, clock):
    """Two client ids of one device: both remembered, both use the device's topics."""
    agent = devices.agent(devices.master())
    token = devices.token(agent)
    topic = f"device/{agent}/ping"
    assert broker_auth.authenticate(username(agent), token, "firmware").allowed
    assert broker_auth.authenticate(username(agent), token, "debugger").allowed
    assert devices.sessions(agent) == {"firmware": 1, "debugger": 1}
    clock.advance(ctx.config["HOOK_CACHE_TTL"] + 0.1)  # from the database, not the cache
    for clientid in ("firmware", "debugger"):
        assert broker_auth.authorize(username(agent), clientid, PING, topic).allowed
    assert broker_auth.authorize(username(agent), "stranger", PING, topic).result == DENY


def test_a_17th_client_id_evicts_the_least_recently_authenticated(ctx, devices, clock):
    """At most SESSIONS_PER_DEVICE are remembered; the oldest goes, the others stay."""
    agent = devices.agent(devices.master())
    token = devices.token(agent)
    topic = f"device/{agent}/ping"
    names = [f"c{n:02}" for n in range(SESSIONS_PER_DEVICE + 1)]
    for name in names:
        assert broker_auth.authenticate(username(agent), token, name).allowed
    remembered = devices.sessions(agent)
    assert sorted(remembered) == names[1:]
    clock.advance(ctx.config["HOOK_CACHE_TTL"] + 0.1)
    assert broker_auth.authorize(username(agent), "c00", PING, topic).result == DENY
    assert broker_auth.authorize(username(agent), "c01", PING, topic).allowed
    assert broker_auth.authorize(username(agent), names[-1], PING, topic).allowed


def test_a_reconnecting_session_is_refreshed_and_not_evicted(ctx, devices):
    """A remembered session older than SESSION_REFRESH is rewritten at its next login, so
    a device that keeps reconnecting outlives 16 newer debugging sessions."""
    agent = devices.agent(devices.master())
    token = devices.token(agent)
    old = datetime.now(UTC) - device_state.SESSION_REFRESH - timedelta(seconds=1)
    devices.remember_session(agent, "firmware", authenticated_at=old)
    for n in range(SESSIONS_PER_DEVICE - 1):
        devices.remember_session(agent, f"debug-{n}", authenticated_at=old + timedelta(0, n))
    with count_queries() as statements:
        assert broker_auth.authenticate(username(agent), token, "firmware").allowed
    assert writes(statements), "a stale entry is refreshed"
    assert broker_auth.authenticate(username(agent), token, "one-more").allowed
    remembered = devices.sessions(agent)
    assert "firmware" in remembered and "debug-0" not in remembered
    assert len(remembered) == SESSIONS_PER_DEVICE


def test_revoke_cuts_every_session(ctx, devices, clock):
    """Every remembered session is forgotten, and each one's topic checks fail."""
    agent = devices.agent(devices.master())
    token = devices.token(agent)
    topic = f"device/{agent}/ping"
    for clientid in ("firmware", "debugger"):
        assert broker_auth.authenticate(username(agent), token, clientid).allowed
    revoke(agent)
    assert devices.sessions(agent) == {}
    clock.advance(ctx.config["HOOK_CACHE_TTL"] + 0.1)
    for clientid in ("firmware", "debugger"):
        assert broker_auth.authorize(username(agent), clientid, PING, topic).result == DENY


def test_a_session_of_an_older_token_version_is_refused(ctx, devices):
    """A row that outlived a revocation (a login racing it) uses no topic."""
    agent = devices.agent(devices.master())
    with db.session.begin():
        db.session.get(Device, agent).token_version = 2
    devices.remember_session(agent, "stale", token_version=1)
    topic = f"device/{agent}/ping"
    assert broker_auth.authorize(username(agent), "stale", PING, topic).result == DENY
    assert broker_auth.authenticate(username(agent), devices.token(agent), "stale").allowed
    assert devices.sessions(agent) == {"stale": 2}
    assert broker_auth.authorize(username(agent), "stale", PING, topic).allowed


def test_a_session_is_not_recorded_past_a_revocation(ctx, devices):
    """Recording at a version the device has left writes nothing."""
    agent = devices.agent(devices.master())
    revoke(agent)
    assert device_state.record_session(agent, "late", token_version=1) is None
    assert devices.sessions(agent) == {}


def test_username_case_is_normalised(ctx, devices):
    """A uuid in any letter case names the same (lowercase) device."""
    master = devices.master()
    decision = broker_auth.authenticate(username(master.upper()), devices.token(master), "c")
    assert decision.allowed


@pytest.mark.parametrize(
    "case", ["garbage", "other_device", "revoked", "disabled", "unregistered", "owner_token"]
)
def test_bad_device_logins_are_denied(ctx, devices, case):
    """Wrong, foreign, revoked or owner tokens and unusable devices are denied."""
    master = devices.master()
    token = devices.token(master)
    if case == "garbage":
        token = "not.a.jwt"
    elif case == "other_device":
        token = devices.token(devices.master())
    elif case == "revoked":
        revoke(master)
    elif case == "disabled":
        device_service.set_enabled(db.session.get(Device, master), False)
    elif case == "unregistered":
        master = devices.master(registered=False)
        token = devices.token(master)
    elif case == "owner_token":
        from iot_server import owners, tokens

        token = tokens.issue_owner_token(owners.by_username("alice"))
    assert broker_auth.authenticate(username(master), token, "c").result == DENY


@pytest.mark.parametrize("password", [None, "", 42])
def test_missing_token_is_denied(ctx, devices, password):
    """No password, no login."""
    assert broker_auth.authenticate(username(devices.master()), password, "c").result == DENY


@pytest.mark.parametrize("clientid", [None, "", "x" * 257, 7])
def test_malformed_client_id_is_denied_but_not_cached(ctx, devices, clientid):
    """A client id we could not remember is refused; the same token then works at once."""
    master = devices.master()
    token = devices.token(master)
    assert broker_auth.authenticate(username(master), token, clientid).result == DENY
    assert broker_auth.authenticate(username(master), token, "fine").allowed


@pytest.mark.parametrize(
    "name", ["", "alice", "device_", "device_not-a-uuid", "device_" + "a" * 32, "DEVICE_x"]
)
def test_foreign_usernames_are_ignored(ctx, name):
    """Neither a device nor the service account: another authenticator decides."""
    assert broker_auth.authenticate(name, "whatever", "c").result == IGNORE


def test_service_account(ctx):
    """The service account logs in with MQTT_SECRET_KEY only."""
    allowed = broker_auth.authenticate("iot-server", MQTT_SECRET, "pinger-1")
    assert allowed.result == ALLOW and allowed.identity == policy.SERVICE
    assert allowed.expire_at is None
    assert broker_auth.authenticate("iot-server", "wrong", "pinger-1").result == DENY
    assert broker_auth.authenticate("iot-server", None, "pinger-1").result == DENY


def test_service_username_is_configurable(ctx):
    """MQTT_SERVICE_USERNAME names the account."""
    ctx.config["MQTT_SERVICE_USERNAME"] = "pinger"
    assert broker_auth.authenticate("pinger", MQTT_SECRET, "p").allowed
    assert broker_auth.authenticate("iot-server", MQTT_SECRET, "p").result == IGNORE


# ---------------------------------------------------------------- negative cache and logs


def test_wrong_service_passwords_go_through_the_negative_cache(ctx, clock):
    """A wrong service password is remembered like a device's bad token; the right one is
    still accepted at once (another key)."""
    first = broker_auth.authenticate("iot-server", "wrong-service-password", "p")
    again = broker_auth.authenticate("iot-server", "wrong-service-password", "p")
    assert (first.result, first.reason) == (DENY, "wrong service password")
    assert (again.result, again.reason) == (DENY, "repeated failure")
    assert broker_auth.authenticate("iot-server", MQTT_SECRET, "p").allowed
    clock.advance(ctx.config["AUTH_NEGATIVE_TTL"] + 1)
    after = broker_auth.authenticate("iot-server", "wrong-service-password", "p")
    assert after.reason == "wrong service password"


def test_repeated_failure_skips_the_database(ctx, devices, clock):
    """A failed (username, password) is answered from memory for AUTH_NEGATIVE_TTL."""
    master = devices.master()
    token = devices.token(master)
    revoke(master)
    assert broker_auth.authenticate(username(master), token, "c").result == DENY
    with count_queries() as statements:
        for _ in range(20):
            assert broker_auth.authenticate(username(master), token, "c").result == DENY
        clock.advance(4.9)
        assert broker_auth.authenticate(username(master), token, "c").result == DENY
    assert statements == []
    clock.advance(0.2)
    with count_queries() as statements:
        assert broker_auth.authenticate(username(master), token, "c").result == DENY
    assert statements, "after the TTL the database is asked again"


def test_negative_cache_keys_on_the_password(ctx, devices, clock):
    """A new token for the same device is checked at once, not refused from the cache."""
    master = devices.master()
    assert broker_auth.authenticate(username(master), "wrong", "c").result == DENY
    assert broker_auth.authenticate(username(master), devices.token(master), "c").allowed


def test_negative_cache_never_stores_the_password(ctx, devices):
    """Only a digest of the credentials is kept."""
    master = devices.master()
    broker_auth.authenticate(username(master), "secret-looking-password", "c")
    items = caches.hook_caches().negative._items
    assert items
    assert all(b"secret-looking-password" not in key for key in items)


def test_negative_ttl_zero_disables_the_cache(ctx, devices):
    """AUTH_NEGATIVE_TTL=0: every failure is checked again."""
    ctx.config["AUTH_NEGATIVE_TTL"] = 0
    master = devices.master()
    token = devices.token(master)
    revoke(master)
    broker_auth.authenticate(username(master), token, "c")
    with count_queries() as statements:
        broker_auth.authenticate(username(master), token, "c")
    assert statements


def test_login_storm_is_summarised_in_the_logs(ctx, devices, clock, caplog):
    """The first denial is logged; the retries are counted into one summary line."""
    master = devices.master()
    caplog.set_level(logging.INFO, logger="iot_server.hooks")
    for _ in range(30):
        broker_auth.authenticate(username(master), "wrong-token-value", "c")
        clock.advance(1)
    denials = [r for r in caplog.records if r.name == "iot_server.hooks"]
    assert len(denials) == 1
    assert "login denied for device_" in denials[0].getMessage()
    clock.advance(31)
    broker_auth.authenticate(username(master), "wrong-token-value", "c")
    messages = [r.getMessage() for r in caplog.records if r.name == "iot_server.hooks"]
    assert len(messages) == 3
    assert "29 more times" in messages[1]
    assert all("wrong-token-value" not in m for m in messages)


def test_denial_log_sweeps_quiet_usernames(clock, caplog):
    """A storm that stopped is still summarised once another denial comes by."""
    caplog.set_level(logging.INFO, logger="iot_server.hooks")
    denials = DenialLog(window=10)
    for _ in range(5):
        denials.denied("device_a", "bad", None)
    clock.advance(11)
    denials.denied("device_b", "bad", None)
    messages = [r.getMessage() for r in caplog.records]
    assert any("4 more times for device_a" in m for m in messages)


def test_database_failure_denies_logs_and_is_not_cached(ctx, devices, monkeypatch, caplog):
    """An unreachable database denies (fail closed) without poisoning the caches."""
    master = devices.master()
    token = devices.token(master)

    def unreachable(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    caplog.set_level(logging.INFO, logger="iot_server.hooks")
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "connect", unreachable)
        assert broker_auth.authenticate(username(master), token, "c").result == DENY
        assert broker_auth.authorize(
            username(master), "c", PING, f"device/{master}/ping"
        ).result == (DENY)
    assert any("database unavailable" in r.getMessage() for r in caplog.records)
    assert all(token not in r.getMessage() for r in caplog.records)
    assert broker_auth.authenticate(username(master), token, "c").allowed


# ---------------------------------------------------------------- authorization


def test_device_topics_after_login(ctx, devices):
    """The authenticated session uses its topics; other sessions and topics are denied."""
    master = devices.master()
    agent = devices.agent(master)
    assert broker_auth.authenticate(username(master), devices.token(master), "m-1").allowed
    for topic in (f"device/{master}/ping", f"device/{master}/data", f"device/{agent}/master"):
        assert broker_auth.authorize(username(master), "m-1", PING, topic).allowed
        assert broker_auth.authorize(username(master), "m-1", SUB, topic).allowed
    assert broker_auth.authorize(username(master), "m-1", SUB, "device/#").result == DENY
    assert broker_auth.authorize(username(master), "m-2", PING, f"device/{master}/ping").result == (
        DENY
    )


def test_no_topics_before_login(ctx, devices):
    """A device that never authenticated has no session to check topics for."""
    agent = devices.agent(devices.master())
    assert broker_auth.authorize(username(agent), "c", PING, f"device/{agent}/ping").result == DENY


def test_read_and_write_together(ctx, devices):
    """Several actions must all be allowed."""
    agent = devices.agent(devices.master())
    broker_auth.authenticate(username(agent), devices.token(agent), "a")
    both = (policy.PUBLISH, policy.RECEIVE)
    assert broker_auth.authorize(username(agent), "a", both, f"device/{agent}/data").allowed
    assert broker_auth.authorize("iot-server", "p", both, f"device/{agent}/data").result == DENY
    assert broker_auth.authorize(username(agent), "a", ("all",), f"device/{agent}/data").result == (
        DENY
    )
    assert broker_auth.authorize(username(agent), "a", (), f"device/{agent}/data").result == DENY


def test_service_topics(ctx):
    """The service account's topic rules, without any session state."""
    assert broker_auth.authorize("iot-server", "p", SUB, "device/+/ping").allowed
    assert broker_auth.authorize("iot-server", "p", PING, "device/x/ping").allowed
    assert broker_auth.authorize("iot-server", "p", SUB, "device/#").result == DENY


def test_foreign_usernames_are_ignored_for_topics(ctx):
    """Not ours: another source decides."""
    assert broker_auth.authorize("alice", "c", PING, "device/x/ping").result == IGNORE
    assert broker_auth.authorize(None, "c", PING, "device/x/ping").result == DENY


def test_revocation_reaches_topic_checks_within_the_cache_ttl(ctx, devices, clock):
    """Revoking clears the session; cached state answers for at most HOOK_CACHE_TTL."""
    agent = devices.agent(devices.master())
    topic = f"device/{agent}/data"
    assert broker_auth.authenticate(username(agent), devices.token(agent), "a").allowed
    assert broker_auth.authorize(username(agent), "a", PING, topic).allowed
    revoke(agent)
    clock.advance(ctx.config["HOOK_CACHE_TTL"] - 0.1)
    assert broker_auth.authorize(username(agent), "a", PING, topic).allowed  # the bound
    clock.advance(0.2)
    assert broker_auth.authorize(username(agent), "a", PING, topic).result == DENY


def test_unlinking_reaches_the_master_within_the_cache_ttl(ctx, devices, clock):
    """An unlinked agent's master topic is gone from the master within the bound."""
    master = devices.master()
    agent = devices.agent(master)
    topic = f"device/{agent}/master"
    assert broker_auth.authenticate(username(master), devices.token(master), "m").allowed
    assert broker_auth.authorize(username(master), "m", PING, topic).allowed
    device_service.unlink(db.session.get(Device, master), agent)
    clock.advance(ctx.config["HOOK_CACHE_TTL"] + 0.1)
    assert broker_auth.authorize(username(master), "m", PING, topic).result == DENY
    assert broker_auth.authorize(username(master), "m", PING, f"device/{master}/ping").allowed


def test_cached_topic_checks_skip_the_database(ctx, devices, clock):
    """Within the TTL, allowed topic checks are answered from memory."""
    agent = devices.agent(devices.master())
    broker_auth.authenticate(username(agent), devices.token(agent), "a")
    with count_queries() as statements:
        for _ in range(50):
            assert broker_auth.authorize(username(agent), "a", PING, f"device/{agent}/ping").allowed
            clock.advance(0.01)
    assert statements == []


def test_a_reconnect_seen_by_another_worker_is_picked_up(ctx, devices, clock):
    """A cached state without a new session (another process recorded it) is re-read
    rather than refusing the new session for the whole TTL."""
    agent = devices.agent(devices.master())
    broker_auth.authenticate(username(agent), devices.token(agent), "old")
    assert broker_auth.authorize(username(agent), "old", PING, f"device/{agent}/ping").allowed
    device_state.record_session(agent, "new", 1)  # as another worker's login would
    clock.advance(broker_auth.DENIED_STATE_RECHECK + 0.01)
    assert broker_auth.authorize(username(agent), "new", PING, f"device/{agent}/ping").allowed


def test_a_denied_session_rereads_at_most_every_recheck_interval(ctx, devices, clock):
    """A revoked session that keeps publishing costs a bounded number of queries."""
    agent = devices.agent(devices.master())
    broker_auth.authenticate(username(agent), devices.token(agent), "a")
    revoke(agent)
    clock.advance(ctx.config["HOOK_CACHE_TTL"] + 0.1)
    topic = f"device/{agent}/ping"
    with count_queries() as statements:
        for _ in range(100):  # one second of retries every 10 ms
            assert broker_auth.authorize(username(agent), "a", PING, topic).result == DENY
            clock.advance(0.01)
    assert 1 <= len(statements) <= 5


# ---------------------------------------------------------------- the cache itself


def test_ttl_cache_is_bounded_and_expires():
    """Least recently used entries go first; expired entries are never returned."""
    cache = TtlCache(max_entries=3)
    for key in "abcd":
        cache.put(key, key.upper(), expires=10)
    assert len(cache) == 3
    assert cache.get("a", now=0) is None
    assert cache.get("b", now=0) == "B"
    cache.put("e", "E", expires=10)
    assert cache.get("c", now=0) is None  # b was used more recently than c
    assert cache.get("b", now=10) is None


def test_real_database_outage_denies_then_recovers(proxied_postgres, caplog):
    """PostgreSQL behind a proxy we cut: hooks deny and log during the outage, nothing is
    cached, and the same login succeeds once the database is back (no restart)."""
    app, proxy = proxied_postgres
    master, agent = new_uuid(), new_uuid()
    caplog.set_level(logging.INFO, logger="iot_server.hooks")
    try:
        with app.app_context():
            owner = Owner(username=f"outage-{master[:8]}", password_hash="x")
            db.session.add(owner)
            db.session.flush()
            db.session.add(Device(uuid=master, kind=MASTER, owner_id=owner.id))
            db.session.add(Device(uuid=agent, kind=AGENT, master_uuid=master))
            db.session.commit()
            token = tokens.issue_device_token(db.session.get(Device, agent))
            db.session.remove()
            assert broker_auth.authenticate(username(agent), token, "a").allowed

            proxy.cut()
            assert broker_auth.authenticate(username(agent), token, "b").result == DENY
            caches.hook_caches().devices.clear()
            topic = f"device/{agent}/ping"
            assert broker_auth.authorize(username(agent), "a", PING, topic).result == DENY
            assert any("database unavailable" in r.getMessage() for r in caplog.records)

            proxy.start()
            assert broker_auth.authenticate(username(agent), token, "b").allowed
            assert broker_auth.authorize(username(agent), "b", PING, topic).allowed
    finally:
        with app.app_context():
            db.session.remove()
            with db.engine.begin() as conn:
                conn.execute(Device.__table__.delete().where(Device.uuid.in_([agent])))
                conn.execute(Device.__table__.delete().where(Device.uuid.in_([master])))
                conn.execute(Owner.__table__.delete().where(Owner.username.like("outage-%")))


def test_a_restart_while_idle_costs_no_denied_login(proxied_postgres):
    """The hooks read without a pre-ping: a pooled connection that died while idle is
    retried once, so the first login after a database restart is still allowed."""
    app, proxy = proxied_postgres
    master = new_uuid()
    try:
        with app.app_context():
            owner = Owner(username=f"restart-{master[:8]}", password_hash="x")
            db.session.add(owner)
            db.session.flush()
            db.session.add(Device(uuid=master, kind=MASTER, owner_id=owner.id))
            db.session.commit()
            token = tokens.issue_device_token(db.session.get(Device, master))
            db.session.remove()
            assert broker_auth.authenticate(username(master), token, "a").allowed
            for clientid in ("b", "c"):
                proxy.cut()
                proxy.start()
                caches.hook_caches().clear()
                assert broker_auth.authenticate(username(master), token, clientid).allowed
    finally:
        with app.app_context():
            db.session.remove()
            with db.engine.begin() as conn:
                conn.execute(Device.__table__.delete().where(Device.uuid == master))
                conn.execute(Owner.__table__.delete().where(Owner.username.like("restart-%")))
