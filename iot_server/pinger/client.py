"""The pinger: the server's own MQTT client (the service account).

It answers a device's `{"c":"PING"}` on `device/<uuid>/ping` with `{"c":"PONG","src":"server"}`,
PINGs devices that went quiet, forgets them once offline, and writes `last_seen_at` in
batches (SPEC.md, "MQTT behaviour"). Run it with `flask --app wsgi pinger` or
`python -m iot_server.pinger`; it stops cleanly on SIGTERM.

Threads: paho's network loop (`loop_forever`, the caller's thread) runs the callbacks, which
only parse, publish and note presence under a lock; a sweeper thread sends the re-PINGs and
refreshes the heartbeat file (`health.py`); a flusher thread writes presence to the database
once a second.

Replicas (`MQTT_SHARED_GROUP`) each hear part of a device's messages; they share presence
through `last_seen_at`, which only moves forward, and a replica reads it before re-PINGing
a device it found silent, so a device that another replica hears is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
import uuid as uuidlib
from collections import Counter

import paho.mqtt.client as mqtt
from flask import Flask
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import event
from sqlalchemy.engine import Engine

from .health import remove_heartbeat, write_heartbeat
from .messages import (
    SERVER_PING,
    SERVER_PONG,
    parse_broker_url,
    parse_device_message,
    ping_subscription,
)
from .presence import DuePings, PendingSeen, Presence, pack_uuid, unpack_all
from .store import MAX_BATCH, read_last_seen, write_last_seen

log = logging.getLogger("iot_server.pinger")

PONG_QOS = 1
# Device firmware (PubSubClient) publishes at QoS 0 only, so a QoS 1 subscription would gain
# nothing for device messages and would only add PUBACKs for our own echoes.
SUBSCRIBE_QOS = 0
#: QoS 1 messages (PONGs, server PINGs) awaiting their PUBACK, at most: memory stays bounded
#: (about 1.5 KB each), and beyond it new ones are dropped and counted. A broker that keeps
#: up acknowledges within milliseconds; the bound rides out an overload of a few seconds.
MAX_UNACKNOWLEDGED = 10_000
#: Server PINGs go out only while fewer QoS 1 messages than this await their PUBACK; the
#: rest wait, compactly, in `DuePings`. A sweep can make the whole fleet due at once, and
#: PONGs (answers a device is waiting for) keep the rest of the room.
SERVER_PING_WINDOW = 1_000
#: How long the sweeper waits for the broker's PUBACKs to make room for more server PINGs.
ROOM_WAIT = 0.005


class Pinger:
    """The service account's MQTT client: answers PINGs, re-PINGs the quiet, writes presence."""

    def __init__(
        self,
        broker_url: str,
        username: str | None,
        password: str | None,
        engine: Engine | None,
        *,
        shared_group: str | None = None,
        ping_interval: float = 15.0,
        max_misses: int = 3,
        flush_interval: float = 1.0,
        stats_interval: float = 60.0,
        client_id: str | None = None,
        health_file: str | None = None,
    ) -> None:
        self.address = parse_broker_url(broker_url)
        self.subscription = ping_subscription(shared_group)
        self.shared = bool(shared_group)
        self.engine = engine
        self.flush_interval = flush_interval
        self.stats_interval = stats_interval
        self.presence = Presence(ping_interval, max_misses)
        self.pending = PendingSeen()
        self.due = DuePings(max_age=ping_interval)
        self.stats: Counter[str] = Counter()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stopping = threading.Event()
        self._db_failing = False
        self._threads: list[threading.Thread] = []
        self._sweep_tick = min(1.0, ping_interval / 10)
        self.health_file = health_file
        self._heartbeat_failing = False
        # Wall times for the heartbeat: the broker link's last change, the last flush turn.
        self._link_changed_at = self._flushed_at = time.time()
        if engine is not None:
            event.listen(engine, "before_cursor_execute", self._count_statement)

        # Unique per process: a broker drops the older session of a duplicate client id,
        # and replicas in containers often share hostname and pid.
        client_id = client_id or f"{username or 'pinger'}-{uuidlib.uuid4().hex[:12]}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,  # amqtt speaks 3.1.1 only (BROKERS.md)
        )
        if username:
            self.client.username_pw_set(username, password)
        if self.address.tls:
            self.client.tls_set_context(ssl.create_default_context())
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # No in-flight window: with one, paho rescans the unacknowledged messages on every
        # PUBACK (Client._update_inflight), which made each PONG cost O(window).
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(MAX_UNACKNOWLEDGED)
        # Second line of defence: paho re-raises callback exceptions out of loop_forever.
        self.client.suppress_exceptions = True
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    @classmethod
    def from_app(cls, app: Flask, **options) -> Pinger:
        """A pinger configured from the app: broker, service account, database engine."""
        from ..extensions import db

        config = app.config
        with app.app_context():
            engine = db.engine
        options.setdefault("health_file", config.get("PINGER_HEALTH_FILE"))
        return cls(
            config["MQTT_BROKER_URL"],
            config["MQTT_SERVICE_USERNAME"],
            config["MQTT_SECRET_KEY"],
            engine,
            shared_group=config.get("MQTT_SHARED_GROUP"),
            **options,
        )

    # ------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Connect (retrying forever with backoff) and serve until `stop()` or SIGTERM."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        self._flushed_at = time.time()
        self._threads = [
            threading.Thread(target=self._sweep_loop, name="pinger-sweep", daemon=True),
            threading.Thread(target=self._flush_loop, name="pinger-flush", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "pinger connecting to %s:%s%s as %s",
            self.address.host,
            self.address.port,
            " (TLS)" if self.address.tls else "",
            self.client.username or "anonymous",
        )
        try:
            self.client.connect_async(self.address.host, self.address.port, keepalive=30)
            # paho retries even the first connection and every later one, with the backoff
            # of reconnect_delay_set; disconnect() (from stop) makes it return.
            self.client.loop_forever(retry_first_connection=True)
        finally:
            self._stopping.set()
            self.connected.clear()
            for thread in self._threads:
                thread.join(timeout=10)
            if self.health_file:
                remove_heartbeat(self.health_file)
            self.flush_all()
            log.info("pinger stopped: %s", self.stats_line())

    def stop(self) -> None:
        """Ask `run()` to return: disconnect, then it flushes what is pending. Any thread."""
        self._stopping.set()
        self.client.disconnect()

    def _on_signal(self, signum, frame) -> None:
        """SIGTERM/SIGINT: stop from another thread; the handler interrupts paho's loop, which
        may hold its own locks at that moment."""
        log.info("signal %s: stopping", signal.Signals(signum).name)
        threading.Thread(target=self.stop, name="pinger-stop", daemon=True).start()

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        """Subscribe on every connect: a clean session forgets subscriptions."""
        try:
            if reason_code.is_failure:
                # paho closes the connection and retries with its backoff.
                log.warning("broker refused the connection: %s", reason_code)
                return
            if self._stopping.is_set():
                client.disconnect()
                return
            client.subscribe(self.subscription, qos=SUBSCRIBE_QOS)
            with self._lock:
                # Nobody could be heard while we were away: silence then is no miss.
                self.presence.postpone_all(time.monotonic())
            self.connected.set()
            self._link_changed_at = time.time()
            self.stats["connects"] += 1
            log.info("connected; subscribing %s", self.subscription)
        except Exception:
            log.exception("on_connect failed")

    def _on_connect_fail(self, client, userdata) -> None:
        """A connection attempt failed (socket level); paho retries with backoff."""
        try:
            if self._stopping.is_set():
                client.disconnect()  # no socket: marks the client disconnected, the loop ends
            else:
                log.debug("broker unreachable; retrying")
        except Exception:
            log.exception("on_connect_fail failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        """Lost the broker: stop publishing until paho has reconnected."""
        try:
            if self.connected.is_set():
                self._link_changed_at = time.time()
            self.connected.clear()
            self.subscribed.clear()
            with self._lock:
                # Every clock restarts on reconnect (postpone_all): these are no longer due.
                self.stats["stale"] += self.due.clear()
            if not self._stopping.is_set():
                log.warning("disconnected from the broker (%s); reconnecting", reason_code)
        except Exception:
            log.exception("on_disconnect failed")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """A refused subscription (the broker's ACL) is worth an error line."""
        try:
            refused = [code for code in reason_codes if code.is_failure]
            if refused:
                log.error("broker refused the subscription %s: %s", self.subscription, refused[0])
            else:
                self.subscribed.set()
        except Exception:
            log.exception("on_subscribe failed")

    def _on_message(self, client, userdata, message) -> None:
        """A device's PING gets a PONG; PING and PONG both count as presence."""
        try:
            payload = message.payload
            # Fast path for our own echoes, the most frequent message after PINGs.
            if payload in (SERVER_PONG, SERVER_PING):
                self.stats["echoes"] += 1
                return
            topic = message.topic
            parsed = parse_device_message(topic, payload)
            if parsed is None:
                self.stats["ignored"] += 1
                return
            uuid, command = parsed
            if command == "PING":
                self.stats["pings"] += 1
                self.publish(topic, SERVER_PONG)
            else:
                self.stats["pongs"] += 1
            now, wall = time.monotonic(), time.time()
            with self._lock:
                self.presence.seen(uuid, now)
                self.pending.add(uuid, wall)
        except Exception:
            log.exception("on_message failed")

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish at QoS 1, never retained; skipped while disconnected (stale answers are
        worthless, and queueing them would grow memory during an outage)."""
        if not self.connected.is_set():
            self.stats["dropped"] += 1
            return False
        info = self.client.publish(topic, payload, qos=PONG_QOS, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.stats["dropped"] += 1
            return False
        return True

    # ------------------------------------------------------------ background work

    def sweep(self, now: float | None = None) -> None:
        """Queue the due server PINGs (`send_server_pings` sends them) and forget the
        devices that went offline."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due, gone = self.presence.sweep(now)
        if self.shared and self.engine is not None and (due or gone):
            to_ping, offline = self._not_heard_by_the_group(unpack_all(due), unpack_all(gone))
            due = b"".join(pack_uuid(uuid) for uuid in to_ping)
        else:
            offline = unpack_all(gone) if gone else []
        with self._lock:
            self.due.add(due, now)
        for uuid in offline:
            log.debug("device offline: %s", uuid)
        if offline:
            self.stats["offline"] += len(offline)
            log.info("%d device(s) went offline", len(offline))

    def send_server_pings(self, until: float) -> None:
        """PING the queued devices while the broker keeps up: only while fewer than
        SERVER_PING_WINDOW messages await a PUBACK, waiting for room until `until`."""
        while self.connected.is_set() and not self._stopping.is_set():
            room = SERVER_PING_WINDOW - self.unacknowledged()
            if room <= 0:
                if time.monotonic() + ROOM_WAIT >= until:
                    return
                self._stopping.wait(ROOM_WAIT)
                continue
            with self._lock:
                uuids, stale = self.due.take(room, time.monotonic())
                self.stats["stale"] += stale
            if not uuids:
                return
            for uuid in uuids:
                if self.publish(f"device/{uuid}/ping", SERVER_PING):
                    self.stats["server_pings"] += 1

    def unacknowledged(self) -> int:
        """QoS 1 messages sent and not yet acknowledged by the broker (paho's own count:
        it has no public accessor; tests/pinger/test_pinger.py checks the attribute)."""
        return len(self.client._out_messages)

    def _not_heard_by_the_group(
        self, to_ping: list[str], offline: list[str]
    ) -> tuple[list[str], list[str]]:
        """Keep only the devices that no replica heard within the interval.

        With a shared group the broker spreads a device's messages over the replicas, so
        this one may find silent a device that another heard a moment ago; `last_seen_at`
        (written by all, at most a flush interval late) tells. Such a device is neither
        PINGed nor dropped: it counts as heard when the group last heard it.
        """
        try:
            seen = read_last_seen(self.engine, to_ping + offline)
        except Exception as exc:
            log.debug("cannot read presence (%s): deciding alone", type(exc).__name__)
            return to_ping, offline
        now = time.monotonic()
        offset = time.time() - now
        heard = {
            uuid: at - offset
            for uuid, at in seen.items()
            if now - (at - offset) < self.presence.interval
        }
        if heard:
            with self._lock:
                for uuid, at in heard.items():
                    self.presence.heard_elsewhere(uuid, at)
            self.stats["heard_by_others"] += len(heard)
        return (
            [uuid for uuid in to_ping if uuid not in heard],
            [uuid for uuid in offline if uuid not in heard],
        )

    def _sweep_loop(self) -> None:
        """Every tick: queue the due server PINGs and send them as the broker acknowledges
        (only while connected); log stats now and then; refresh the heartbeat, which
        therefore stops when this loop does."""
        next_stats = time.monotonic() + self.stats_interval
        self.heartbeat()
        next_tick = time.monotonic() + self._sweep_tick
        while not self._stopping.wait(max(0.0, next_tick - time.monotonic())):
            next_tick += self._sweep_tick
            try:
                if self.connected.is_set():
                    self.sweep()
                    self.send_server_pings(until=next_tick)
                if time.monotonic() >= next_stats:
                    next_stats += self.stats_interval
                    log.info("stats %s", self.stats_line())
            except Exception:
                log.exception("sweep failed")
            self.heartbeat()
            # A sweep that overran its tick (a slow database) starts the next one now.
            next_tick = max(next_tick, time.monotonic())

    def heartbeat(self) -> None:
        """Rewrite the heartbeat file (`PINGER_HEALTH_FILE`), if any; never raises.

        Taking the lock proves the callbacks and the sweep are not deadlocked on it.
        """
        if not self.health_file:
            return
        with self._lock:
            devices, pending = len(self.presence), len(self.pending)
        state = {
            "pid": os.getpid(),
            "at": time.time(),
            "flushed_at": self._flushed_at,
            "flush_interval": self.flush_interval,
            "connected": self.connected.is_set(),
            "since": self._link_changed_at,
            "devices": devices,
            "pending": pending,
        }
        try:
            write_heartbeat(self.health_file, state)
        except OSError as exc:
            if not self._heartbeat_failing:
                log.warning("cannot write the heartbeat %s: %s", self.health_file, exc)
            self._heartbeat_failing = True
            return
        if self._heartbeat_failing:
            log.info("heartbeat written again")
            self._heartbeat_failing = False

    def _flush_loop(self) -> None:
        """At most one batch per `flush_interval`; each turn is noted for the heartbeat."""
        while not self._stopping.wait(self.flush_interval):
            self.flush()
            self._flushed_at = time.time()

    def flush(self) -> int:
        """Write one batch of pending `last_seen_at` values; keep them when the database is
        down (the next tick retries). Returns how many devices the batch held."""
        if self.engine is None:
            with self._lock:
                self.pending.take(len(self.pending))
            return 0
        with self._flush_lock:
            with self._lock:
                batch = self.pending.take(MAX_BATCH)
            if not batch:
                return 0
            try:
                write_last_seen(self.engine, batch)
            except Exception as exc:
                with self._lock:
                    self.pending.restore(batch)
                    waiting = len(self.pending)
                self.stats["db_errors"] += 1
                # The driver's own message: SQLAlchemy's would quote 20,000 parameters.
                reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                if not self._db_failing:
                    log.warning("cannot write presence (%d devices kept): %s", waiting, reason)
                else:
                    log.debug("database still unavailable: %s", reason)
                self._db_failing = True
                return 0
            if self._db_failing:
                log.info("database back: presence written again")
                self._db_failing = False
            self.stats["flushes"] += 1
            self.stats["written"] += len(batch)
            return len(batch)

    def flush_all(self) -> None:
        """At shutdown: write everything pending, batch after batch, until done or failing."""
        while len(self.pending) and self.flush():
            pass
        if len(self.pending):
            log.warning("exiting with %d unwritten presence update(s)", len(self.pending))

    def _count_statement(self, conn, cursor, statement, parameters, context, executemany):
        """SQLAlchemy event: count statements sent to the database (for stats and bench)."""
        self.stats["statements"] += 1

    def stats_line(self) -> str:
        """The counters as one JSON object (devices = those currently tracked, due = server
        PINGs waiting for the broker to keep up)."""
        with self._lock:
            devices, pending, due = len(self.presence), len(self.pending), len(self.due)
        return json.dumps({**self.stats, "devices": devices, "pending": pending, "due": due})


def run_from_app(app: Flask, **options) -> int:
    """Run a pinger configured by the app until SIGTERM; returns the exit status."""
    if not app.config.get("MQTT_SECRET_KEY"):
        print("error: MQTT_SECRET_KEY is not set (the service account's password)", file=sys.stderr)
        return 1
    try:
        pinger = Pinger.from_app(app, **options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pinger.run()
    return 0
