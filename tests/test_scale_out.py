"""Scale-out: several API instances and pinger replicas behave as one server.

Two gunicorn instances (`wsgi:app` as production runs it) share one PostgreSQL database and
one Redis (`RATELIMIT_STORAGE_URI`): a client limited on one is limited on the other, and a
device revoked, released, disabled or unlinked through one is refused by the other's hooks
within `HOOK_CACHE_TTL`. Pinger replicas (`python -m iot_server.pinger` processes, so that
SIGKILL is real) share `$share/<group>/device/+/ping` on Mosquitto: every PING is answered
exactly once, also while one replica is killed mid-burst.

Isolation from other runs on the same machine: every rate-limit bucket is keyed by a random
client address (the instances trust one proxy hop, and the tests send `X-Forwarded-For`),
device uuids are new, and the replicas use a private Mosquitto started from the machine's
binary: any other pinger subscribed on a shared broker (shared or not, in another group)
would answer these devices' PINGs too, and exact-once could not be asserted there.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest
import requests
from conftest import (
    MASTER_SECRET,
    MQTT_SECRET,
    ROOT,
    Devices,
    GunicornServer,
    new_uuid,
    pinger_process,
    seconds_until,
    server_env,
)
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, select, text, update

from iot_server import create_app, tokens
from iot_server.broker import decisions as broker_auth
from iot_server.extensions import db
from iot_server.models import Device, Owner
from iot_server.pinger.client import Pinger
from iot_server.pinger.store import read_last_seen, write_last_seen

pytestmark = pytest.mark.slow

HOOK_CACHE_TTL = 2.0
#: Scheduling slack on a shared 2-core machine, on top of a bound the product promises.
SLACK = 2.0
BEARER = {"Authorization": f"Bearer {MQTT_SECRET}"}


def report(line: str) -> None:
    """Print a measured figure (visible with `pytest -s`; the docs quote them)."""
    print(f"\n[scale-out] {line}", flush=True)


def client_address() -> str:
    """A random private address: a rate-limit bucket that no other run (or rerun) shares."""
    return "10." + ".".join(str(random.randint(0, 255)) for _ in range(3))


# ---------------------------------------------------------------- two API instances


@pytest.fixture(scope="module")
def instances(server_database, redis_url, tmp_path_factory):
    """Two gunicorn instances (2 workers each) on one PostgreSQL and one Redis."""
    log_dir = tmp_path_factory.mktemp("instances")
    env = server_env(
        server_database,
        RATELIMIT_STORAGE_URI=redis_url,
        RATELIMIT_DEFAULT="20 per 30 seconds",
        TRUSTED_PROXIES="1",
        HOOK_CACHE_TTL=str(int(HOOK_CACHE_TTL)),
    )
    servers = [GunicornServer(env, log_dir, workers=2) for _ in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def fleet(server_database):
    """Creates owners and devices straight in the instances' database, and issues tokens
    with the same JWT secret as theirs (`server_env` uses TestingConfig's)."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": server_database})
    yield Fleet(app, server_database)
    with app.app_context():
        db.engine.dispose()


class Fleet(Devices):
    """`Devices` in the servers' database, all claimed by one owner of the fleet's own."""

    def __init__(self, app, url: str):
        super().__init__(app, app.test_client())
        self.url = url
        self.username = f"scale-{new_uuid()[:8]}"
        with app.app_context():
            owner = Owner(username=self.username, password_hash="unused")
            db.session.add(owner)
            db.session.commit()
            self.owner_token = tokens.issue_owner_token(owner)

    def master(self) -> str:
        """A master claimed by the fleet's owner."""
        return super().master(owner=self.username)

    def last_seen(self, uuids: list[str]) -> dict[str, datetime | None]:
        """`last_seen_at` of each device, read afresh."""
        with self.app.app_context():
            rows = db.session.execute(
                select(Device.uuid, Device.last_seen_at).where(Device.uuid.in_(uuids))
            ).all()
            db.session.rollback()
        return {uuid: seen for uuid, seen in rows}


def get(server: GunicornServer, path: str, ip: str, **headers) -> requests.Response:
    """GET through a fresh connection, as a client behind one trusted proxy hop."""
    return requests.get(server.url + path, headers={"X-Forwarded-For": ip, **headers}, timeout=10)


def owner_call(server, method: str, path: str, fleet: Fleet) -> requests.Response:
    """An owner API call with the fleet owner's token."""
    headers = {"Authorization": f"Bearer {fleet.owner_token}", "X-Forwarded-For": client_address()}
    return requests.request(method, server.url + path, headers=headers, timeout=10)


def emqx_authn(server, uuid: str, token: str, clientid: str) -> str:
    """EMQX's login hook: the `result`."""
    body = {"clientid": clientid, "username": f"device_{uuid}", "password": token}
    answer = requests.post(server.url + "/emqx/authn", json=body, headers=BEARER, timeout=10)
    return answer.json()["result"]


def emqx_authz(server, uuid: str, clientid: str, topic: str) -> str:
    """EMQX's topic hook (publish): the `result`."""
    body = {"clientid": clientid, "username": f"device_{uuid}", "topic": topic,
            "action": "publish", "qos": "0", "retain": "false"}  # fmt: skip
    answer = requests.post(server.url + "/emqx/authz", json=body, headers=BEARER, timeout=10)
    return answer.json()["result"]


def goauth_user(server, uuid: str, token: str, clientid: str) -> bool:
    """go-auth's login hook (header-less from loopback): granted?"""
    body = {"username": f"device_{uuid}", "password": token, "clientid": clientid}
    return requests.post(server.url + "/mosquitto/user", json=body, timeout=10).status_code == 200


def goauth_acl(server, uuid: str, clientid: str, topic: str) -> bool:
    """go-auth's topic hook (acc 2, write): granted?"""
    body = {"username": f"device_{uuid}", "clientid": clientid, "topic": topic, "acc": 2}
    return requests.post(server.url + "/mosquitto/acl", json=body, timeout=10).status_code == 200


def test_auth_rate_limit_is_one_bucket_across_instances(instances):
    first, second = instances
    ip = client_address()
    path = "/auth/devices/request?uuid={}"
    headers = {"Authorization": f"Bearer {MASTER_SECRET}"}
    started = time.monotonic()
    statuses = [
        get((first, second)[i % 2], path.format(new_uuid()), ip, **headers).status_code
        for i in range(8)
    ]
    assert time.monotonic() - started < 4, "too slow to stay inside one 5-second window"
    # In-process counters would give each instance its own 5: eight 401s.
    assert statuses == [401] * 5 + [429] * 3
    limited = get(second, path.format(new_uuid()), ip, **headers)
    assert limited.json() == {"c": "RATE_LIMITED"}
    assert int(limited.headers["Retry-After"]) >= 1
    assert get(second, path.format(new_uuid()), client_address(), **headers).status_code == 401


def test_default_rate_limit_is_one_bucket_across_instances(instances, fleet):
    first, second = instances
    ip = client_address()
    token = {"Authorization": f"Bearer {fleet.token(fleet.master())}"}
    statuses = [get((first, second)[i % 2], "/mqtt", ip, **token).status_code for i in range(22)]
    assert statuses == [200] * 20 + [429] * 2  # RATELIMIT_DEFAULT = 20 per 30 seconds


def cut_off(fleet: Fleet, server, how: str, uuid: str, master: str | None) -> None:
    """Revoke, release, unlink or disable `uuid` through `server` (or the CLI)."""
    if how == "revoke":
        assert owner_call(server, "POST", f"/devices/{uuid}/revoke", fleet).status_code == 200
    elif how == "release":
        assert owner_call(server, "DELETE", f"/devices/{uuid}/claim", fleet).status_code == 200
    elif how == "unlink":
        answer = owner_call(server, "DELETE", f"/devices/{master}/agents/{uuid}", fleet)
        assert answer.status_code == 200
    else:  # the admin CLI: another process again, straight on the database
        command = [sys.executable, "-m", "flask", "--app", "wsgi", "devices", "disable", uuid]
        env = server_env(fleet.url)
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("how", ["revoke", "release", "disable", "unlink"])
def test_a_cut_off_device_is_refused_by_the_other_instance(instances, fleet, how):
    first, second = instances
    master = fleet.master()
    uuid = fleet.agent(master) if how == "unlink" else master
    token, clientid = fleet.token(uuid), f"esp-{uuid[:8]}"
    topic = f"device/{uuid}/ping"
    mqtt_header = {"Authorization": f"Bearer {token}"}
    # Instance B knows the session and has its state cached in its workers.
    assert emqx_authn(second, uuid, token, clientid) == "allow"
    assert goauth_user(second, uuid, token, clientid)
    for _ in range(6):
        assert emqx_authz(second, uuid, clientid, topic) == "allow"
        assert goauth_acl(second, uuid, clientid, topic)
    assert get(second, "/mqtt", client_address(), **mqtt_header).status_code == 200

    cut_off(fleet, first, how, uuid, master)
    done = time.monotonic()

    # Logins and HTTP read the database: refused at once.
    assert get(second, "/mqtt", client_address(), **mqtt_header).status_code == 403
    assert emqx_authn(second, uuid, token, clientid) == "deny"
    assert not goauth_user(second, uuid, token, clientid)
    # Topic checks may answer from B's state cache, at most HOOK_CACHE_TTL old.
    refused: dict[str, float] = {}

    def both_refuse() -> bool:
        if "emqx_authz" not in refused and emqx_authz(second, uuid, clientid, topic) == "deny":
            refused["emqx_authz"] = round(time.monotonic() - done, 2)
        if "goauth_acl" not in refused and not goauth_acl(second, uuid, clientid, topic):
            refused["goauth_acl"] = round(time.monotonic() - done, 2)
        return len(refused) == 2

    bound = HOOK_CACHE_TTL + SLACK
    seconds_until(both_refuse, bound)
    # B's other worker may still hold a state it read just before the change, but none
    # older than the TTL: past it, every worker refuses (fresh connections land on either).
    time.sleep(max(0.0, done + HOOK_CACHE_TTL + 0.2 - time.monotonic()))
    for _ in range(10):
        assert emqx_authz(second, uuid, clientid, topic) == "deny"
        assert not goauth_acl(second, uuid, clientid, topic)
    report(f"{how}: B's first refusal of a topic check after {refused} s")


def test_an_unlinked_agent_leaves_the_masters_topics_on_the_other_instance(instances, fleet):
    first, second = instances
    master = fleet.master()
    agent = fleet.agent(master)
    token, clientid = fleet.token(master), f"esp-{master[:8]}"
    topic = f"device/{agent}/master"
    assert emqx_authn(second, master, token, clientid) == "allow"
    for _ in range(6):
        assert emqx_authz(second, master, clientid, topic) == "allow"
    assert owner_call(first, "DELETE", f"/devices/{master}/agents/{agent}", fleet).ok
    done = time.monotonic()
    waited = seconds_until(
        lambda: emqx_authz(second, master, clientid, topic) == "deny", HOOK_CACHE_TTL + SLACK
    )
    time.sleep(max(0.0, done + HOOK_CACHE_TTL + 0.2 - time.monotonic()))
    for _ in range(10):
        assert emqx_authz(second, master, clientid, topic) == "deny"
        assert emqx_authz(second, master, clientid, f"device/{master}/ping") == "allow"
    report(f"unlink: B denies the master the agent's topic after {waited:.2f} s")


def test_a_login_racing_a_revocation_does_not_revive_the_session(app, devices, monkeypatch):
    """Instance B reads the device, instance A revokes it (bumps the version, forgets the
    sessions), then B would remember the new session: it must refuse instead, or the
    revoked session would pass every later go-auth topic check."""
    uuid = devices.master()
    token = devices.token(uuid)
    read = broker_auth.load_device_state

    def read_then_revoke(device_uuid):
        state = read(device_uuid)
        with db.engine.begin() as connection:
            connection.execute(
                update(Device)
                .where(Device.uuid == device_uuid)
                .values(token_version=Device.token_version + 1)
            )
        return state

    monkeypatch.setattr(broker_auth, "load_device_state", read_then_revoke)
    with app.test_request_context():
        decision = broker_auth.authenticate(f"device_{uuid}", token, "new-session")
    assert decision.result == "deny"
    assert devices.sessions(uuid) == {}


def test_a_late_presence_batch_never_moves_last_seen_back(app, devices):
    """Replicas flush on their own clocks: an older time landing later is ignored."""
    uuids = [devices.master() for _ in range(3)]
    newer = datetime(2025, 6, 1, 12, 0, 1, tzinfo=UTC).timestamp()
    with app.app_context():
        write_last_seen(db.engine, {uuids[0]: newer, uuids[1]: newer})
        write_last_seen(db.engine, {u: newer - 0.5 for u in uuids})  # the other replica's
        write_last_seen(db.engine, {uuids[1]: newer + 2})
    seen = [devices.get(u).last_seen_at.replace(tzinfo=UTC).timestamp() for u in uuids]
    assert seen == pytest.approx([newer, newer + 2, newer - 0.5], abs=1e-3)


def test_presence_reads_back_as_written(app, devices):
    """What a replica reads before re-PINGing is what the replicas wrote (naive SQLite
    times are UTC)."""
    heard, never = devices.master(), devices.master()
    at = datetime(2025, 6, 1, 12, 0, 1, 250000, tzinfo=UTC).timestamp()
    with app.app_context():
        write_last_seen(db.engine, {heard: at})
        seen = read_last_seen(db.engine, [heard, never, new_uuid()])
    assert seen == {heard: pytest.approx(at, abs=1e-3)}


# ---------------------------------------------------------------- pinger replicas


@pytest.fixture
def broker(private_mosquitto) -> int:
    """The port of a Mosquitto of this test alone."""
    return private_mosquitto.port


class Replica:
    """`python -m iot_server.pinger` in production mode, stats every second from its log."""

    STATS = re.compile(r"stats (\{.*\})")

    def __init__(self, env: dict[str, str]):
        self.process = pinger_process(env, "--stats-interval", "1", stdout=subprocess.DEVNULL)
        self.stats: dict = {}
        self.lines: list[str] = []
        self.subscribed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            try:
                message = json.loads(line).get("message", "")
            except ValueError:
                continue
            if message.startswith("connected; subscribing"):
                self.subscribed.set()
            elif found := self.STATS.match(message):
                self.stats = json.loads(found.group(1))

    def kill(self) -> None:
        """SIGKILL: no flush, no DISCONNECT; the broker sees the socket close."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def replicas(broker, server_database):
    """Factory: `replicas(n)` starts n pinger processes in one new shared group."""
    started: list[Replica] = []
    group = f"scale-{new_uuid()[:8]}"

    def start(count: int) -> list[Replica]:
        env = server_env(
            server_database,
            MQTT_BROKER_URL=f"mqtt://127.0.0.1:{broker}",
            MQTT_SHARED_GROUP=group,
        )
        new = [Replica(env) for _ in range(count)]
        started.extend(new)
        for replica in new:
            assert replica.subscribed.wait(30), "".join(replica.lines[-20:])
        time.sleep(0.3)  # SUBACK: the log line comes right before the SUBSCRIBE goes out
        return new

    yield start
    for replica in started:
        replica.stop()


@dataclass
class Outstanding:
    """The one PING a simulated device is waiting on."""

    seq: int
    sent: float


@dataclass
class DeviceLog:
    """What one simulated device sent and got back."""

    pings: int = 0
    pongs: int = 0
    server_pings: list[float] = field(default_factory=list)  # arrival times
    answered: list[tuple[float, float]] = field(default_factory=list)  # (sent, answered at)
    lost: list[float] = field(default_factory=list)  # send times of unanswered PINGs
    unexpected: list[float] = field(default_factory=list)  # PONGs with no PING waiting
    waiting: Outstanding | None = None
    next_at: float = 0.0


class DeviceGroup:
    """One MQTT connection standing in for many devices, each with at most one PING in
    flight: a PONG answers the waiting PING, and a PONG with none waiting is a duplicate.

    PINGs carry a sequence number `n`; the pinger ignores fields it does not know."""

    def __init__(self, port: int, uuids: list[str], pause: float, timeout: float):
        self.uuids = uuids
        self.logs = {uuid: DeviceLog() for uuid in uuids}
        self.pause, self.timeout = pause, timeout
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"scale-{uuids[0][:8]}",
            protocol=mqtt.MQTTv311,  # as the firmware: PubSubClient speaks 3.1.1
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.subscribe([(f"device/{uuid}/ping", 1) for uuid in uuids])
        assert subscribed.wait(10), "device group could not subscribe"
        self.thread: threading.Thread | None = None

    def _on_message(self, client, userdata, message) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(message.payload)
            if body.get("src") != "server":
                return
            now = time.monotonic()
            with self.lock:
                log = self.logs[message.topic.split("/")[1]]
                if body.get("c") == "PING":
                    log.server_pings.append(now)
                    return
                log.pongs += 1
                if log.waiting is None:
                    log.unexpected.append(now)
                else:
                    log.answered.append((log.waiting.sent, now))
                    log.waiting, log.next_at = None, now + self.pause

    def burst(self, count: int) -> None:
        """Every device sends `count` PINGs back to back (no waiting for answers)."""
        for n in range(count):
            for uuid in self.uuids:
                self.logs[uuid].pings += 1
                payload = json.dumps({"c": "PING", "n": n})
                self.client.publish(f"device/{uuid}/ping", payload, qos=0)

    def start(self) -> None:
        """Closed loop: each device PINGs, waits for its PONG (or `timeout`), pauses, again."""
        self.running.set()
        self.thread = threading.Thread(target=self._drive, daemon=True)
        self.thread.start()

    def _drive(self) -> None:
        seq = 0
        while self.running.is_set():
            now = time.monotonic()
            with self.lock:
                due = []
                for uuid, log in self.logs.items():
                    if log.waiting is not None and now - log.waiting.sent > self.timeout:
                        log.lost.append(log.waiting.sent)
                        log.waiting, log.next_at = None, now
                    if log.waiting is None and now >= log.next_at:
                        seq += 1
                        log.waiting, log.pings = Outstanding(seq, now), log.pings + 1
                        due.append((uuid, seq))
            for uuid, n in due:
                payload = json.dumps({"c": "PING", "n": n})
                self.client.publish(f"device/{uuid}/ping", payload, qos=0)
            time.sleep(0.005)

    def finish(self) -> None:
        """Stop sending; wait for the last answers (or their timeouts)."""
        self.running.clear()
        if self.thread:
            self.thread.join(5)
        deadline = time.monotonic() + self.timeout + 0.5
        while time.monotonic() < deadline:
            with self.lock:
                if all(log.waiting is None for log in self.logs.values()):
                    break
            time.sleep(0.05)
        with self.lock:
            for log in self.logs.values():
                if log.waiting is not None:
                    log.lost.append(log.waiting.sent)
                    log.waiting = None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device_groups(broker, fleet):
    """Factory: `device_groups(groups, per_group)` → connected groups of registered masters."""
    made: list[DeviceGroup] = []

    def make(groups: int, per_group: int, pause=0.1, timeout=3.0) -> list[DeviceGroup]:
        for _ in range(groups):
            uuids = [fleet.master() for _ in range(per_group)]
            made.append(DeviceGroup(broker, uuids, pause, timeout))
        return made

    yield make
    for group in made:
        group.running.clear()
        group.close()


def wait_for_stats(replicas: list[Replica], predicate, timeout: float = 10.0) -> None:
    """Until every replica's latest stats line satisfies `predicate`."""
    seconds_until(lambda: all(r.stats and predicate(r.stats) for r in replicas), timeout)


def test_replicas_answer_a_burst_exactly_once(replicas, device_groups, fleet):
    pingers = replicas(3)
    groups = device_groups(6, 10)  # 60 registered devices, 6 connections
    per_device = 10
    started = time.time()
    for group in groups:
        group.burst(per_device)
    logs = [log for g in groups for log in g.logs.values()]
    total = per_device * len(logs)

    # Many PINGs per device are in flight at once: count PONGs per device.
    with contextlib.suppress(AssertionError):
        seconds_until(lambda: sum(log.pongs for log in logs) >= total, 15)
    time.sleep(1.0)  # a duplicate would arrive within this
    counts = [log.pongs for log in logs]
    assert counts == [per_device] * len(logs), sorted(set(counts))

    with contextlib.suppress(AssertionError):
        seconds_until(lambda: sum(r.stats.get("pings", 0) for r in pingers) >= total, 5)
    shares = [r.stats.get("pings", 0) for r in pingers]
    report(f"burst of {total} PINGs from {len(logs)} devices: PONGs per device "
           f"{sorted(set(counts))}, replica shares {shares}")  # fmt: skip
    assert sum(shares) == total
    assert all(share > 0 for share in shares), shares
    assert_presence_written(fleet, {u: started for g in groups for u in g.uuids})


def assert_presence_written(fleet: Fleet, since: dict[str, float]) -> None:
    """Every device's `last_seen_at` is written and not older than its `since` (Unix time)."""
    uuids = list(since)
    seen: dict = {}

    def all_written() -> bool:
        seen.update(fleet.last_seen(uuids))
        return all(seen.get(u) is not None and seen[u].timestamp() >= since[u] for u in uuids)

    seconds_until(all_written, 5)


def test_killing_a_replica_mid_burst_loses_only_what_it_held(replicas, device_groups, fleet):
    pingers = replicas(3)
    victim, survivors = pingers[0], pingers[1:]
    groups = device_groups(6, 10, pause=0.1, timeout=3.0)
    wall_offset = time.time() - time.monotonic()
    for group in groups:
        group.start()
    time.sleep(2.0)
    at_kill = [r.stats.get("pings", 0) for r in survivors]
    killed = time.monotonic()
    victim.kill()
    time.sleep(3.0)
    for group in groups:
        group.finish()

    logs = [log for g in groups for log in g.logs.values()]
    answered = sorted(at for log in logs for _, at in log.answered)
    lost = sorted(sent for log in logs for sent in log.lost)
    unexpected = [at for log in logs for at in log.unexpected]
    sent = sum(log.pings for log in logs)
    gaps = [(b - a, a) for a, b in zip(answered, answered[1:], strict=False)]
    gap = max(g for g, _ in gaps)
    after_kill = max((g for g, at in gaps if at >= killed - 0.5), default=0.0)
    report(
        f"kill mid-burst: {sent} PINGs, {len(answered)} answered, {len(lost)} lost "
        f"(sent {[round(t - killed, 3) for t in lost[:10]]} s from the kill), "
        f"{len(unexpected)} duplicates; longest gap between PONGs {gap * 1000:.0f} ms, "
        f"around the kill {after_kill * 1000:.0f} ms"
    )
    assert unexpected == [], "a PING was answered twice"
    assert len(answered) + len(lost) == sent
    # Only PINGs the broker had already handed to the victim may be lost: none sent after
    # the broker saw its socket close (at once for a killed local process; 0.5 s allows for
    # scheduling on a busy machine).
    assert all(killed - 0.5 <= t <= killed + 0.5 for t in lost), [t - killed for t in lost]
    assert gap < 1.0
    assert victim.process.returncode == -signal.SIGKILL
    assert all(r.process.poll() is None for r in survivors)
    # The survivors carried the whole load on, and wrote every device's latest PING.
    seconds_until(lambda: all(r.stats.get("pending", 1) == 0 for r in survivors), 5)
    assert all(r.stats["pings"] > before for r, before in zip(survivors, at_kill, strict=True))
    last_answered = {
        uuid: max(sent for sent, _ in log.answered) + wall_offset - 0.05
        for group in groups
        for uuid, log in group.logs.items()
    }
    assert_presence_written(fleet, last_answered)


@pytest.fixture
def in_process_replicas(broker, server_database):
    """Factory: `in_process_replicas(n, **options)` runs n `Pinger`s in threads, one group."""
    engine = create_engine(server_database)
    group = f"scale-{new_uuid()[:8]}"
    running: list[tuple[Pinger, threading.Thread]] = []

    def start(count: int, **options) -> list[Pinger]:
        for _ in range(count):
            pinger = Pinger(f"mqtt://127.0.0.1:{broker}", "iot-server", MQTT_SECRET, engine,
                            shared_group=group, **options)  # fmt: skip
            thread = threading.Thread(target=pinger.run, daemon=True)
            thread.start()
            running.append((pinger, thread))
            assert pinger.subscribed.wait(10), "pinger did not subscribe"
        return [pinger for pinger, _ in running]

    yield start
    for pinger, thread in running:
        pinger.stop()
        thread.join(10)
    engine.dispose()


def test_replicas_do_not_ping_a_device_another_one_hears(in_process_replicas, device_groups):
    """Round robin hands each replica only every third message of a device, so each alone
    would find it silent; `last_seen_at` shows the group heard it, so nobody PINGs it."""
    interval = 1.2
    pingers = in_process_replicas(3, ping_interval=interval, flush_interval=0.1)
    (group,) = device_groups(1, 1, pause=0.5)
    log = group.logs[group.uuids[0]]
    group.start()
    time.sleep(5 * interval)
    group.finish()
    silent = max(at for _, at in log.answered)  # its last PONG: nothing from it since
    assert log.server_pings == [], "an active device was PINGed"
    skipped = sum(p.stats["heard_by_others"] for p in pingers)
    assert skipped > 0
    # Once really silent, it is PINGed (by each replica that heard it, at most).
    seconds_until(lambda: log.server_pings, 3 * interval)
    after = log.server_pings[0] - silent
    report(f"silent device PINGed {after:.2f} s after its last PING; {skipped} re-PINGs skipped")
    assert after >= interval * 0.8


# ---------------------------------------------------------------- the exact state cache


def listener_count(server: GunicornServer) -> int:
    """How many times the instance's workers have started listening for device changes."""
    return sum(r.get("message") == "device-state listener: listening" for r in server.records())


def state_reads(server: GunicornServer) -> dict[str, float]:
    """`iot_device_state_reads_total` by source, summed over the instance's workers."""
    found = {}
    for line in requests.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("iot_device_state_reads_total{"):
            source = line.split('source="', 1)[1].split('"', 1)[0]
            found[source] = float(line.rsplit(" ", 1)[1])
    return found


def kill_listeners(database_url: str) -> int:
    """Terminate every device-state listener's PostgreSQL connection (all instances)."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name"
                " = 'iot-state-listener' AND datname = current_database()"
            )
        ).all()
    engine.dispose()
    return len(killed)


def test_a_revoke_on_one_instance_is_denied_by_the_other_at_once(instances, fleet, server_database):
    """Logins on B are served from its workers' caches (no database round trip); a revoke
    committed through A reaches them by NOTIFY, so B's very next login with the old token
    is denied. Then the listeners' connections are killed: B reads the database until they
    are back, and a revoke made meanwhile is denied at once all the same."""
    a, b = instances
    uuid = fleet.master()
    delays = []
    before = state_reads(b)
    for _ in range(10):
        token = fleet.token(uuid)
        for _ in range(6):  # fresh connections: the kernel spreads them over B's workers
            assert emqx_authn(b, uuid, token, "esp") == "allow"
        assert owner_call(a, "POST", f"/devices/{uuid}/revoke", fleet).status_code == 200
        revoked = time.monotonic()
        assert emqx_authn(b, uuid, token, "esp") == "deny"
        delays.append(time.monotonic() - revoked)
    report(f"revoke on A, next login on B denied after {max(delays) * 1000:.1f} ms at most")
    after = state_reads(b)
    hits = after.get("hit", 0) - before.get("hit", 0)
    assert hits >= 10, (before, after)  # most of the 60 allowed logins came from the cache

    listening = listener_count(b)
    assert listening >= 1
    token = fleet.token(uuid)
    for _ in range(6):
        assert emqx_authn(b, uuid, token, "esp") == "allow"
    assert kill_listeners(server_database) >= 1
    assert owner_call(a, "POST", f"/devices/{uuid}/revoke", fleet).status_code == 200
    for _ in range(6):
        assert emqx_authn(b, uuid, token, "esp") == "deny"
    # The listeners come back by themselves, and the cache serves again.
    assert seconds_until(lambda: listener_count(b) > listening, 20) < 20
    token = fleet.token(uuid)
    for _ in range(6):
        assert emqx_authn(b, uuid, token, "esp") == "allow"


def test_each_worker_fills_its_device_cache_as_it_boots(start_gunicorn, fleet):
    """The listener starts with the worker, not with its first login: every worker's cache
    is filled before any request reaches it (a storm right after a deploy finds it full)."""
    fleet.master()
    server = start_gunicorn(workers=2)
    deadline = time.monotonic() + 20
    filled: list[dict] = []
    while time.monotonic() < deadline and len(filled) < 2:
        filled = [
            r for r in server.records() if "device-state cache filled" in r.get("message", "")
        ]
        time.sleep(0.1)
    assert len(filled) == 2, filled  # one line per worker
    access = server.stdout_path.read_text()
    assert "/emqx/authn" not in access and "/healthz" not in access
