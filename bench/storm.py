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

Each size's logins run first on API processes that have never seen those devices (every
device state a cache miss, one database read each), then, after `--warm` more bursts have let
every worker meet most of them, once more: a broker restart on a server that has been
running, answered from the workers' device-state caches. By default each device reconnects
with the client id it last used, so a login writes nothing; `--fresh` gives every device a
new client id, so every login also writes its session (a fleet moving to a new broker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hooks import (  # noqa: E402
    SECRETS,
    bench_env,
    cpu_seconds,
    device_state_reads,
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


async def burst(base: str, calls: list[tuple], concurrency: int, start_at: float):
    """Every call at once over `concurrency` connections, from wall time `start_at`:
    (status, body, seconds) each, and the wall time the last answer came."""
    import aiohttp

    headers = {"Authorization": f"Bearer {HOOK_SECRET}", "Content-Type": "application/json"}
    # Bodies encoded and answers decoded outside the timed burst: the load generator shares
    # the API's two cores, and its JSON work would weigh on the logins, not on /healthz.
    pending = [(method, path, None if body is None else json.dumps(body).encode())
               for method, path, body in calls]  # fmt: skip
    raw_answers: list = [None] * len(pending)
    cursor = iter(range(len(pending)))

    async def worker(session):
        for index in cursor:
            method, path, body = pending[index]
            started = time.perf_counter()
            try:
                async with session.request(method, path, data=body, headers=headers) as answer:
                    raw, status = await answer.read(), answer.status
            except (aiohttp.ClientError, TimeoutError):
                raw, status = None, 0
            raw_answers[index] = (status, raw, time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        finished = time.time()
    answers = []
    for status, raw, seconds in raw_answers:
        try:
            answers.append((status, json.loads(raw) if raw else None, seconds))
        except ValueError:
            answers.append((status, None, seconds))
    return answers, finished


def burst_share(job: tuple) -> tuple[list[tuple], float]:
    """One load process's share of a burst, on its own event loop."""
    return asyncio.run(burst(*job))


def run_burst(pool, base: str, calls: list[tuple], args) -> tuple[list[tuple], float, float]:
    """A burst split over the load processes (as in `bench/hooks.py`), all starting at
    once: the answers in call order, the seconds from the start to the last answer, and the
    CPU seconds gunicorn's processes spent meanwhile."""
    processes = args.load_processes
    cpu_before = cpu_seconds(args.gunicorn_pid)
    start_at = time.time() + 0.5  # every process connected and waiting
    jobs = [
        (base, calls[i::processes], max(1, args.concurrency // processes), start_at)
        for i in range(processes)
    ]
    shares = pool.map(burst_share, jobs)
    answers: list = [None] * len(calls)
    for i, (share, _) in enumerate(shares):
        answers[i::processes] = share
    return (
        answers,
        max(finished for _, finished in shares) - start_at,
        (cpu_seconds(args.gunicorn_pid) - cpu_before),
    )


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


def login_burst(pool, base: str, fleet: list[dict], args, name: str) -> dict:
    """One burst of the fleet's logins, every answer checked, with where the hooks found
    the device states (their exact caches, or the database)."""
    calls, impostors = login_calls(fleet, args.fresh)
    before = device_state_reads(base)
    answers, seconds, cpu = run_burst(pool, base, calls, args)
    after = device_state_reads(base)
    wrong = sum(not is_right(a, i not in impostors) for i, a in enumerate(answers))
    row = summarise(name, answers, seconds, wrong)
    row["cpu_us"] = cpu / len(answers) * 1e6
    hits = after.get("hit", 0) - before.get("hit", 0)
    reads = hits + sum(after.get(k, 0) - before.get(k, 0) for k in ("miss", "uncached"))
    row["cache_hits"] = hits / reads if reads else 0.0
    return row


def healthz_burst(pool, base: str, size: int, args) -> dict:
    """The baseline: as many /healthz requests as the fleet has logins, the same way."""
    calls = [("GET", "/healthz", None)] * size
    answers, seconds, cpu = run_burst(pool, base, calls, args)
    row = summarise(f"/healthz × {size}", answers, seconds, sum(a[0] != 200 for a in answers))
    row["cpu_us"] = cpu / len(answers) * 1e6
    return row


def run_size(pool, base: str, fleet: list[dict], args) -> list[dict]:
    """On API processes that have just started: a /healthz burst, the logins (the first
    these processes see), `--warm` more login bursts so every worker meets most devices,
    another /healthz burst, and the logins once more (a broker restart on a server that has
    been running). Each login burst is compared with the /healthz burst just before it."""
    first_baseline = healthz_burst(pool, base, len(fleet), args)
    first = login_burst(pool, base, fleet, args, f"/emqx/authn × {len(fleet)}, first time")
    first["ratio"] = first["rps"] / first_baseline["rps"]
    first["cpu_ratio"] = first_baseline["cpu_us"] / first["cpu_us"]
    rows = [first_baseline, first]
    for n in range(args.warm):
        login_burst(pool, base, fleet, args, f"warm-up {n + 1}")
    if args.warm:
        seen_baseline = healthz_burst(pool, base, len(fleet), args)
        seen = login_burst(pool, base, fleet, args, f"/emqx/authn × {len(fleet)}, seen before")
        seen["ratio"] = seen["rps"] / seen_baseline["rps"]
        seen["cpu_ratio"] = seen_baseline["cpu_us"] / seen["cpu_us"]
        rows += [seen_baseline, seen]
    for row in rows:
        row.setdefault("ratio", 1.0)
        row.setdefault("cpu_ratio", 1.0)
    return rows


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    """Each row's median over the rounds (answers checked in every round: summed)."""
    combined = []
    for same in zip(*rounds, strict=True):
        row = {"name": same[0]["name"], "rounds": len(same)}
        keys = ("rps", "seconds", "p50_ms", "p99_ms", "max_ms", "ratio", "cpu_us", "cpu_ratio")
        for key in (*keys, "cache_hits"):
            if key in same[0]:
                row[key] = statistics.median(r[key] for r in same)
        row["wrong"] = sum(r["wrong"] for r in same)
        row["5xx"] = sum(r["5xx"] for r in same)
        row["each"] = [r["ratio"] for r in same]
        combined.append(row)
    return combined


def main(argv: list[str] | None = None) -> int:
    """Set up, run every size, print the table, tear down; exit 1 on any wrong answer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000", help="comma-separated fleet sizes")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--workers", type=int, help="WEB_CONCURRENCY (default: 2 × cores + 1)")
    parser.add_argument(
        "--load-processes", type=int, default=2, help="processes sending the bursts"
    )
    parser.add_argument("--fresh", action="store_true", help="new client ids: every login writes")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat on freshly started API processes"
    )
    parser.add_argument(
        "--warm",
        type=int,
        default=4,
        help="bursts between the first and the measured 'seen before' one (0: no second)",
    )
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
    workers = env.get("WEB_CONCURRENCY") or str(2 * (os.cpu_count() or 1) + 1)
    print(
        f"gunicorn: {workers} workers × {env.get('GUNICORN_THREADS', '4')} threads, "
        f"PostgreSQL; {args.concurrency} keep-alive connections from "
        f"{args.load_processes} load processes; "
        f"{'fresh client ids (a write per login)' if args.fresh else 'known client ids'}; "
        f"one login in ten with another device's token; {args.rounds} round(s), each on "
        f"freshly started API processes; {os.cpu_count()} cores shared with the load generator",
        flush=True,
    )
    rounds = []
    for _ in range(args.rounds):
        rows = []
        with running_gunicorn(env) as (base, gunicorn), mp.Pool(args.load_processes) as pool:
            args.gunicorn_pid = gunicorn.pid
            time.sleep(2)  # every worker booted, not just the first to answer
            for fleet in fleets:
                rows += run_size(pool, base, fleet, args)
        rounds.append(rows)
    rows = median_rows(rounds)

    print(
        "\n| burst | requests/s | seconds | p50 ms | p99 ms | max ms | ratio to /healthz "
        "(each round) | API CPU µs/request | CPU ratio | states from cache | wrong | 5xx |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for item in rows:
        cached = f"{item['cache_hits']:.0%}" if "cache_hits" in item else "—"
        each = ", ".join(f"{ratio:.2f}" for ratio in item["each"])
        baseline = item["name"].startswith("/healthz")
        ratio = "—" if baseline else f"{item['ratio']:.2f} ({each})"
        cpu_ratio = "—" if baseline else f"{item['cpu_ratio']:.2f}"
        print(
            f"| {item['name']} | {item['rps']:.0f} | {item['seconds']:.1f} "
            f"| {item['p50_ms']:.1f} | {item['p99_ms']:.1f} | {item['max_ms']:.1f} "
            f"| {ratio} | {item['cpu_us']:.0f} | {cpu_ratio} | {cached} "
            f"| {item['wrong']} | {item['5xx']} |"
        )
    return 1 if any(row["wrong"] or row["5xx"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
