"""The hooks' per-process caches: bounded TTL maps and the summarised denial log.

One `HookCaches` per app and process, created by `broker.init_app()`. Every cache is bounded
in entries, so a flood of distinct usernames or tokens cannot grow memory.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict

from flask import Flask, current_app
from sqlalchemy.engine import make_url

from .state_cache import DeviceStateCache, Listener, listen_url

log = logging.getLogger("iot_server.hooks")

#: Entries kept by each per-process cache; the oldest go first beyond it.
CACHE_MAX_ENTRIES = 10_000
#: Repeated login denials of one username are summarised once per window.
DENIAL_LOG_WINDOW = 60.0
EXTENSION_KEY = "iot_server.hook_caches"


#: The monotonic clock of every hook cache; tests replace it to step over TTLs.
clock = time.monotonic


class TtlCache:
    """A small thread-safe LRU of key → (expires, value), bounded in size."""

    def __init__(self, max_entries: int = CACHE_MAX_ENTRIES):
        self.max_entries = max_entries
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, now: float):
        """The live value for `key`, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= now:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key, value, expires: float) -> None:
        """Remember `value` until `expires`, evicting the least recently used beyond the bound."""
        with self._lock:
            self._items[key] = (expires, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def discard(self, key) -> None:
        """Forget `key`."""
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class DenialLog:
    """Logs the first denial of a key (a username; a refused caller), then one summary per
    window with a count, so a client retrying every second writes a line a minute rather
    than one per retry. `what` names the denial in the log lines ("login denied")."""

    def __init__(
        self,
        window: float = DENIAL_LOG_WINDOW,
        max_entries: int = CACHE_MAX_ENTRIES,
        what: str = "login denied",
    ):
        self.window = window
        self.max_entries = max_entries
        self.what = what
        self._windows: OrderedDict[str, list] = OrderedDict()  # username → [start, count]
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def denied(self, username: str, reason: str, device: str | None) -> None:
        """Record a denial; log it when it opens a window, else just count it."""
        now = clock()
        summaries = []
        with self._lock:
            if now - self._last_sweep >= self.window:
                summaries = self._sweep(now)
            entry = self._windows.get(username)
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                first = False
            else:
                if entry is not None and entry[1]:
                    summaries.append((username, entry[1], now - entry[0]))
                self._windows[username] = [now, 0]
                self._windows.move_to_end(username)
                while len(self._windows) > self.max_entries:
                    self._windows.popitem(last=False)
                first = True
        for name, count, seconds in summaries:
            log.warning(
                "%s %d more times for %s in the last %.0f s",
                self.what,
                count,
                name,
                seconds,
                extra={"username": name, "count": count},
            )
        if first:
            log.warning(
                "%s for %s: %s",
                self.what,
                username,
                reason,
                extra={"username": username, "device": device, "reason": reason},
            )

    def _sweep(self, now: float) -> list[tuple[str, int, float]]:
        """Close every expired window (caller holds the lock); returns the summaries due."""
        self._last_sweep = now
        due = []
        for name in [n for n, (start, _) in self._windows.items() if now - start >= self.window]:
            start, count = self._windows.pop(name)
            if count:
                due.append((name, count, now - start))
        return due


class HookCaches:
    """The caches of one app in one process: failed logins, verified tokens, the
    summarised logs of denied logins and refused callers, and device states: exact ones
    while a PostgreSQL listener runs (`states`), else short-lived ones for topic checks
    (`devices`, HOOK_CACHE_TTL)."""

    def __init__(
        self, states: DeviceStateCache, listener: Listener | None, tokens: int = CACHE_MAX_ENTRIES
    ) -> None:
        self.negative = TtlCache()
        self.devices = TtlCache()
        # As many verified tokens as device states: a reconnect storm of a fleet the size of
        # the state cache then decodes no JWT twice.
        self.tokens = TtlCache(max(tokens, CACHE_MAX_ENTRIES))
        self.denials = DenialLog()
        self.refused_callers = DenialLog(what="hook caller refused")
        #: Set once the "TRUSTED_PROXIES is probably wrong" warning has been logged.
        self.proxy_warning_logged = threading.Event()
        self.states = states
        self.listener = listener

    def exact_states(self) -> DeviceStateCache | None:
        """The exact state cache when it can be trusted now, else None (start the listener
        in this process on first use)."""
        if self.listener is None:
            return None
        self.listener.ensure_running()
        self.listener.drain_arrived()
        return self.states if self.states.trusted else None

    def clear(self) -> None:
        """Forget every cached answer."""
        self.negative.clear()
        self.devices.clear()
        self.tokens.clear()
        self.states.clear()


def init_app(app: Flask) -> None:
    """Give the app its hook caches, and a listener for the exact state cache on PostgreSQL
    (unless DEVICE_CACHE_SIZE is 0)."""
    config = app.config
    states = DeviceStateCache(
        config["DEVICE_CACHE_TTL"], config["DEVICE_CACHE_SIZE"], clock=lambda: clock()
    )
    url = listen_url(make_url(config["SQLALCHEMY_DATABASE_URI"]))
    listener = None
    if url and config["DEVICE_CACHE_SIZE"] > 0:
        listener = Listener(states, url, warm=recent_states_of(app, config["DEVICE_CACHE_SIZE"]))
    app.extensions[EXTENSION_KEY] = HookCaches(states, listener, config["DEVICE_CACHE_SIZE"])


def start_listening(app: Flask) -> None:
    """Start this process's device-state listener now (gunicorn calls it as a worker boots),
    so its cache fills while the worker starts rather than during its first logins."""
    hooks = app.extensions.get(EXTENSION_KEY)
    if hooks is not None and hooks.listener is not None:
        hooks.listener.ensure_running()


def recent_states_of(app: Flask, limit: int):
    """What the listener fills the cache with once it listens: the `limit` most recently
    heard registered devices of the app's database (the app held weakly: tests build many)."""
    app_ref = weakref.ref(app)

    def recent_states() -> list:
        from .device_state import load_recent_states

        app = app_ref()
        if app is None:
            return []
        with app.app_context():
            return load_recent_states(limit)

    return recent_states


def hook_caches() -> HookCaches:
    """The current app's hook caches."""
    return current_app.extensions[EXTENSION_KEY]
