"""Benchmark the owner console: the devices page with 1,000 devices, and what live
presence costs the broker hooks, polling versus server-sent events.

    python bench/console.py render [--masters 250 --agents 3] [--runs 40]
    python bench/console.py live [--tabs 0,25,100,200,0] [--sse-tabs 0,5,10,20,40]

`render` seeds one owner with masters × (1 + agents) devices in the PostgreSQL database
`iot_bench` (as bench/hooks.py does; override with BENCH_DATABASE_URL), plus 20,000 devices
of other owners so the indexes have something to skip, and times the devices page and the
presence view in process (the Flask test client: server time, no network), with their SQL
statement counts and sizes.

`live` starts `gunicorn -c gunicorn.conf.py` (production settings, gthread) and drives
`/mosquitto/acl` (the hook a go-auth broker calls for every message) with 32 keep-alive
clients for `--duration` seconds while N console tabs stay open: either polling
`/console/presence` every 2 s, as console.js does, or each holding a server-sent-events
stream open (a prototype route, `sse_app()` below, that pushes presence every 2 s; it is
measured here and not shipped). It prints hook requests/s, p50/p99 latency and errors
(a hook call that takes over 5 s counts as an error: brokers time out sooner).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid as uuidlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hooks import (  # noqa: E402
    bench_env,
    cpu_seconds,
    free_port,
    request_for,
    reset_database,
    running_gunicorn,
    seed,
)

POLL_SECONDS = 2.0
HOOK_TIMEOUT = 5.0


# ---------------------------------------------------------------- shared


def bench_app(env: dict[str, str]):
    """The production app in this process, on the bench database."""
    os.environ.update({k: env[k] for k in env if k.isupper()})
    from iot_server import create_app

    return create_app()


def signed_in_cookie(app, username: str = "bench") -> str:
    """A console session of `username` and its signed cookie value (the same SECRET_KEY as
    any server started with the same JWT_SECRET)."""
    from iot_server.console import sessions
    from iot_server.extensions import db
    from iot_server.models import Owner

    with app.app_context():
        owner = db.session.execute(db.select(Owner).filter_by(username=username)).scalar_one()
        session_id = sessions.create(owner)
        serializer = app.session_interface.get_signing_serializer(app)
        return serializer.dumps({sessions.SESSION_ID: session_id, "_permanent": True})


def seed_others(app, devices: int) -> None:
    """Masters of other owners, so the page's queries have rows to skip."""
    from iot_server.extensions import db
    from iot_server.models import MASTER, Device, Owner

    with app.app_context():
        owners = [Owner(username=f"other{i}", password_hash="x") for i in range(devices // 100)]
        db.session.add_all(owners)
        db.session.flush()
        db.session.execute(
            Device.__table__.insert(),
            [
                {
                    "uuid": str(uuidlib.uuid4()),
                    "kind": MASTER,
                    "owner_id": owners[i % len(owners)].id,
                    "token_version": 1,
                    "enabled": True,
                }
                for i in range(devices)
            ],
        )
        db.session.commit()
        db.session.execute(db.text("ANALYZE devices"))
        db.session.commit()


# ---------------------------------------------------------------- render


def timed(client, path: str, runs: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU times (ms) of `runs` GETs of `path` after 3 warm-ups, and the answer
    size. CPU time is this process's (PostgreSQL's share is under a millisecond here), and
    moves less than wall time when other jobs share the cores."""
    for _ in range(3):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
    walls, cpus = [], []
    for _ in range(runs):
        started, cpu = time.perf_counter(), time.process_time()
        response = client.get(path)
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return sorted(walls), sorted(cpus), len(response.data)


def statements(app, client, path: str) -> int:
    """SQL statements one GET of `path` sends."""
    from sqlalchemy import event

    from iot_server.extensions import db

    count = 0

    def record(*args):
        nonlocal count
        count += 1

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    client.get(path)
    event.remove(engine, "before_cursor_execute", record)
    return count


def render(args) -> None:
    """Seed, then time the devices page and the presence view."""
    database_url = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/iot_bench"
    )
    env = bench_env(database_url, free_port(), None)
    reset_database(database_url, env)
    seeded = seed(env, args.masters, args.agents)
    app = bench_app(env)
    seed_others(app, args.others)
    with app.app_context():
        # Half of them seen lately, as a live fleet would be.
        from iot_server.extensions import db
        from iot_server.models import Device, utcnow

        for index, device in enumerate(seeded):
            if index % 2 == 0:
                db.session.get(Device, device["uuid"]).last_seen_at = utcnow()
        db.session.commit()
    client = app.test_client()
    cookie = signed_in_cookie(app)
    client.set_cookie("iot_console", cookie, path="/console")
    print(
        f"one owner with {len(seeded)} devices ({args.masters} masters × (1 + {args.agents} "
        f"agents)), {args.others} devices of other owners; PostgreSQL; in-process Flask test "
        f"client; {args.runs} runs after 3 warm-ups; {os.cpu_count()} cores",
        flush=True,
    )
    print("\n| view | wall p50 ms | wall p95 ms | CPU p50 ms | CPU p95 ms | statements | bytes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, path in (("devices page", "/console"), ("presence", "/console/presence")):
        walls, cpus, size = timed(client, path, args.runs)
        p95 = int(len(walls) * 0.95) - 1
        print(
            f"| {name} (`{path}`) | {statistics.median(walls):.1f} | {walls[p95]:.1f} "
            f"| {statistics.median(cpus):.1f} | {cpus[p95]:.1f} "
            f"| {statements(app, client, path)} | {size:,} |"
        )
    with app.app_context():
        from iot_server import devices

        sql = devices.presence_query(1).compile(db.engine, compile_kwargs={"literal_binds": True})
        plan = db.session.execute(db.text(f"EXPLAIN {sql}")).scalars().all()
        print("\npresence plan (EXPLAIN, owner 1):\n    " + "\n    ".join(plan))
        db.engine.dispose()


# ---------------------------------------------------------------- live


def sse_app():
    """The production app plus `GET /console/events`: the owner's presence pushed every
    2 s as server-sent events. The alternative to polling, built only to be measured."""
    from flask import Response, stream_with_context

    from iot_server import create_app, devices
    from iot_server.console import sessions
    from iot_server.extensions import db
    from iot_server.models import iso_utc, utcnow

    app = create_app()

    def events():
        owner = sessions.current_owner()
        if owner is None:
            return Response(status=403)
        owner_id = owner.id

        @stream_with_context
        def stream():
            while True:
                now = utcnow()
                rows = db.session.execute(devices.presence_query(owner_id)).all()
                db.session.remove()  # no pooled connection held while the stream waits
                states = {
                    uuid: {
                        "online": devices.seen_recently(seen, now),
                        "last_seen_at": iso_utc(seen),
                    }
                    for uuid, seen in rows
                }
                yield f"data: {json.dumps({'now': iso_utc(now), 'devices': states})}\n\n"
                time.sleep(POLL_SECONDS)

        return Response(stream(), mimetype="text/event-stream")

    app.add_url_rule("/console/events", "console_events", events)
    return app


async def tab_polling(base: str, cookie: str, stop: float, counts: dict) -> None:
    """One open console tab: GET /console/presence every 2 s, as console.js does."""
    import aiohttp

    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar) as session:
        session.cookie_jar.update_cookies({"iot_console": cookie})
        await asyncio.sleep(POLL_SECONDS * (hash(id(session)) % 1000) / 1000)
        while time.perf_counter() < stop:
            try:
                async with session.get("/console/presence") as response:
                    await response.read()
                    counts["ok" if response.status == 200 else "bad"] += 1
            except aiohttp.ClientError:
                counts["bad"] += 1
            await asyncio.sleep(POLL_SECONDS)


async def tab_streaming(base: str, cookie: str, stop: float, counts: dict) -> None:
    """One open console tab holding a server-sent-events stream."""
    import aiohttp

    jar = aiohttp.CookieJar(unsafe=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=timeout) as session:
        session.cookie_jar.update_cookies({"iot_console": cookie})
        try:
            async with session.get("/console/events") as response:
                async for line in response.content:
                    if line.startswith(b"data:"):
                        counts["ok"] += 1
                    if time.perf_counter() >= stop:
                        return
        except (TimeoutError, aiohttp.ClientError):
            counts["bad"] += 1


async def hooks_load(base: str, devices: list[dict], clients: int, seconds: float) -> dict:
    """Closed-loop `/mosquitto/acl` calls; latencies (s) and errors (incl. > 5 s)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def one(index: int) -> None:
        nonlocal errors
        device = devices[index % len(devices)]
        method, path, body, headers = request_for("mosquitto_acl", device)
        timeout = aiohttp.ClientTimeout(total=HOOK_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    async with session.request(method, path, json=body, headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    await asyncio.gather(*(one(i) for i in range(clients)))
    return {"latencies": sorted(latencies), "errors": errors}


async def tabs_alone(base: str, cookie: str, tabs: int, seconds: float) -> int:
    """`tabs` polling tabs and nothing else for `seconds`; how many answers they got."""
    counts = {"ok": 0, "bad": 0}
    stop = time.perf_counter() + seconds
    await asyncio.gather(*(tab_polling(base, cookie, stop, counts) for _ in range(tabs)))
    return counts["ok"]


async def one_case(base: str, cookie: str, devices: list[dict], tabs: int, mode: str, args):
    """Open `tabs` tabs, let them settle, measure the hooks, close the tabs."""
    counts = {"ok": 0, "bad": 0}
    stop = time.perf_counter() + args.warmup + args.duration
    tab = tab_polling if mode == "poll" else tab_streaming
    tasks = [asyncio.create_task(tab(base, cookie, stop, counts)) for _ in range(tabs)]
    await asyncio.sleep(args.warmup)
    load = await hooks_load(base, devices, args.clients, args.duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = load["latencies"]
    return {
        "mode": mode,
        "tabs": tabs,
        "rps": len(latencies) / args.duration,
        "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan"),
        "errors": load["errors"],
        "tab_answers": counts["ok"],
        "tab_failures": counts["bad"],
    }


def live(args) -> None:
    """Hooks throughput with N console tabs open, polling and streaming."""
    database_url = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/iot_bench"
    )
    port = free_port()
    env = bench_env(database_url, port, args.workers)
    # Every tab polls from 127.0.0.1 here; in the field each browser has its own address.
    env["RATELIMIT_DEFAULT"] = "1000000 per 30 seconds"
    reset_database(database_url, env)
    devices = seed(env, args.masters, args.agents)
    cookie = signed_in_cookie(bench_app(env))
    workers = env.get("WEB_CONCURRENCY") or str(2 * (os.cpu_count() or 1) + 1)
    print(
        f"gunicorn: {workers} workers × {env.get('GUNICORN_THREADS', '4')} threads (gthread), "
        f"PostgreSQL; the owner has {len(devices)} devices; hooks: /mosquitto/acl, "
        f"{args.clients} keep-alive clients, closed loop, {args.duration:.0f} s after "
        f"{args.warmup:.0f} s with the tabs open; {os.cpu_count()} cores shared with the load",
        flush=True,
    )
    rows = []
    for mode, counts, app in (
        ("poll", args.tabs, "wsgi:app"),
        ("sse", args.sse_tabs, "bench.console:sse_app()"),
    ):
        with running_gunicorn(env, app=app) as (base, gunicorn):
            if mode == "poll":
                used = cpu_seconds(gunicorn.pid)
                answers = asyncio.run(tabs_alone(base, cookie, 100, args.duration))
                cost = (cpu_seconds(gunicorn.pid) - used) / answers * 1000
                print(
                    f"  100 polling tabs alone: {answers} presence answers in "
                    f"{args.duration:.0f} s, {cost:.2f} ms of API CPU each",
                    flush=True,
                )
            for tabs in (int(n) for n in counts.split(",")):
                rows.append(asyncio.run(one_case(base, cookie, devices, tabs, mode, args)))
                row = rows[-1]
                print(
                    f"  {mode} {tabs:>3} tabs: {row['rps']:.0f} hook req/s, "
                    f"p99 {row['p99']:.1f} ms, {row['errors']} errors",
                    flush=True,
                )
    print("\n| live presence | open tabs | hook requests/s | p50 ms | p99 ms | hook errors "
          "| presence answers to the tabs |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {'polling every 2 s' if row['mode'] == 'poll' else 'server-sent events'} "
            f"| {row['tabs']} | {row['rps']:.0f} | {row['p50']:.1f} | {row['p99']:.1f} "
            f"| {row['errors']} | {row['tab_answers']} ({row['tab_failures']} failed) |"
        )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run one benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("render", help="time the devices page with 1,000 devices")
    timing.add_argument("--masters", type=int, default=250)
    timing.add_argument("--agents", type=int, default=3, help="agents per master")
    timing.add_argument("--others", type=int, default=20_000, help="other owners' devices")
    timing.add_argument("--runs", type=int, default=40)
    hooks = commands.add_parser("live", help="hook throughput with console tabs open")
    hooks.add_argument("--tabs", default="0,25,100,200,0", help="polling tabs, per case")
    hooks.add_argument("--sse-tabs", default="0,5,10,20,40", help="streaming tabs, per case")
    hooks.add_argument("--workers", type=int, help="WEB_CONCURRENCY (default: 2 × cores + 1)")
    hooks.add_argument("--clients", type=int, default=32)
    hooks.add_argument("--duration", type=float, default=10.0)
    hooks.add_argument("--warmup", type=float, default=3.0)
    hooks.add_argument("--masters", type=int, default=25)
    hooks.add_argument("--agents", type=int, default=3)
    args = parser.parse_args(argv)
    {"render": render, "live": live}[args.command](args)


if __name__ == "__main__":
    main()
