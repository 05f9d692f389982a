"""A per-process cache of device states, kept exact by PostgreSQL's LISTEN/NOTIFY.

Every change a hook cares about (a device's kind, token version, enabled flag, owner or
master, and its remembered sessions) fires a trigger (migration `device_state_notify`)
that sends `NOTIFY iot_device_state, '<uuid>[,<uuid>…]'` in the same transaction: from
any instance, any worker, the CLI or plain SQL. Each process listens on a connection of
its own, in a thread, and drops the named entries as soon as the change commits. So a
cached state is never staler than a notification's delivery, and a login or a topic
check served from the cache costs no database round trip.

When the listener is not connected (starting, or its connection lost), the cache is not
trusted: it is emptied and every read goes to the database until the listener is
listening again. Revocation never waits on a TTL. A safety TTL and a size bound still apply.
SQLite (development) has no NOTIFY: there the cache is never trusted, and the hooks keep
their short `HOOK_CACHE_TTL` for topic checks.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy.engine import URL

log = logging.getLogger("iot_server.hooks.cache")

#: The channel the triggers notify on.
CHANNEL = "iot_device_state"
#: The triggers that must exist before the cache can be trusted (a schema made with
#: create_all() instead of the migrations has none, and would never notify).
TRIGGERS = (
    "devices_notify_state",
    "devices_notify_state_update",
    "device_sessions_notify_state",
    "device_sessions_notify_state_update",
)
#: How long the listener waits for a notification before it checks it should still run.
POLL_SECONDS = 1.0
#: Reconnect backoff of the listener, in seconds: first and longest wait.
RETRY_MIN, RETRY_MAX = 0.5, 15.0


class DeviceStateCache:
    """Device states by uuid, trusted only while this process listens for changes.

    `begin_read()` before reading the database, `put(state, ticket)` after: a state read
    while a change to it was being announced is not kept (its notification may have been
    handled before the put), so a stale state can never outlive its notification.
    """

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, object]] = OrderedDict()
        # Notification sequence: bumped for every uuid dropped. `_dropped` remembers when
        # each recently dropped uuid was last dropped; older drops are summarised by
        # `_floor` (a put whose read began before it is refused).
        self._seq = 0
        self._dropped: OrderedDict[str, int] = OrderedDict()
        self._floor = 0
        self._listening = False
        self._lock = threading.Lock()
        self.hits = self.misses = self.notifications = 0

    @property
    def trusted(self) -> bool:
        """True while changes reach this process (the listener is listening)."""
        return self._listening

    def get(self, uuid: str):
        """The cached state of `uuid`, or None (also whenever the cache is not trusted)."""
        if not self._listening:
            return None
        now = self.clock()
        with self._lock:
            item = self._entries.get(uuid)
            if item is None or item[0] <= now:
                if item is not None:
                    del self._entries[uuid]
                self.misses += 1
                return None
            self._entries.move_to_end(uuid)
            self.hits += 1
            return item[1]

    def begin_read(self) -> int | None:
        """A ticket to present with `put()`; None when the cache is not trusted."""
        if not self._listening:
            return None
        with self._lock:
            return self._seq

    def put(self, uuid: str, state, ticket: int | None) -> None:
        """Keep a state read after `begin_read()` returned `ticket`, unless a change to the
        device was announced since (or the cache was emptied, or is not trusted)."""
        if ticket is None or not self._listening:
            return
        with self._lock:
            if ticket < self._floor or self._dropped.get(uuid, -1) > ticket:
                return
            self._entries[uuid] = (self.clock() + self.ttl, state)
            self._entries.move_to_end(uuid)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop(self, uuids) -> None:
        """A change to these devices committed: forget them (from the listener)."""
        with self._lock:
            self.notifications += 1
            for uuid in uuids:
                self._seq += 1
                self._entries.pop(uuid, None)
                self._dropped[uuid] = self._seq
                self._dropped.move_to_end(uuid)
            while len(self._dropped) > self.max_entries:
                _, seq = self._dropped.popitem(last=False)
                self._floor = max(self._floor, seq)

    def clear(self) -> None:
        """Forget every state (reads already begun may not keep theirs)."""
        with self._lock:
            self._entries.clear()
            self._seq += 1
            self._floor = self._seq

    def set_listening(self, listening: bool) -> None:
        """The listener (re)started or lost its connection: either way, start empty."""
        with self._lock:
            self._listening = listening
            self._entries.clear()
            self._dropped.clear()
            self._seq += 1
            self._floor = self._seq

    def __len__(self) -> int:
        return len(self._entries)


#: How long the listener waits for its own test notification before it gives up.
SELF_TEST_SECONDS = 5.0


def listen_url(url: URL) -> str | None:
    """The libpq URL of the app's PostgreSQL database, or None for any other database."""
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """Listens for device changes on a connection of its own and drops them from a cache.

    Notifications are handled by whichever thread gets to them first: the listener's own
    thread, woken when its socket is readable, or a request thread, which drains what has
    already arrived before it trusts the cache (`drain_arrived()`, a zero-timeout poll). A
    revoke's notification reaches the socket while its HTTP answer is still on its way, so
    the next login anywhere sees it, instead of racing the listener thread for the GIL.

    The thread starts in each process as gunicorn boots the worker (`caches.start_listening`,
    from gunicorn.conf.py), or on first use elsewhere (gunicorn forks workers after the app
    is built) and ends by itself once its cache is garbage (the app is gone): it holds the
    cache only through a weak reference.
    """

    def __init__(
        self, cache: DeviceStateCache, url: str, warm: Callable[[], list] | None = None
    ) -> None:
        self._cache = weakref.ref(cache)
        self._url = url
        self._warm = warm
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._conn = None  # psycopg.Connection while listening
        # Each request thread polls the socket with a poll object of its own: one shared
        # by all would refuse a second thread while another is inside it.
        self._pollers = threading.local()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running yet (cheap when it is)."""
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            # A forked child must not touch its parent's connection.
            self._conn = None
            self.stopping.clear()
            cache = self._cache()
            if cache is not None:
                cache.set_listening(False)
            self.thread = threading.Thread(target=self._run, name="iot-state-listener", daemon=True)
            self.thread.start()

    def drain_arrived(self) -> None:
        """Handle the notifications that have already reached this process (a request thread,
        before it reads the cache). A broken connection makes the cache untrusted at once."""
        conn = self._conn
        if conn is None:
            return
        try:
            ready = self._poller_for(conn).poll(0)
        except Exception:  # closed under us: let _drain find out and say so
            ready = True
        if ready:
            try:
                self._drain(conn)
            except Exception:  # the listener thread reconnects; until then, not trusted
                self._lost(conn)

    def _poller_for(self, conn) -> select.poll:
        """This thread's poll object on the connection's socket: one cheap syscall a request."""
        pollers = self._pollers
        if getattr(pollers, "conn", None) is not conn:
            poller = select.poll()
            poller.register(conn.pgconn.socket, select.POLLIN)
            pollers.conn, pollers.poller = conn, poller
        return pollers.poller

    def stop(self) -> None:
        """Ask the thread to end (tests; a process exiting needs nothing)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def _drain(self, conn) -> None:
        """Read what the socket holds and drop every device named (one thread at a time)."""
        with self._drain_lock:
            if conn is not self._conn:
                return
            cache = self._cache()
            if cache is None:
                return
            pgconn = conn.pgconn
            pgconn.consume_input()
            while (notify := pgconn.notifies()) is not None:
                cache.drop(filter(None, notify.extra.decode().split(",")))

    def _fill(self, cache: DeviceStateCache) -> None:
        """Load the most recently heard devices into the (empty) cache in one go, so the
        reconnect storm after a restart finds them there. A change announced while they
        load is drained by request threads meanwhile, and its device is not kept."""
        if self._warm is None:
            return
        ticket = cache.begin_read()
        try:
            states = self._warm()
        except Exception as exc:  # the cache still works, it just starts empty
            log.warning("device-state cache not filled: %s", type(exc).__name__)
            return
        for state in states:
            cache.put(state.uuid, state, ticket)
        log.info("device-state cache filled with %d devices", len(states))

    def _hear_itself(self, conn) -> None:
        """Send a notification and wait for it to come back: a session hears its own, unless
        something between us and PostgreSQL (a transaction-mode pooler) does not pass them
        on, in which case no change would ever arrive either: never trust."""
        token = f"self-test-{os.urandom(8).hex()}"
        heard = threading.Event()

        def hear(notify) -> None:  # psycopg hands over what arrives during a query
            if notify.payload == token:
                heard.set()

        conn.add_notify_handler(hear)
        try:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, token))
            pgconn, deadline = conn.pgconn, time.monotonic() + SELF_TEST_SECONDS
            while not heard.is_set() and time.monotonic() < deadline:
                select.select([pgconn.socket], [], [], 0.1)
                pgconn.consume_input()
                while (notify := pgconn.notifies()) is not None:
                    if notify.extra.decode() == token:
                        heard.set()
        finally:
            conn.remove_notify_handler(hear)
        if not heard.is_set():
            raise RuntimeError("its own notification never came back (a transaction pooler?)")

    def _lost(self, conn) -> None:
        """The connection failed: the cache is not trusted until the thread listens again."""
        with self._drain_lock:
            if conn is self._conn:
                self._conn = None
                cache = self._cache()
                if cache is not None:
                    cache.set_listening(False)

    def _run(self) -> None:
        """Listen, reconnecting with backoff; while disconnected the cache is not trusted."""
        delay = RETRY_MIN
        failing = False
        while not self.stopping.is_set() and self._cache() is not None:
            try:
                self._listen()
                delay = RETRY_MIN
                failing = False
            except Exception as exc:  # any failure: not trusted until listening again
                if not failing:
                    log.warning(
                        "device-state listener lost (%s): hooks read the database until it is back",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    )
                failing = True
                self.stopping.wait(delay)
                delay = min(RETRY_MAX, delay * 2)
        self._lost(self._conn)

    def _listen(self) -> None:
        """One connection's life: LISTEN, check the triggers, then drain as data arrives."""
        import psycopg

        conn = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=5,
            application_name="iot-state-listener",
            # A connection lost without a word (a network cut) is noticed within ~15 s.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=15_000,
        )
        try:
            conn.execute(f"LISTEN {CHANNEL}")
            found = conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s)", (list(TRIGGERS),)
            ).fetchone()[0]
            if found != len(TRIGGERS):
                # Without the triggers no change would ever be announced: never trust.
                raise RuntimeError("the notify triggers are missing (run flask db upgrade)")
            self._hear_itself(conn)
            cache = self._cache()
            if cache is None:
                return
            with self._drain_lock:
                self._conn = conn
                cache.set_listening(True)
            log.info("device-state listener: listening")
            self._fill(cache)
            del cache
            while not self.stopping.is_set() and self._cache() is not None:
                if self._conn is not conn:
                    raise ConnectionError("a request thread found the connection broken")
                if select.select([conn.pgconn.socket], [], [], POLL_SECONDS)[0]:
                    self._drain(conn)
        finally:
            self._lost(conn)
            conn.close()
