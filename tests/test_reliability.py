"""Reliability under load and faults, against gunicorn as production runs it (issue 8).

- A reconnect storm: 2,000 devices' login hooks in one burst, every answer checked.
- PostgreSQL cut and restored under load: 503 or deny during, recovery with the same workers.
- The limiter's Redis killed and restarted under load: serving goes on, the logs say so, and
  the counters go back to Redis.
- The broker killed under the pinger: it reconnects, and every PING sent once it has
  resubscribed gets exactly one PONG.

Each test prints a `FIGURE` line (`pytest -s`) that docs/reliability.md quotes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
import requests
from conftest import (
    MASTER_SECRET,
    MQTT_SECRET,
    PrivateMosquitto,
    RedisServer,
    TcpProxy,
    pinger_env,
    pinger_process,
    service_unavailable,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion
from reliability_kit import (
    burst,
    figure,
    owner_token_of,
    percentile,
    running_workers,
    seed_fleet,
)
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from iot_server.models import Device, DeviceSession

pytestmark = pytest.mark.slow

HOOK_BEARER = {"Authorization": f"Bearer {MQTT_SECRET}"}
#: Limits no test load reaches: these tests are about faults, not rate limiting.
UNLIMITED = {"RATELIMIT_AUTH": "1000000 per minute", "RATELIMIT_DEFAULT": "1000000 per minute"}
STORM_DEVICES = 2000


# ---------------------------------------------------------------- reconnect storm


def login_request(style: str, device, token: str) -> tuple[str, str, dict]:
    """The login hook call a broker makes when `device` connects with `token`."""
    body = {"clientid": device.clientid, "username": device.username, "password": token}
    if style == "emqx":
        return (
            "POST",
            "/emqx/authn",
            {"json": {**body, "peerhost": "10.1.2.3"}, "headers": HOOK_BEARER},
        )
    # go-auth sends no header; the loopback address is trusted.
    return "POST", "/mosquitto/user", {"json": body}


def login_answer_is_right(style: str, device, answer, allowed: bool) -> bool:
    """The exact answer the contract gives for an allowed or a denied login."""
    body = answer.body or {}
    if style == "mosquitto":
        if allowed:
            return answer.status == 200 and body == {"ok": True, "error": ""}
        return answer.status == 403 and body.get("ok") is False
    if not allowed:
        return answer.status == 200 and body == {"result": "deny"}
    return (
        answer.status == 200
        and body.get("result") == "allow"
        and body.get("client_attrs") == {"role": "device", "kind": device.kind}
        and isinstance(body.get("expire_at"), int)
        and body["acl"][-1] == {"permission": "deny", "action": "all", "topic": "#"}
        and any(rule.get("topic") == f"eq device/{device.uuid}/ping" for rule in body["acl"])
    )


def recorded_client_ids(database_url: str, uuids: list[str]) -> dict[str, str | None]:
    """The client id each device has a remembered session for (None when it has none)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            column = DeviceSession.__table__.c
            rows = connection.execute(
                select(column.device_uuid, column.client_id).where(column.device_uuid.in_(uuids))
            )
            found = dict(rows.all())
            return {uuid: found.get(uuid) for uuid in uuids}
    finally:
        engine.dispose()


@pytest.mark.parametrize("style", ["emqx", "mosquitto"])
def test_reconnect_storm_of_2000_devices_is_answered_correctly(
    start_gunicorn, server_database, style
):
    """2,000 logins at once: every one answered right, no 5xx, no worker lost."""
    fleet = seed_fleet(server_database, masters=STORM_DEVICES // 2, agents_per_master=1)
    server = start_gunicorn(workers=2)
    baseline, baseline_seconds = burst(server.url, [("GET", "/healthz", {})] * STORM_DEVICES)
    assert all(answer.status == 200 for answer in baseline)
    workers = running_workers(server, 2)

    # One device in ten presents another device's token: it must be denied in the storm too.
    impostors = set(range(0, len(fleet), 10))
    calls = [
        login_request(style, device, fleet[i - 1].token if i in impostors else device.token)
        for i, device in enumerate(fleet)
    ]
    answers, seconds = burst(server.url, calls)

    wrong = [
        (a.index, a.status, a.body, a.error)
        for a in answers
        if not login_answer_is_right(style, fleet[a.index], a, a.index not in impostors)
    ]
    latencies = [a.seconds for a in answers]
    p99, healthz_p99 = percentile(latencies, 0.99), percentile([a.seconds for a in baseline], 0.99)
    figure(
        f"storm_{style}",
        devices=len(answers),
        wrong=len(wrong),
        status_5xx=sum(a.status >= 500 for a in answers),
        seconds=round(seconds, 2),
        logins_per_s=round(len(answers) / seconds),
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=p99 * 1000,
        healthz_p99_ms=healthz_p99 * 1000,
        healthz_per_s=round(len(baseline) / baseline_seconds),
    )
    assert not wrong, wrong[:5]
    assert server.worker_pids() == workers
    assert not [r for r in server.records() if r.get("level") in ("ERROR", "CRITICAL")]
    # Nothing lost: every admitted device's client id is recorded, no impostor's.
    stored = recorded_client_ids(server_database, [device.uuid for device in fleet])
    expected = {d.uuid: (None if i in impostors else d.clientid) for i, d in enumerate(fleet)}
    assert stored == expected
    assert p99 < 10, "a storm login waited more than 10 s"


# ---------------------------------------------------------------- probes under faults


@dataclass(frozen=True)
class Probe:
    """One request of a fault run and how to read its answer: the service up or down."""

    name: str
    method: str
    path: str
    headers: dict
    json: dict | None = None

    def verdict(self, status: int, body) -> str | None:
        """'up', 'down' or None (an answer the contract does not allow)."""
        ok = isinstance(body, dict)
        if self.name == "healthz":
            return "up" if (status, body) == (200, {"c": "OK"}) else None
        if self.name == "emqx_authn":
            if status == 200 and ok and body.get("result") == "allow":
                return "up"
            return "down" if (status, body) == (200, {"result": "deny"}) else None
        if self.name == "mosquitto_user":
            if (status, body) == (200, {"ok": True, "error": ""}):
                return "up"
            return "down" if status == 403 and ok and body.get("ok") is False else None
        if status == 200 and ok and body.get("c") == "OK":
            return "up"
        if status == 503 and body == {"c": "ERROR", "error": "database unavailable"}:
            return "down"
        return None


def probes_for(device, owner_token: str) -> list[Probe]:
    """Every kind of request that needs the database, and /healthz that does not."""
    login = {"clientid": device.clientid, "username": device.username, "password": device.token}
    return [
        Probe("healthz", "GET", "/healthz", {}),
        Probe("readyz", "GET", "/readyz", {}),
        Probe(
            "registration",
            "GET",
            f"/auth/devices/request?uuid={device.uuid}",
            {"Authorization": f"Bearer {MASTER_SECRET}"},
        ),
        Probe("mqtt", "GET", "/mqtt", {"Authorization": f"Bearer {device.token}"}),
        Probe("owner_devices", "GET", "/devices", {"Authorization": f"Bearer {owner_token}"}),
        Probe("emqx_authn", "POST", "/emqx/authn", HOOK_BEARER, {**login, "peerhost": "10.0.0.1"}),
        Probe("mosquitto_user", "POST", "/mosquitto/user", {}, login),
    ]


@dataclass
class Sample:
    """One probe's answer, with when it was sent and received (monotonic seconds)."""

    probe: str
    started: float
    ended: float
    status: int
    verdict: str | None
    body: object


class Load:
    """A few threads sending the probes round-robin until stopped, recording every answer."""

    def __init__(self, base: str, probes: list[Probe], threads: int = 4):
        self.base = base
        self.probes = probes
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, offset: int) -> None:
        session = requests.Session()
        index = offset
        while not self._stop.is_set():
            probe = self.probes[index % len(self.probes)]
            index += 1
            started = time.monotonic()
            try:
                response = session.request(
                    probe.method,
                    self.base + probe.path,
                    headers=probe.headers,
                    json=probe.json,
                    timeout=20,
                )
                status = response.status_code
                try:
                    body = response.json()
                except ValueError:
                    body = response.text[:200]
            except requests.RequestException as exc:
                status, body = 0, repr(exc)
            sample = Sample(
                probe.name, started, time.monotonic(), status, probe.verdict(status, body), body
            )
            with self._lock:
                self.samples.append(sample)

    def since(self, moment: float) -> list[Sample]:
        """Samples sent at or after `moment`."""
        with self._lock:
            return [s for s in self.samples if s.started >= moment]


def unexpected(samples: list[Sample]) -> list[tuple]:
    """Answers outside the contract (5xx other than the outage's 503, HTML, resets)."""
    return [(s.probe, s.status, s.body) for s in samples if s.verdict is None]


def settled_up(load: Load, since: float, quiet: float) -> bool:
    """Every probe answered 'up' for the last `quiet` seconds, since `since`."""
    now = time.monotonic()
    recent = load.since(max(since, now - quiet))
    return now - since >= quiet and bool(recent) and all(s.verdict == "up" for s in recent)


def recovery_seconds(samples: list[Sample], restored: float) -> float:
    """From the restore to the answer of the last request not served normally."""
    late = [s.ended for s in samples if s.started >= restored and s.verdict != "up"]
    return max(late, default=restored) - restored


# ---------------------------------------------------------------- PostgreSQL outage


def test_postgres_outage_is_503_or_deny_then_recovers_without_restart(
    start_gunicorn, server_database
):
    """Cut PostgreSQL under load: every database answer is 503/deny, /healthz stays 200,
    and service comes back within seconds of the restore, on the same workers."""
    device = seed_fleet(server_database, masters=1)[0]
    owner_token = owner_token_of(server_database, device.uuid)
    url = make_url(server_database)
    proxy = TcpProxy(url.port or 5432).start()
    through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    # A long negative TTL: a denial cached during the outage would outlast the test.
    server = start_gunicorn(
        workers=2, DATABASE_URL=through_proxy, AUTH_NEGATIVE_TTL="60", **UNLIMITED
    )
    workers = running_workers(server, 2)
    try:
        with Load(server.url, probes_for(device, owner_token)) as load:
            started = time.monotonic()
            assert wait_until(lambda: settled_up(load, started, 2.0), 30), unexpected(load.samples)
            cut = time.monotonic()
            proxy.cut()
            time.sleep(4)
            restored = time.monotonic()
            proxy.start()
            assert wait_until(lambda: settled_up(load, restored, 3.0), 40), "did not recover"
        samples = load.samples
    finally:
        proxy.stop()

    during = [s for s in samples if s.started >= cut + 0.2 and s.ended <= restored]
    down = {s.probe: s.verdict for s in during if s.probe != "healthz"}
    recovery = recovery_seconds(samples, restored)
    figure(
        "postgres_outage",
        requests=len(samples),
        during_outage=len(during),
        status_5xx_other_than_503=sum(s.status >= 500 and s.status != 503 for s in samples),
        recovery_s=recovery,
        workers_restarted=len(workers - server.worker_pids()),
    )
    assert not unexpected(samples), unexpected(samples)[:5]
    assert set(down.values()) == {"down"}, during[:5]
    assert set(down) == {p.name for p in probes_for(device, owner_token)} - {"healthz"}
    assert all(s.verdict == "up" for s in during if s.probe == "healthz")
    assert recovery < 15
    assert server.worker_pids() == workers
    messages = " ".join(str(r.get("message")) for r in server.records())
    assert "database unavailable" in messages


def test_database_lost_after_the_answer_is_built_is_not_a_500(proxied_postgres):
    """The race the outage test found: PostgreSQL goes between the view and the teardown;
    the session's ROLLBACK then fails, and must not replace the answer with a 500."""
    from iot_server import owners, tokens
    from iot_server.extensions import db

    app, proxy = proxied_postgres
    with app.app_context():
        owner = owners.create(f"race-{uuidlib.uuid4().hex[:8]}", "correct horse battery")
        token = tokens.issue_owner_token(owner)
    cut_now = threading.Event()

    @app.after_request
    def cut_after_the_view(response):
        if cut_now.is_set():
            proxy.cut()
        return response

    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    cut_now.set()
    answer = client.get("/devices", headers=headers)
    cut_now.clear()
    proxy.start()
    assert (answer.status_code, answer.get_json()) == (
        200,
        {"c": "OK", "devices": [], "next": None},
    )
    assert client.get("/devices", headers=headers).status_code == 200
    with app.app_context():
        db.session.delete(db.session.get(type(owner), owner.id))
        db.session.commit()


# ---------------------------------------------------------------- Redis outage


def limiter_logs(server) -> tuple[int, int]:
    """How many times the workers logged the limiter storage lost, and recovered."""
    messages = [str(r.get("message", "")).lower() for r in server.records()]
    lost = sum("rate limit storage unreachable" in m for m in messages)
    back = sum("rate limit storage recovered" in m for m in messages)
    return lost, back


def every_request_counted(server, redis, requests_sent: int = 10) -> bool:
    """Whether Redis counts each of a run of requests to the default bucket."""

    def total() -> int:
        with contextlib.closing(redis.client()) as client:
            values = [client.get(key) for key in client.keys("*")]
        return sum(int(value) for value in values if value and value.isdigit())

    before = total()
    for _ in range(requests_sent):
        requests.get(f"{server.url}/openapi.json", headers={"Connection": "close"}, timeout=5)
    return total() - before == requests_sent


def test_redis_outage_keeps_serving_says_so_and_returns_to_redis(start_gunicorn, server_database):
    """Kill the limiter's Redis under load: answers stay right, the logs say so, and once
    Redis is back every worker counts there again."""
    device = seed_fleet(server_database, masters=1)[0]
    owner_token = owner_token_of(server_database, device.uuid)
    redis = RedisServer().start()
    try:
        # An hour's window: the counters stay put while the test sums them.
        limits = {**UNLIMITED, "RATELIMIT_DEFAULT": "1000000 per hour"}
        server = start_gunicorn(workers=2, RATELIMIT_STORAGE_URI=redis.url, **limits)
        workers = running_workers(server, 2)
        probes = [p for p in probes_for(device, owner_token) if p.name in LIMITED_PROBES]
        with Load(server.url, probes) as load:
            assert wait_until(lambda: len(redis.keys()) > 0, 20), "the limiter never used Redis"
            killed = time.monotonic()
            redis.kill()
            assert wait_until(lambda: limiter_logs(server)[0] > 0, 20), "no log line"
            time.sleep(3)
            restarted = time.monotonic()
            redis.start()  # same port, empty
            assert wait_until(lambda: len(redis.keys()) > 0, 60), "the limiter never came back"
            back_in_redis = time.monotonic() - restarted
        samples = load.samples
        # Every worker back: requests on fresh connections, which the kernel spreads over
        # both workers, are all counted in Redis. (Counting log lines cannot tell: two
        # threads of one worker may both log the loss.) flask-limiter re-checks a dead
        # storage with backoff, at most 32 s apart.
        assert wait_until(lambda: every_request_counted(server, redis), 90), "a worker stayed out"
        all_back = time.monotonic() - restarted
    finally:
        redis.kill()
    during = [s for s in samples if killed <= s.started < restarted]
    slow = max((s.ended - s.started for s in during), default=0.0)
    lost, back = limiter_logs(server)
    figure(
        "redis_outage",
        requests=len(samples),
        during_outage=len(during),
        wrong=len([s for s in samples if s.verdict != "up"]),
        slowest_during_outage_ms=slow * 1000,
        log_lost=lost,
        log_recovered=back,
        first_worker_back_s=back_in_redis,
        all_workers_back_s=all_back,
    )
    assert during, "no request during the outage"
    assert all(s.verdict == "up" for s in samples), [
        (s.probe, s.status, s.body) for s in samples if s.verdict != "up"
    ][:5]
    assert server.worker_pids() == workers
    assert lost >= 1 and back >= 1


#: Routes behind the limiter that answer 200 for the seeded device and its owner.
LIMITED_PROBES = ("registration", "mqtt", "owner_devices")


# ---------------------------------------------------------------- broker restart


class PingingDevice:
    """A device session that PINGs in a closed loop (one PING in flight) and records, for
    every PING it managed to send, whether and when a PONG came back."""

    def __init__(self, port: int):
        self.uuid = str(uuidlib.uuid4())
        self.topic = f"device/{self.uuid}/ping"
        self.sent: list[float] = []
        self.pongs: list[float] = []
        self.subscribed_at = 0.0
        self._pong = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rel-{self.uuid}")
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.subscribed_at = 0.0
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subscribed_at = time.monotonic()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.subscribed_at = 0.0

    def _on_message(self, client, userdata, message):
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if body == {"c": "PONG", "src": "server"}:
            self.pongs.append(time.monotonic())
            self._pong.set()

    def run(self, stop: threading.Event, wait: float = 5.0) -> None:
        """PING, wait for the PONG (or `wait` seconds), repeat, until `stop`."""
        while not stop.is_set():
            if not self.subscribed_at:
                time.sleep(0.05)
                continue
            self._pong.clear()
            sent_at = time.monotonic()
            if self.client.publish(self.topic, '{"c":"PING"}', qos=0).rc != 0:
                time.sleep(0.05)
                continue
            self.sent.append(sent_at)
            self._pong.wait(wait)
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_broker_restart_under_the_pinger_leaves_no_ping_unanswered(tmp_path):
    """kill -9 the broker while 40 devices ping; once the pinger has resubscribed, every
    PING gets exactly one PONG."""
    import shutil

    if shutil.which("mosquitto") is None:
        service_unavailable("the mosquitto binary")
    database_url = f"sqlite:///{tmp_path / 'pinger.sqlite'}"
    engine = create_engine(database_url)
    Device.metadata.create_all(engine)
    engine.dispose()
    broker = PrivateMosquitto().start()
    pinger = pinger_process(
        pinger_env(
            LOG_FORMAT="json",
            DATABASE_URL=database_url,
            MQTT_BROKER_URL=f"mqtt://127.0.0.1:{broker.port}",
        ),
        stdout=subprocess.DEVNULL,
    )
    fleet = [PingingDevice(broker.port) for _ in range(40)]
    stop = threading.Event()
    threads = [threading.Thread(target=d.run, args=(stop,), daemon=True) for d in fleet]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: all(d.pongs for d in fleet), 30), "pinger never answered"
        time.sleep(1)
        killed = time.monotonic()
        broker.kill()
        time.sleep(1)
        broker.start()  # same port, a fresh broker with no sessions
        restarted = time.monotonic()
        assert wait_until(lambda: any(p > restarted for d in fleet for p in d.pongs), 30)
        # The first PONG through the new broker proves the pinger has resubscribed.
        ready = min(p for d in fleet for p in d.pongs if p > restarted)
        assert wait_until(
            lambda: all(sum(s > max(ready, d.subscribed_at) for s in d.sent) >= 10 for d in fleet),
            60,
        ), "devices did not resume pinging"
        stop.set()
        for thread in threads:
            thread.join(10)
        time.sleep(2)  # late or duplicate PONGs would arrive now
        alive = pinger.poll() is None
    finally:
        stop.set()
        for device in fleet:
            device.close()
        pinger.terminate()
        try:
            _, stderr = pinger.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pinger.kill()
            _, stderr = pinger.communicate()
        broker.kill()

    pings = unanswered = extra = 0
    for device in fleet:
        start = max(ready, device.subscribed_at)
        counted = [s for s in device.sent if s >= start]
        answers = [p for p in device.pongs if counted and p >= counted[0]]
        pings += len(counted)
        for sent, following in zip(counted, [*counted[1:], float("inf")], strict=True):
            got = [p for p in answers if sent <= p < following]
            unanswered += not got
            extra += max(0, len(got) - 1)
    connects = stderr.count("connected; subscribing")
    figure(
        "broker_restart",
        devices=len(fleet),
        pings_after_resubscribe=pings,
        unanswered=unanswered,
        duplicate_pongs=extra,
        pinger_back_after_s=ready - killed,
        pinger_connects=connects,
    )
    assert alive, stderr[-2000:]
    assert connects == 2, stderr[-2000:]
    assert pings >= 10 * len(fleet)
    assert (unanswered, extra) == (0, 0)
