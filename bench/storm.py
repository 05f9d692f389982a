"""Reconnect storm: every device of a fleet logs in at once (a broker restart), against
gunicorn + PostgreSQL, with a /healthz burst of the same size as the baseline.

    python bench/storm.py [--sizes 2000,10000] [--concurrency 64] [--workers N] [--fresh]

It creates (or empties) the PostgreSQL database `iot_storm` on postgres@127.0.0.1 (override
with STORM_DATABASE_URL), migrates it, seeds one fleet per size (claimed masters with one
agent each; disjoint, so no burst finds another's tokens in a worker's cache), starts
`gunicorn -c gunicorn.conf.py wsgi:app` with production settings, and for each size sends
a burst of that many `/healthz` requests, then that many `/emqx/authn` logins, over
`--concurrency` keep-alive connections (EMQX's HTTP authenticator keeps a pool of them).
One login in ten presents another device's token and must be denied. Every answer is
checked; it prints the table (p50, p99, throughput, ratio to /healthz, wrong answers, 5xx).

By default each device reconnects with the client id it last used, so a login only reads the
database (a broker restart); `--fresh` gives every device a new client id, so every login
also writes it (a fleet moving to a new broker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hooks import (  # noqa: E402
    SECRETS,
    bench_env,
    free_port,
    reset_database,
    running_gunicorn,
    seed,
)

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/iot_storm"
HOOK_SECRET = SECRETS["MQTT_SECRET_KEY"]


def login_calls(fleet: list[dict], fresh: bool) -> tuple[list[tuple], set[int]]:
    """The `/emqx/authn` call of every device; one in ten with a neighbour's token."""
    impostors = set(range(0, len(fleet), 10))
    calls = []
    for index, device in enumerate(fleet):
        token = fleet[index - 1]["token"] if index in impostors else device["token"]
        body = {
            "clientid": ("new-" + device["uuid"][:8]) if fresh else device["clientid"],
            "username": "device_" + device["uuid"],
            "password": token,
            "peerhost": "10.0.0.7",
        }
        calls.append(("POST", "/emqx/authn", body))
    return calls, impostors


async def burst(base: str, calls: list[tuple], concurrency: int) -> tuple[list[tuple], float]:
    """Every call at once over `concurrency` connections: (status, body, seconds) each."""
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {HOOK_SECRET}"}

    async def one(session, method, path, body):
        async with gate:
            started = time.perf_counter()
            try:
                async with session.request(method, path, json=body, headers=headers) as answer:
                    raw, status = await answer.read(), answer.status
            except (aiohttp.ClientError, TimeoutError):
                return 0, None, time.perf_counter() - started
            seconds = time.perf_counter() - started
        try:
            return status, json.loads(raw), seconds
        except ValueError:
            return status, None, seconds

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    started = time.perf_counter()
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        answers = await asyncio.gather(*(one(session, *call) for call in calls))
    return answers, time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def is_right(answer: tuple, allowed: bool) -> bool:
    """The contract's answer: allow with the device's attributes, or a bare deny."""
    status, body, _ = answer
    if status != 200 or not isinstance(body, dict):
        return False
    if not allowed:
        return body == {"result": "deny"}
    return body.get("result") == "allow" and body.get("client_attrs", {}).get("role") == "device"


def summarise(name: str, answers: list[tuple], seconds: float, wrong: int) -> dict:
    """One row of the table."""
    latencies = [a[2] for a in answers]
    return {
        "name": name,
        "requests": len(answers),
        "seconds": seconds,
        "rps": len(answers) / seconds,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "wrong": wrong,
        "5xx": sum(a[0] >= 500 for a in answers),
    }


def run_size(base: str, fleet: list[dict], args) -> list[dict]:
    """The /healthz burst, then the login burst, of one fleet size."""
    healthz = [("GET", "/healthz", None)] * len(fleet)
    answers, seconds = asyncio.run(burst(base, healthz, args.concurrency))
    rows = [
        summarise(f"/healthz × {len(fleet)}", answers, seconds, sum(a[0] != 200 for a in answers))
    ]
    calls, impostors = login_calls(fleet, args.fresh)
    answers, seconds = asyncio.run(burst(base, calls, args.concurrency))
    wrong = sum(not is_right(a, i not in impostors) for i, a in enumerate(answers))
    rows.append(summarise(f"/emqx/authn × {len(fleet)}", answers, seconds, wrong))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Set up, run every size, print the table, tear down; exit 1 on any wrong answer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000", help="comma-separated fleet sizes")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--workers", type=int, help="WEB_CONCURRENCY (default: 2 × cores + 1)")
    parser.add_argument("--fresh", action="store_true", help="new client ids: every login writes")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]

    database_url = os.environ.get("STORM_DATABASE_URL", DEFAULT_DATABASE)
    port = free_port()
    env = bench_env(database_url, port, args.workers)
    reset_database(database_url, env)
    # Masters with one agent each, cut into one disjoint fleet per size.
    seeded = seed(env, sum(size // 2 for size in sizes), 1)
    bounds = [sum(sizes[:i]) // 2 * 2 for i in range(len(sizes) + 1)]
    fleets = [seeded[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    rows = []
    with running_gunicorn(env) as (base, _):
        time.sleep(2)  # every worker booted, not just the first to answer
        workers = env.get("WEB_CONCURRENCY") or str(2 * (os.cpu_count() or 1) + 1)
        print(
            f"gunicorn: {workers} workers × {env.get('GUNICORN_THREADS', '4')} threads, "
            f"PostgreSQL; {args.concurrency} keep-alive connections; "
            f"{'fresh client ids (a write per login)' if args.fresh else 'known client ids'}; "
            f"one login in ten with another device's token; {os.cpu_count()} cores shared "
            "with the load generator",
            flush=True,
        )
        for fleet in fleets:
            rows += run_size(base, fleet, args)

    print(
        "\n| burst | requests/s | seconds | p50 ms | p99 ms | max ms | ratio to /healthz "
        "| wrong | 5xx |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for baseline, row in zip(rows[::2], rows[1::2], strict=True):
        for item in (baseline, row):
            print(
                f"| {item['name']} | {item['rps']:.0f} | {item['seconds']:.1f} "
                f"| {item['p50_ms']:.1f} | {item['p99_ms']:.1f} | {item['max_ms']:.1f} "
                f"| {item['rps'] / baseline['rps']:.2f} | {item['wrong']} | {item['5xx']} |"
            )
    return 1 if any(row["wrong"] or row["5xx"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
