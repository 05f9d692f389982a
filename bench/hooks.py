"""Benchmark the broker hooks against gunicorn + PostgreSQL, with /healthz as the ceiling.

    python bench/hooks.py [--duration 10] [--clients 64] [--workers N] [--load-processes 2]
    python bench/hooks.py --cpus 0 --load-cpus 1 --workers 3   # one API core, load on another

It creates (or empties) the PostgreSQL database `iot_bench` on postgres@127.0.0.1 (override
with BENCH_DATABASE_URL), migrates it with `flask --app wsgi db upgrade`, seeds masters and
agents, starts `gunicorn -c gunicorn.conf.py wsgi:app` on a free port, and drives each
endpoint for `--duration` seconds with `--clients` concurrent keep-alive connections
(asyncio + aiohttp, spread over `--load-processes` processes). It prints requests/s, p50 and
p99 latency and the ratio to /healthz, then stops gunicorn. The load generator runs on the
same machine and competes with gunicorn for the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/iot_bench"
SECRETS = {
    "JWT_SECRET": "bench-jwt-secret-0123456789abcdef0123456789abcdef",
    "DEVICE_MASTER_SECRET_KEY": "bench-master-secret-0123456789abcdefghij",
    "DEVICE_AGENT_SECRET_KEY": "bench-agent-secret-0123456789abcdefghij",
    "MQTT_SECRET_KEY": "bench-mqtt-secret-0123456789abcdefghijkl",
}
ENDPOINTS = ("healthz", "emqx_authn", "emqx_authz", "mosquitto_acl")
#: Ratio to /healthz each endpoint should reach (issue 17); a login spread over many devices
#: (`--spread`) has a lower bar than one device's reconnects.
TARGETS = {"emqx_authn": 0.9, "emqx_authz": 0.8, "mosquitto_acl": 0.8}
SPREAD_TARGETS = {"emqx_authn": 0.75, "emqx_authz": 0.8, "mosquitto_acl": 0.8}
#: /healthz of the real app against a bare Flask app under the same gunicorn.conf.py.
BARE_TARGET = 0.8


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_env(database_url: str, port: int, workers: int | None) -> dict[str, str]:
    """The environment of gunicorn and of the flask commands."""
    env = {
        **os.environ,
        **SECRETS,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "IOT_ENV": "production",
        "LOG_FORMAT": "json",
        # go-auth and amqtt call from loopback without the secret (production trusts none).
        "HOOK_TRUSTED_NETWORKS": "127.0.0.0/8,::1",
    }
    if workers:
        env["WEB_CONCURRENCY"] = str(workers)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def reset_database(database_url: str, env: dict[str, str]) -> None:
    """Create the bench database, or drop its tables when it exists; then migrate it."""
    from sqlalchemy import create_engine, text

    from iot_server.config import database_url as normalise

    url = normalise(database_url)
    base, name = url.rsplit("/", 1)
    server = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        exists = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).scalar()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        # Every table, whatever the migrations have added since.
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def seed(env: dict[str, str], masters: int, agents_per_master: int) -> list[dict]:
    """Create an owner, masters and agents; return each device's uuid, token and client id."""
    os.environ.update({k: env[k] for k in (*SECRETS, "DATABASE_URL", "IOT_ENV")})
    from iot_server import create_app, tokens
    from iot_server.extensions import db
    from iot_server.models import AGENT, MASTER, Device, DeviceSession, Owner

    app = create_app()
    seeded = []
    with app.app_context():
        owner = Owner(username="bench", password_hash="x")
        db.session.add(owner)
        db.session.flush()
        for _ in range(masters):
            master = Device(uuid=str(uuidlib.uuid4()), kind=MASTER, owner_id=owner.id)
            db.session.add(master)
            group = [master]
            for _ in range(agents_per_master):
                group.append(Device(uuid=str(uuidlib.uuid4()), kind=AGENT, master_uuid=master.uuid))
            db.session.add_all(group[1:])
            db.session.flush()
            for device in group:
                # Remember the session up front, as after each device's first CONNECT.
                clientid = f"esp-{device.uuid[:8]}"
                db.session.add(
                    DeviceSession(device_uuid=device.uuid, client_id=clientid, token_version=1)
                )
                seeded.append(
                    {
                        "uuid": device.uuid,
                        "token": tokens.issue_device_token(device),
                        "clientid": clientid,
                    }
                )
        db.session.commit()
        db.engine.dispose()
    return seeded


def request_for(endpoint: str, device: dict) -> tuple[str, str, dict | None, dict]:
    """Method, path, JSON body and headers of one request, as the brokers send it."""
    bearer = {"Authorization": "Bearer " + SECRETS["MQTT_SECRET_KEY"]}
    username = "device_" + device["uuid"]
    if endpoint == "healthz":
        return "GET", "/healthz", None, {}
    if endpoint == "emqx_authn":
        body = {
            "clientid": device["clientid"],
            "username": username,
            "password": device["token"],
            "peerhost": "10.0.0.7",
        }
        return "POST", "/emqx/authn", body, bearer
    if endpoint == "emqx_authz":
        body = {
            "clientid": device["clientid"],
            "username": username,
            "topic": f"device/{device['uuid']}/ping",
            "action": "publish",
            "qos": "1",
            "retain": "false",
        }
        return "POST", "/emqx/authz", body, bearer
    # go-auth and amqtt send no header: the loopback address is trusted.
    body = {
        "username": username,
        "clientid": device["clientid"],
        "topic": f"device/{device['uuid']}/ping",
        "acc": 1,
    }
    return "POST", "/mosquitto/acl", body, {}


async def drive(
    base: str,
    endpoint: str,
    devices: list[dict],
    clients: int,
    seconds: float,
    spread: bool,
    offset: int,
    interval: float | None = None,
):
    """`clients` keep-alive connections, each sending back to back, or one request every
    `interval` seconds (latency then counts from the scheduled time, so a slow answer is
    not hidden by the requests it delayed); returns latencies and the error count."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    # Every request encoded once up front: the load generator shares the API's two cores,
    # and JSON-encoding each body anew would take more of them for the endpoints with a
    # body than for /healthz, skewing the ratios (a broker encodes on its own machine).
    prepared = {}
    for device in devices:
        method, path, body, headers = request_for(endpoint, device)
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
            body = json.dumps(body).encode()
        prepared[device["uuid"]] = (method, path, body, headers)

    async def one_client(index: int) -> None:
        nonlocal errors
        rng = random.Random(index)
        own = devices[index % len(devices)]
        scheduled = time.perf_counter() + (rng.random() * interval if interval else 0)
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(base, connector=connector) as session:
            while time.perf_counter() < deadline:
                device = rng.choice(devices) if spread else own
                method, path, body, headers = prepared[device["uuid"]]
                if interval:
                    await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
                    started, scheduled = scheduled, scheduled + interval
                else:
                    started = time.perf_counter()
                async with session.request(method, path, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                latencies.append(time.perf_counter() - started)
                if not ok:
                    errors += 1

    await asyncio.gather(*(one_client(offset + index) for index in range(clients)))
    return latencies, errors


#: The floor's row: /healthz of bench/bare_app.py under the same gunicorn.conf.py.
BARE = "bare flask /healthz"


def combine(rows: list[dict]) -> list[dict]:
    """One row per endpoint, in first-seen order: the median of its rounds' figures (errors
    and CPU summed); /healthz keeps its first and last rounds apart as the ceiling's ends."""
    if len(rows) == len({row["endpoint"] for row in rows}) + 1:
        return rows  # one round: nothing to combine (two /healthz rows, first and last)
    names = list(dict.fromkeys(row["endpoint"] for row in rows))
    for name in names:
        each = ", ".join(f"{row['rps']:.0f}" for row in rows if row["endpoint"] == name)
        print(f"{name}: requests/s by round {each}")
    combined = []
    for name in names:
        mine = [row for row in rows if row["endpoint"] == name]
        combined.append(
            {
                "endpoint": name,
                "rounds": len(mine),
                "requests": sum(row["requests"] for row in mine),
                "errors": sum(row["errors"] for row in mine),
                "rps": statistics.median(row["rps"] for row in mine),
                "p50_ms": statistics.median(row["p50_ms"] for row in mine),
                "p99_ms": statistics.median(row["p99_ms"] for row in mine),
                "api_cpu_s": statistics.median(row["api_cpu_s"] for row in mine),
            }
        )
    return combined


def device_state_reads(base: str) -> dict[str, float]:
    """iot_device_state_reads_total by source (hit, miss, uncached), over the workers."""
    import urllib.request

    found = {}
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("iot_device_state_reads_total{"):
                source = line.split('source="', 1)[1].split('"', 1)[0]
                found[source] = float(line.rsplit(" ", 1)[1])
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (Linux /proc), seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for process in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def parse_cpus(spec: str | None) -> set[int] | None:
    """`taskset -c` style list (`0`, `0,1`, `0-3`) as a set of core numbers."""
    if not spec:
        return None
    cores: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def pin_load_process(cores: set[int] | None) -> None:
    """Pool initializer: keep a load process on its cores (Linux)."""
    if cores:
        os.sched_setaffinity(0, cores)


def load_process(args: tuple) -> tuple[list[float], int]:
    """One load-generator process: its share of the clients, on its own event loop."""
    return asyncio.run(drive(*args))


def measure(pool, base, endpoint, devices, clients, processes, spread, rate, seconds) -> dict:
    """Run one endpoint across the load processes and summarise it."""
    interval = clients / rate if rate else None
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    offsets = [sum(shares[:i]) for i in range(processes)]
    jobs = [
        (base, endpoint, devices, n, seconds, spread, offset, interval)
        for n, offset in zip(shares, offsets, strict=True)
    ]
    started = time.perf_counter()
    results = pool.map(load_process, jobs)
    elapsed = time.perf_counter() - started
    latencies = sorted(latency for part, _ in results for latency in part)
    errors = sum(errors for _, errors in results)
    return {
        "endpoint": endpoint,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 30) -> None:
    """Block until gunicorn answers /healthz."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"gunicorn exited with {process.returncode}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit("gunicorn did not become ready")


@contextlib.contextmanager
def running_gunicorn(env: dict[str, str], cpus: str | None = None, app: str = "wsgi:app"):
    """`gunicorn -c gunicorn.conf.py wsgi:app` (pinned to `cpus` with taskset; another
    `app` for a variant), ready on `PORT`; yields its base URL and process, and stops its
    whole process group after."""
    pin = ["taskset", "-c", cpus] if cpus else []
    gunicorn = subprocess.Popen(
        [*pin, sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{env['PORT']}"
        wait_ready(base, gunicorn)
        yield base, gunicorn
    finally:
        os.killpg(gunicorn.pid, signal.SIGTERM)
        try:
            gunicorn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(gunicorn.pid, signal.SIGKILL)
            gunicorn.wait()


def main(argv: list[str] | None = None) -> None:
    """Set up, run every endpoint, print the table, tear down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--workers", type=int, help="WEB_CONCURRENCY (default: 2 × cores + 1)")
    parser.add_argument("--masters", type=int, default=200)
    parser.add_argument("--agents", type=int, default=2, help="agents per master")
    parser.add_argument(
        "--endpoints", default=",".join(ENDPOINTS), help="comma-separated subset to run"
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="offered load in requests/s over all clients (default: as fast as possible)",
    )
    parser.add_argument(
        "--spread",
        action="store_true",
        help="every request picks a random device (topic checks then mostly miss the "
        "per-process device cache); by default each client keeps to one device, as a "
        "device's session does",
    )
    parser.add_argument(
        "--cpus",
        help="pin gunicorn (arbiter and workers) to these cores with `taskset -c`, e.g. 0, "
        "for a figure per API core",
    )
    parser.add_argument("--load-cpus", help="pin the load processes to these cores, e.g. 1")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate the endpoints this many times"
    )
    parser.add_argument(
        "--no-bare",
        action="store_true",
        help="skip the floor: /healthz of a bare Flask app under the same gunicorn.conf.py",
    )
    args = parser.parse_args(argv)
    # Run as `python bench/hooks.py`: the project root is not on the path by itself.
    sys.path.insert(0, str(ROOT))

    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE)
    port = free_port()
    env = bench_env(database_url, port, args.workers)
    reset_database(database_url, env)
    devices = seed(env, args.masters, args.agents)
    rows = []
    context = multiprocessing.get_context("spawn")
    load_cores = parse_cpus(args.load_cpus)
    bare_env = {**env, "PORT": str(free_port())}
    with contextlib.ExitStack() as stack:
        base, gunicorn = stack.enter_context(running_gunicorn(env, args.cpus))
        servers = {"": (base, gunicorn)}
        if not args.no_bare:
            servers[BARE] = stack.enter_context(
                running_gunicorn(bare_env, args.cpus, "bench.bare_app:app")
            )
        workers = env.get("WEB_CONCURRENCY") or str(2 * (os.cpu_count() or 1) + 1)
        print(
            f"gunicorn: {workers} workers × {env.get('GUNICORN_THREADS', '4')} threads (gthread), "
            f"PostgreSQL; {len(devices)} devices; {args.clients} keep-alive clients in "
            f"{args.load_processes} load processes; {args.rounds} round(s) of "
            f"{args.duration:.0f} s per endpoint; "
            f"{'a random device per request' if args.spread else 'one device per client'}; "
            f"{f'offered {args.rate:.0f} req/s' if args.rate else 'closed loop'}; "
            f"{os.cpu_count()} cores shared with the load generator; "
            f"gunicorn on cores {args.cpus or 'any'}, load on cores {args.load_cpus or 'any'}",
            flush=True,
        )
        pool = stack.enter_context(
            context.Pool(args.load_processes, pin_load_process, (load_cores,))
        )
        # /healthz first and last, and the rounds alternate the endpoints: each figure is
        # the median of its rounds, which evens out drift in what else the machine does.
        plan = ["healthz", *(e for e in args.endpoints.split(",") if e != "healthz")]
        if not args.no_bare:
            plan.insert(0, BARE)
        for endpoint in [*plan * args.rounds, "healthz"]:
            base, gunicorn = servers[BARE if endpoint == BARE else ""]
            path = "healthz" if endpoint == BARE else endpoint
            load = (pool, base, path, devices, args.clients, args.load_processes)
            load = (*load, args.spread, args.rate)
            measure(*load, args.warmup)
            used = cpu_seconds(gunicorn.pid)
            rows.append({**measure(*load, args.duration), "endpoint": endpoint})
            rows[-1]["api_cpu_s"] = cpu_seconds(gunicorn.pid) - used
        state_reads = device_state_reads(servers[""][0])
    rows = combine(rows)

    ceilings = [row for row in rows if row["endpoint"] == "healthz"]
    ceiling = statistics.mean(row["rps"] for row in ceilings)
    runs = " and ".join(f"{row['rps']:.0f}" for row in ceilings)
    print(f"/healthz ceiling: mean of {runs} req/s")
    bare = next((row for row in rows if row["endpoint"] == BARE), None)
    if bare:
        floor = ceiling / bare["rps"]
        print(
            f"/healthz against a bare Flask app under the same gunicorn.conf.py: "
            f"{ceiling:.0f} / {bare['rps']:.0f} = {floor:.2f} (target ≥ {BARE_TARGET})"
        )
    reads = {key: int(state_reads.get(key, 0)) for key in ("hit", "miss", "uncached")}
    print(f"device states the hooks read (whole run): {reads}")
    targets = SPREAD_TARGETS if args.spread else TARGETS
    print("\n| endpoint | requests/s | p50 ms | p99 ms | ratio to /healthz | target | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        target = targets.get(row["endpoint"])
        print(
            f"| {row['endpoint']} | {row['rps']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {row['rps'] / ceiling:.2f} | {f'≥ {target}' if target else '—'} "
            f"| {row['errors']} |"
        )

    # What the API itself burns (gunicorn's arbiter and workers; PostgreSQL and the load
    # generator not counted): requests per CPU-second is the capacity of one API core.
    print("\n| endpoint | requests/s | API cores busy | requests per API CPU-second |")
    print("|---|---:|---:|---:|")
    for row in rows:
        busy = row["api_cpu_s"] / args.duration
        per_core = row["rps"] / busy if busy else float("nan")
        print(f"| {row['endpoint']} | {row['rps']:.0f} | {busy:.2f} | {per_core:.0f} |")


if __name__ == "__main__":
    main()
