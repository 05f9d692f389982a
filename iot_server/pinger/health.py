"""The pinger's own health signal: a heartbeat file its loops refresh, and the check on it.

The pinger serves no HTTP, so the api's `/healthz` probe says nothing about it. Instead its
sweeper thread rewrites a small JSON file (`PINGER_HEALTH_FILE`) at every tick, about once a
second, and `python -m iot_server.pinger --check-health` reads it: healthy while the file is
younger than `PINGER_HEALTH_MAX_AGE` seconds and the presence writer turned within that
time too; it prints one line and exits 0 or 1 (Docker's HEALTHCHECK contract).

Healthy means "the loops turn", not "connected to the broker": the broker's and the
database's state are in the line, but the pinger recovers from their outages by itself
(docs/deployment.md, "Health checks", says why).
"""

from __future__ import annotations

import contextlib
import json
import os
import time

#: Heartbeat fields: pid, at (wall time of the beat), flushed_at (the presence writer's
#: last turn), flush_interval, connected, since (wall time of the last connect or
#: disconnect), devices, pending.


def write_heartbeat(path: str, state: dict) -> None:
    """Replace the heartbeat file in one step, so a reader never sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(state, file)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def remove_heartbeat(path: str) -> None:
    """Remove the heartbeat at a clean exit: a stopped pinger is not a healthy one."""
    # A file left behind (unwritable directory) only goes stale: the check still fails.
    with contextlib.suppress(OSError):
        os.remove(path)


def check_heartbeat(path: str | None, max_age: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why) for the heartbeat at `path`."""
    if not path:
        return False, "unhealthy: PINGER_HEALTH_FILE is not set, so the pinger writes no heartbeat"
    now = time.time() if now is None else now
    try:
        with open(path, encoding="utf-8") as file:
            beat = json.load(file)
        at, flushed_at = float(beat["at"]), float(beat["flushed_at"])
        flush_interval = float(beat.get("flush_interval", 0))
        connected, since = bool(beat["connected"]), float(beat["since"])
        devices, pending = int(beat["devices"]), int(beat["pending"])
    except FileNotFoundError:
        return False, f"unhealthy: no heartbeat at {path} (the pinger is not running, or starting)"
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return False, f"unhealthy: unreadable heartbeat at {path}: {type(exc).__name__}: {exc}"

    loop_age, flush_age = now - at, now - flushed_at
    if loop_age > max_age:
        return False, (
            f"unhealthy: the pinger's loop last turned {duration(loop_age)} ago "
            f"(limit {duration(max_age)}): stopped or stuck"
        )
    # A flush that is slow but alive may take up to its interval more.
    if flush_age > max_age + flush_interval:
        return False, (
            f"unhealthy: the presence writer last turned {duration(flush_age)} ago "
            f"(limit {duration(max_age + flush_interval)}): stuck writing to the database"
        )
    link = "connected" if connected else "disconnected, reconnecting"
    return True, (
        f"healthy: loop {duration(loop_age)} ago, presence written {duration(flush_age)} ago; "
        f"broker {link} for {duration(now - since)}; {devices} devices, {pending} pending"
    )


def duration(seconds: float) -> str:
    """`0.4 s`, `12 s`, `5 min`, `3 h`: short enough for one health line."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
