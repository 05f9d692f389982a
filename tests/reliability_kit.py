"""Helpers of the reliability, security and hostile-input tests (issue 8).

Seeding a database that a gunicorn instance serves, snapshots to prove a database unchanged,
private Redis and Mosquitto processes a test may kill, and a concurrent HTTP burst client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuidlib
from dataclasses import dataclass

from sqlalchemy import create_engine, select

from iot_server import create_app
from iot_server.extensions import db
from iot_server.models import AGENT, MASTER, Device, Owner

# ---------------------------------------------------------------- databases


@dataclass(frozen=True)
class SeededDevice:
    """A device row created for a test, with a token of its current version."""

    uuid: str
    kind: str
    token: str
    clientid: str

    @property
    def username(self) -> str:
        """Its MQTT username."""
        return f"device_{self.uuid}"


def seed_fleet(database_url: str, masters: int, agents_per_master: int = 0) -> list[SeededDevice]:
    """Claimed masters (one new owner) and linked agents, with tokens the servers accept.

    Tokens are minted by an in-process app whose JWT secret is that of `server_env`.
    """
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    seeded = []
    with app.app_context():
        from iot_server import tokens

        owner = Owner(username=f"fleet-{uuidlib.uuid4().hex[:12]}", password_hash="x")
        db.session.add(owner)
        db.session.flush()
        rows = []
        for _ in range(masters):
            master = Device(uuid=str(uuidlib.uuid4()), kind=MASTER, owner_id=owner.id)
            rows.append(master)
            for _ in range(agents_per_master):
                rows.append(Device(uuid=str(uuidlib.uuid4()), kind=AGENT, master=master))
        db.session.add_all(rows)
        db.session.flush()
        for row in rows:
            token = tokens.issue_device_token(row)
            seeded.append(SeededDevice(row.uuid, row.kind, token, f"esp-{row.uuid[:8]}"))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return seeded


def create_owner(database_url: str, username: str, password: str) -> None:
    """An owner account with a real password hash (for logins over HTTP)."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        from iot_server import owners

        owners.create(username, password)
        db.session.remove()
        db.engine.dispose()


def snapshot(database_url: str) -> dict[str, list[tuple]]:
    """Every row of every table, ordered: equal snapshots mean an unchanged database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return {
                table.name: [
                    tuple(row)
                    for row in connection.execute(
                        select(table).order_by(*table.primary_key.columns)
                    )
                ]
                for table in (Owner.__table__, Device.__table__)
            }
    finally:
        engine.dispose()


# ---------------------------------------------------------------- private services


# ---------------------------------------------------------------- HTTP bursts


@dataclass
class Answer:
    """One HTTP exchange of a burst: what was asked, what came back, how long it took."""

    index: int
    status: int
    body: dict | None
    seconds: float
    error: str | None = None


def burst(
    base: str, requests: list[tuple[str, str, dict]], concurrency: int = 64
) -> tuple[list[Answer], float]:
    """Send every `(method, path, kwargs)` at once over `concurrency` keep-alive connections
    (aiohttp); returns the answers in request order and the seconds the whole burst took.

    Latency counts from the moment a connection is free to carry the request, as a broker's
    connection pool would send it.
    """
    return asyncio.run(_burst(base, requests, concurrency))


async def _burst(base, requests, concurrency):
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def one(session, index, method, path, kwargs) -> Answer:
        async with gate:
            started = time.perf_counter()
            try:
                async with session.request(method, path, **kwargs) as response:
                    raw = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                return Answer(index, 0, None, time.perf_counter() - started, repr(exc))
            seconds = time.perf_counter() - started
        try:
            import json

            body = json.loads(raw)
        except ValueError:
            body = None
        return Answer(index, status, body, seconds)

    started = time.perf_counter()
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        answers = await asyncio.gather(
            *(one(session, i, m, p, k) for i, (m, p, k) in enumerate(requests))
        )
    return list(answers), time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the sorted values lie (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered))) - 1))
    return ordered[rank]


def figure(name: str, **values) -> str:
    """Print one line of figures for docs/reliability.md (`pytest -s` shows it)."""
    parts = " ".join(
        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
    line = f"FIGURE {name}: {parts}"
    print(line, flush=True)
    return line


def owner_token_of(database_url: str, device_uuid: str) -> str:
    """An owner token for the owner of a seeded master (minted as a login would)."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        from iot_server import tokens

        token = tokens.issue_owner_token(db.session.get(Device, device_uuid).owner)
        db.session.remove()
        db.engine.dispose()
    return token


def running_workers(server, count: int, timeout: float = 30.0) -> set[int]:
    """Wait until gunicorn has `count` workers answering, and return their pids."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(server.worker_pids()) == count:
            with contextlib.suppress(requests.RequestException):
                if requests.get(server.url + "/healthz", timeout=2).status_code == 200:
                    return server.worker_pids()
        time.sleep(0.1)
    raise TimeoutError(f"gunicorn did not run {count} workers")
