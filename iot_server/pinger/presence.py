"""Presence bookkeeping of the pinger, with no MQTT and no database: who pinged lately,
whom to re-PING, who went offline, and which `last_seen_at` values still need writing.

Callers pass the clock in, so the rules are testable without sleeping. Neither class locks:
the pinger serialises access.
"""

from __future__ import annotations

import math
import uuid as uuidlib
from itertools import islice


def pack_uuid(uuid: str) -> int:
    """A lowercase hyphenated uuid as a 128-bit int: about half the memory of the str."""
    return int(uuid.replace("-", ""), 16)


def unpack_uuid(key: int) -> str:
    """The lowercase hyphenated uuid back from its int key."""
    return str(uuidlib.UUID(int=key))


class Presence:
    """Devices heard lately. A device silent for `interval` seconds is due a server PING,
    then again at each further interval, `max_misses` times; one more silent interval and it
    is offline and forgotten, so memory follows the live fleet, not every device ever seen.

    Per device one int key and one float (when it was last heard): which PING is due follows
    from the time elapsed, so no counter or schedule is stored.
    """

    def __init__(self, interval: float = 15.0, max_misses: int = 3) -> None:
        self.interval = interval
        self.max_misses = max_misses
        self._last_seen: dict[int, float] = {}
        self._swept = -math.inf

    def __len__(self) -> int:
        return len(self._last_seen)

    def seen(self, uuid: str, now: float) -> None:
        """The device sent a PING or a PONG at `now`: it is online, its misses are forgiven."""
        self._last_seen[pack_uuid(uuid)] = now

    def heard_elsewhere(self, uuid: str, at: float) -> None:
        """Another replica heard the device at `at`: counts as seen unless heard later here."""
        key = pack_uuid(uuid)
        if self._last_seen.get(key, -math.inf) < at:
            self._last_seen[key] = at

    def sweep(self, now: float) -> tuple[list[str], list[str]]:
        """Advance to `now`: the devices to PING, and those that just went offline.

        A device whose silence crossed a multiple of `interval` since the previous sweep is
        PINGed once (a late sweep sends one PING, not a burst). A full scan: at 100,000
        devices a few milliseconds once a tick, and no second per-device structure.
        """
        previous, self._swept = self._swept, now
        interval, limit = self.interval, self.max_misses
        to_ping: list[int] = []
        offline: list[int] = []
        for key, last in self._last_seen.items():
            elapsed = (now - last) // interval
            if elapsed < 1:
                continue
            if elapsed > limit:
                offline.append(key)
            # Intervals already counted at the previous sweep (none if heard since).
            elif (previous > last and (previous - last) // interval) < elapsed:
                to_ping.append(key)
        for key in offline:
            del self._last_seen[key]
        return [unpack_uuid(key) for key in to_ping], [unpack_uuid(key) for key in offline]

    def postpone_all(self, now: float) -> None:
        """Restart every device's clock at `now` (after a broker outage nobody could be
        heard, so silence during it is no miss)."""
        for key in self._last_seen:
            self._last_seen[key] = now


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
