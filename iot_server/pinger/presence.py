"""Presence bookkeeping of the pinger, with no MQTT and no database: who pinged lately,
whom to re-PING, who went offline, and which `last_seen_at` values still need writing.

Callers pass the clock in, so the rules are testable without sleeping. Neither class locks:
the pinger serialises access.
"""

from __future__ import annotations

import math
import sqlite3
import uuid as uuidlib
from collections import deque
from itertools import islice


def pack_uuid(uuid: str) -> bytes:
    """A lowercase hyphenated uuid as its 16 bytes (the store's key)."""
    return bytes.fromhex(uuid.replace("-", ""))


def unpack_uuid(key: bytes) -> str:
    """The lowercase hyphenated uuid back from its 16 bytes."""
    return str(uuidlib.UUID(bytes=key))


def unpack_all(packed: bytes) -> list[str]:
    """The uuids of consecutive 16-byte keys, in order."""
    return [unpack_uuid(packed[i : i + 16]) for i in range(0, len(packed), 16)]


class Presence:
    """Devices heard lately. A device silent for `interval` seconds is due a server PING,
    then again at each further interval, `max_misses` times; one more silent interval and it
    is offline and forgotten, so memory follows the live fleet, not every device ever seen.

    Per device: its 16-byte uuid and when it was last heard, in an in-memory SQLite table
    indexed by that time. Which PING is due follows from the time elapsed, so no counter or
    schedule is stored, and a sweep reads only the devices whose silence just crossed an
    interval (index range scans), not the whole fleet. The table lives in SQLite's own
    pages, not in millions of small Python objects: memory grows by about 60 bytes a device
    and is returned when devices go offline.

    `seen()` runs for every message, so it only notes the time in a small dict; the notes
    reach the table in one `executemany` before anything reads it (a sweep, once a tick).
    """

    def __init__(self, interval: float = 15.0, max_misses: int = 3) -> None:
        self.interval = interval
        self.max_misses = max_misses
        self._swept = -math.inf
        # The pinger serialises every call (one lock), so one connection serves all threads.
        self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._db.executescript(
            "CREATE TABLE presence (key BLOB PRIMARY KEY, last REAL NOT NULL) WITHOUT ROWID;"
            "CREATE INDEX presence_last ON presence (last);"
        )
        self._recent: dict[str, float] = {}

    def __len__(self) -> int:
        self._apply_recent()
        return self._db.execute("SELECT count(*) FROM presence").fetchone()[0]

    def seen(self, uuid: str, now: float) -> None:
        """The device sent a PING or a PONG at `now`: it is online, its misses are forgiven."""
        self._recent[uuid] = now
        if len(self._recent) >= RECENT_BATCH:
            self._apply_recent()

    def heard_elsewhere(self, uuid: str, at: float) -> None:
        """Another replica heard the device at `at`: counts as seen unless heard later here."""
        self._apply_recent()
        self._db.execute(_UPSERT_LATER, (pack_uuid(uuid), at))

    def _apply_recent(self) -> None:
        """Write the times noted by `seen()` since the last read, in one statement."""
        if self._recent:
            recent, self._recent = self._recent, {}
            self._db.executemany(_UPSERT, [(pack_uuid(u), at) for u, at in recent.items()])

    def sweep(self, now: float) -> tuple[bytes, bytes]:
        """Advance to `now`: the devices to PING, and those that just went offline, each as
        packed uuids (16 bytes apiece, see `unpack_all`): after a broker outage every device
        falls due in the same sweep, and 100,000 uuids as one bytes object cost 1.6 MB where
        a list of strings would cost 13.

        A device whose silence crossed a multiple of `interval` since the previous sweep is
        PINGed once (a late sweep sends one PING, not a burst): for each k in 1..max_misses,
        those heard in (previous - k·interval, now - k·interval], in one query, so a device
        in several ranges comes once. Silent for more than max_misses intervals: offline,
        and forgotten.
        """
        self._apply_recent()
        previous, self._swept = self._swept, now
        interval, limit = self.interval, self.max_misses
        gone = now - (limit + 1) * interval
        offline = b"".join(key for (key,) in self._db.execute(_FORGET, (gone,)))
        ranges = []
        for k in range(1, limit + 1):
            low, high = max(previous - k * interval, gone), now - k * interval
            if low < high:
                ranges.append((low, high))
        if not ranges:
            return b"", offline
        query = "SELECT key FROM presence WHERE " + " OR ".join(
            ["(last > ? AND last <= ?)"] * len(ranges)
        )
        bounds = [bound for pair in ranges for bound in pair]
        due = b"".join(key for (key,) in self._db.execute(query, bounds))
        return due, offline

    def postpone_all(self, now: float) -> None:
        """Restart every device's clock at `now` (after a broker outage nobody could be
        heard, so silence during it is no miss)."""
        self._apply_recent()
        self._db.execute("UPDATE presence SET last = ?", (now,))


#: Notes `seen()` keeps before writing them in one statement: big enough to make the
#: statement cheap per device, small enough that the batch never weighs on memory.
RECENT_BATCH = 256

_UPSERT = (
    "INSERT INTO presence (key, last) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET last = excluded.last"
)
_UPSERT_LATER = (
    "INSERT INTO presence (key, last) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET last = max(last, excluded.last)"
)
_FORGET = "DELETE FROM presence WHERE last <= ? RETURNING key"


class DuePings:
    """Server PINGs waiting to go out, oldest first, as packed uuids (16 bytes each).

    A sweep can make a whole fleet due at once (after a broker outage every clock restarts
    at the same instant); the pinger sends them only as fast as the broker acknowledges, and
    the rest wait here, 1.6 MB per 100,000, instead of in the MQTT client's queue at about
    1.5 KB a message. A PING still waiting an interval after its sweep is stale (the device
    is due again, or offline): it is dropped, not sent late.
    """

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        # [queued at, packed uuids, how many bytes of them were already taken]
        self._batches: deque[list] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, packed: bytes, now: float) -> None:
        """Queue the server PINGs of one sweep."""
        if packed:
            self._batches.append([now, packed, 0])
            self._size += len(packed) // 16

    def take(self, limit: int, now: float) -> tuple[list[str], int]:
        """Up to `limit` uuids to PING now, and how many stale ones were dropped."""
        stale = 0
        while self._batches and now - self._batches[0][0] > self.max_age:
            _, packed, offset = self._batches.popleft()
            stale += (len(packed) - offset) // 16
        self._size -= stale
        taken: list[str] = []
        while self._batches and len(taken) < limit:
            batch = self._batches[0]
            _, packed, offset = batch
            end = min(len(packed), offset + 16 * (limit - len(taken)))
            taken.extend(unpack_all(packed[offset:end]))
            if end == len(packed):
                self._batches.popleft()
            else:
                batch[2] = end
        self._size -= len(taken)
        return taken, stale

    def clear(self) -> int:
        """Forget every waiting PING (the broker link dropped); returns how many."""
        dropped, self._size = self._size, 0
        self._batches.clear()
        return dropped


class PendingSeen:
    """`last_seen_at` values waiting for the next batch write: the latest per device wins."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, uuid: str, at: float) -> None:
        """Record that the device was heard at `at` (Unix time)."""
        self._seen[uuid] = at

    def take(self, limit: int) -> dict[str, float]:
        """Remove and return up to `limit` entries, oldest first."""
        if len(self._seen) <= limit:
            batch, self._seen = self._seen, {}
            return batch
        batch = {}
        for uuid in list(islice(self._seen, limit)):
            batch[uuid] = self._seen.pop(uuid)
        return batch

    def restore(self, batch: dict[str, float]) -> None:
        """Put back a batch that could not be written; newer values already here win."""
        for uuid, at in batch.items():
            if self._seen.get(uuid, 0.0) < at:
                self._seen[uuid] = at
