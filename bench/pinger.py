"""Benchmark of the pinger: PONGs per second, round trip, database statements, memory.

Everything runs on this machine, on a private Mosquitto (`mosquitto -p <free port>`) so
nothing else on the broker interferes:

1. ceiling: a bare paho echo client (same paho settings as the pinger: subscribe QoS 0,
   answer QoS 1) under the same closed-loop load;
2. the pinger (`python -m iot_server.pinger`, its own process) under that load:
   PONGs/s, round trip p50/p99, database statements per 1,000 pings;
3. the pinger at a fixed offered rate (`--rate`, default 5,000 PING/s): round trip;
4. memory: a fresh pinger's RSS after 100,000 PINGs from 1,000 devices, then after
   100,000 PINGs from 100,000 distinct devices (same load, different device count).

Simulated devices are a few paho connections (MQTT 5, `no_local`), each publishing for many
device uuids and subscribed to exactly their topics. Run: `python bench/pinger.py`
(`--database-url postgresql://…` to write presence to PostgreSQL instead of a SQLite file).

Scale-out: `--replicas M` runs phases 2 and 3 against M pinger processes sharing the load
through `MQTT_SHARED_GROUP` (`$share/<group>/device/+/ping`) and reports each replica's share;
`--pinger-cpus 0` pins the pinger processes to those cores (`taskset -c`), so a figure per
pinger core can be read while the broker and the load run elsewhere; `--phases` picks phases.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER_PONG = b'{"c":"PONG","src":"server"}'
PING = b'{"c":"PING"}'


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------- simulated devices


def device_client(port: int, name: str):
    """A paho MQTT 5 connection standing in for many devices."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    return client


def subscribe_all(client, topics: list[str]) -> None:
    """Subscribe to each device topic with no_local (our own PINGs are not sent back)."""
    from paho.mqtt.subscribeoptions import SubscribeOptions

    options = SubscribeOptions(qos=0, noLocal=True)
    done = threading.Event()
    pending = {"n": 0}

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        pending["n"] -= 1
        if pending["n"] == 0:
            done.set()

    client.on_subscribe = on_subscribe
    chunks = [topics[i : i + 100] for i in range(0, len(topics), 100)]
    pending["n"] = len(chunks)
    for chunk in chunks:
        client.subscribe([(topic, options) for topic in chunk])
    if not done.wait(30):
        raise RuntimeError("subscriptions not acknowledged")


def closed_loop(port, uuids, window, duration, warmup, start_at, results) -> None:
    """Keep `window` PINGs outstanding: each PONG triggers the next device's PING."""
    client = device_client(port, f"bench-{uuids[0][:8]}")
    topics = [f"device/{u}/ping" for u in uuids]
    sent_at: dict[str, float] = {}
    rtts: list[float] = []
    state = {"next": 0, "received": 0, "measuring": False, "stop": False}
    lock = threading.Lock()

    def send_next():
        i = state["next"] % len(topics)
        state["next"] += 1
        sent_at[topics[i]] = time.perf_counter()
        client.publish(topics[i], PING, qos=0)

    def on_message(client, userdata, message):
        if message.payload != SERVER_PONG:
            return  # a server re-PING: not part of the measurement
        now = time.perf_counter()
        with lock:
            started = sent_at.pop(message.topic, None)
            if started is not None and state["measuring"]:
                rtts.append(now - started)
                state["received"] += 1
            if not state["stop"]:
                send_next()

    client.on_message = on_message
    client.loop_start()
    subscribe_all(client, topics)
    time.sleep(max(0.0, start_at - time.time()))
    with lock:
        for _ in range(window):
            send_next()
    time.sleep(warmup)
    with lock:
        state["measuring"] = True
    time.sleep(duration)
    with lock:
        state["measuring"] = False
        state["stop"] = True
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    results.put({"received": state["received"], "rtts": rtts})


def open_loop(port, uuids, rate, duration, start_at, results, measure=True) -> None:
    """PING at a fixed rate (round robin over the devices), whatever the answers."""
    client = device_client(port, f"bench-{uuids[0][:8]}-{os.getpid()}")
    topics = [f"device/{u}/ping" for u in uuids]
    sent_at: dict[str, float] = {}
    rtts: list[float] = []
    lock = threading.Lock()

    def on_message(client, userdata, message):
        if message.payload != SERVER_PONG:
            return
        now = time.perf_counter()
        with lock:
            started = sent_at.pop(message.topic, None)
        if started is not None:
            rtts.append(now - started)

    client.on_message = on_message
    client.loop_start()
    if measure:
        subscribe_all(client, topics)
    time.sleep(max(0.0, start_at - time.time()))
    begin = time.perf_counter()
    sent = 0
    total = int(rate * duration) if duration else len(topics)
    while sent < total:
        due = min(total, int((time.perf_counter() - begin) * rate) + 1)
        while sent < due:
            topic = topics[sent % len(topics)]
            if measure:
                with lock:
                    sent_at[topic] = time.perf_counter()
            client.publish(topic, PING, qos=0)
            sent += 1
        time.sleep(0.001)
    time.sleep(1.0)
    client.disconnect()
    client.loop_stop()
    results.put({"sent": sent, "received": len(rtts), "rtts": rtts})


def run_devices(target, groups: list[list[str]], **kwargs) -> list[dict]:
    """Run one simulated-device process per group of uuids; collect their results."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    subscribing = 0.002 * sum(map(len, groups)) if kwargs.get("measure", True) else 0
    start_at = time.time() + 3 + subscribing  # all start together, once subscribed
    processes = [
        ctx.Process(target=target, kwargs={**kwargs, "uuids": group, "start_at": start_at,
                                           "results": results, "port": kwargs["port"]})
        for group in groups
    ]  # fmt: skip
    for process in processes:
        process.start()
    collected = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(10)
    return collected


# ---------------------------------------------------------------- servers under test


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def echo_server(port: int) -> None:
    """The ceiling: a bare paho client answering every PING (same paho settings as the
    pinger, none of its parsing, presence or database work)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(10_000)

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe("device/+/ping", qos=0)

    def on_message(client, userdata, message):
        if message.payload != SERVER_PONG:
            client.publish(message.topic, SERVER_PONG, qos=1)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_forever()


class PingerProcess:
    """`python -m iot_server.pinger` with stats every second, read from its log."""

    STATS = re.compile(r"stats (\{.*\})")

    def __init__(
        self,
        broker_port: int,
        database_url: str,
        shared_group: str | None = None,
        cpus: str | None = None,
    ) -> None:
        env = {
            **os.environ,
            "IOT_ENV": "development",
            "DATABASE_URL": database_url,
            "MQTT_BROKER_URL": f"mqtt://127.0.0.1:{broker_port}",
            "MQTT_SECRET_KEY": "bench",
            "LOG_FORMAT": "text",
            "DEBUG": "",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("MQTT_SHARED_GROUP", None)
        if shared_group:
            env["MQTT_SHARED_GROUP"] = shared_group
        pin = ["taskset", "-c", cpus] if cpus else []
        self.process = subprocess.Popen(
            [*pin, sys.executable, "-m", "iot_server.pinger", "--stats-interval", "1"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stats: dict = {}
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            found = self.STATS.search(line)
            if found:
                self.stats = json.loads(found.group(1))
            elif "ERROR" in line or "WARNING" in line:
                self.errors.append(line.strip())

    def wait_stats(self, predicate, timeout: float = 120) -> dict:
        """Wait until the stats satisfy `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats and predicate(self.stats):
                return self.stats
            time.sleep(0.2)
        raise TimeoutError(f"stats never matched; last: {self.stats}")

    def rss(self) -> float:
        return rss_mb(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time the pinger has used so far (Linux /proc), seconds."""
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(30)


def prepare_database(url: str | None, tmp: Path, uuids: list[str]) -> str:
    """A migrated database holding the benchmark's devices (so UPDATEs hit real rows)."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    from iot_server import create_app
    from iot_server.extensions import db
    from iot_server.models import Device

    url = url or f"sqlite:///{tmp / 'bench.sqlite'}"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "LOG_FORMAT": "text"})
    with app.app_context():
        db.drop_all()
        db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade(directory=str(ROOT / "migrations"), x_arg=["quiet=1"])
        rows = [{"uuid": u, "kind": "master", "token_version": 1, "enabled": True} for u in uuids]
        for i in range(0, len(rows), 10_000):
            db.session.execute(Device.__table__.insert(), rows[i : i + 10_000])
        db.session.commit()
        db.engine.dispose()
    return url


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def summarise(results: list[dict], duration: float) -> dict:
    """PONGs per second and round-trip quantiles over all device processes."""
    rtts = [r for result in results for r in result["rtts"]]
    return {
        "pongs_per_s": sum(r["received"] for r in results) / duration,
        "p50_ms": percentile(rtts, 0.50),
        "p99_ms": percentile(rtts, 0.99),
        "mean_ms": statistics.fmean(rtts) * 1000 if rtts else float("nan"),
    }


def main() -> None:
    """Run the four phases and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2, help="simulated-device processes")
    parser.add_argument("--devices", type=int, default=1000, help="devices per client")
    parser.add_argument("--window", type=int, default=200, help="PINGs in flight per client")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=5000.0, help="offered PING/s, phase 3")
    parser.add_argument("--memory-devices", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite")
    parser.add_argument(
        "--replicas", type=int, default=1, help="pinger processes in one shared group"
    )
    parser.add_argument("--pinger-cpus", help="taskset -c list for the pinger processes")
    parser.add_argument(
        "--phases", default="echo,pinger,fixed,memory", help="comma-separated subset to run"
    )
    args = parser.parse_args()
    if shutil.which("mosquitto") is None:
        sys.exit("mosquitto is not installed")
    phases = set(args.phases.split(","))

    tmp = Path(tempfile.mkdtemp(prefix="bench-pinger-"))
    groups = [[str(uuidlib.uuid4()) for _ in range(args.devices)] for _ in range(args.clients)]
    n_memory = args.memory_devices if "memory" in phases else 0
    memory_uuids = [str(uuidlib.uuid4()) for _ in range(n_memory)]
    url = prepare_database(args.database_url, tmp, [u for g in groups for u in g] + memory_uuids)

    port = free_port()
    broker = subprocess.Popen(
        ["mosquitto", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    report: dict = {
        "cores": os.cpu_count(),
        "database": url.split(":")[0],
        "replicas": args.replicas,
        "pinger_cpus": args.pinger_cpus or "any",
    }
    load = {"port": port, "window": args.window, "duration": args.duration, "warmup": 2.0}
    try:
        if "echo" in phases:  # 1. ceiling
            echo = mp.get_context("spawn").Process(target=echo_server, args=(port,), daemon=True)
            echo.start()
            time.sleep(1)
            cpu_before = process_cpu_seconds(echo.pid)
            report["echo"] = summarise(run_devices(closed_loop, groups, **load), args.duration)
            # CPU per PING is steadier than PONG/s on a busy machine: it does not depend on
            # how much of the machine the process was given.
            echo_cpu = process_cpu_seconds(echo.pid) - cpu_before
            echo_pings = report["echo"]["pongs_per_s"] * args.duration
            report["echo"]["pings_per_cpu_s"] = echo_pings / echo_cpu if echo_cpu else None
            echo.terminate()
            echo.join()

        group = f"bench-{uuidlib.uuid4().hex[:8]}" if args.replicas > 1 else None
        pingers = [
            PingerProcess(port, url, shared_group=group, cpus=args.pinger_cpus)
            for _ in range(args.replicas)
        ]
        for pinger in pingers:
            pinger.wait_stats(lambda s: s.get("connects", 0) >= 1, timeout=30)
        time.sleep(0.5)  # every replica's SUBSCRIBE has reached the broker

        if "pinger" in phases:  # 2. the pinger(s), saturated
            before = [dict(pinger.stats) for pinger in pingers]
            cpu_before = [pinger.cpu_seconds() for pinger in pingers]
            report["pinger"] = summarise(run_devices(closed_loop, groups, **load), args.duration)
            after = [pinger.wait_stats(lambda s: s.get("pending", 1) == 0) for pinger in pingers]
            cpu = sum(p.cpu_seconds() for p in pingers) - sum(cpu_before)
            pairs = list(zip(after, before, strict=True))
            shares = [a.get("pings", 0) - b.get("pings", 0) for a, b in pairs]
            statements = sum(a.get("statements", 0) - b.get("statements", 0) for a, b in pairs)
            pings = sum(shares)
            report["pinger"]["pings"] = pings
            report["pinger"]["pings_per_replica"] = shares
            # The pinger's own CPU only (broker, database and load not counted).
            report["pinger"]["pinger_cpu_s"] = cpu
            report["pinger"]["pings_per_pinger_cpu_s"] = pings / cpu if cpu else None
            report["pinger"]["statements_per_1000_pings"] = 1000 * statements / max(pings, 1)
            report["pinger"]["dropped"] = sum(a.get("dropped", 0) for a in after)

        if "fixed" in phases:  # 3. the pinger(s) at a fixed offered rate
            per_client = args.rate / args.clients
            fixed = run_devices(
                open_loop, groups, port=port, rate=per_client, duration=args.duration
            )
            sent = sum(r["sent"] for r in fixed)
            report["fixed_rate"] = {
                "offered_per_s": args.rate,
                "answered_fraction": sum(r["received"] for r in fixed) / max(sent, 1),
                **summarise(fixed, args.duration),
            }
        report["pinger_errors"] = [e for pinger in pingers for e in pinger.errors][:5]
        for pinger in pingers:
            pinger.stop()

        if "memory" in phases:
            # 4. memory: a fresh pinger takes the same load twice, 100,000 PINGs at the offered
            # rate, first from 1,000 devices, then from 100,000 distinct ones: the RSS difference
            # is what the device count costs, not what a burst of traffic leaves in the heap.
            pinger = PingerProcess(port, url)
            pinger.wait_stats(lambda s: s.get("connects", 0) >= 1, timeout=30)
            n = len(memory_uuids)
            report["memory"] = {"idle_mb": pinger.rss()}
            few = [memory_uuids[:500] * (n // 1000), memory_uuids[500:1000] * (n // 1000)]
            run_devices(open_loop, few, port=port, rate=args.rate / 2, duration=0, measure=False)
            pinger.wait_stats(lambda s: s.get("pings", 0) >= n and s.get("pending", 1) == 0)
            time.sleep(1.5)
            report["memory"]["1k_devices_mb"] = pinger.rss()
            report["memory"]["tracked_1k"] = pinger.stats.get("devices")
            many = [memory_uuids[: n // 2], memory_uuids[n // 2 :]]
            run_devices(open_loop, many, port=port, rate=args.rate / 2, duration=0, measure=False)
            pinger.wait_stats(lambda s: s.get("pings", 0) >= 2 * n and s.get("pending", 1) == 0)
            time.sleep(1.5)
            report["memory"]["100k_devices_mb"] = pinger.rss()
            report["memory"]["tracked_100k"] = pinger.stats.get("devices")
            # PONGs and server PINGs not sent because too many awaited their PUBACK, server
            # PINGs that waited a whole interval for room, and those sent.
            for counter in ("dropped", "stale", "server_pings"):
                report["memory"][counter] = pinger.stats.get(counter, 0)
            report["memory"]["delta_mb"] = (
                report["memory"]["100k_devices_mb"] - report["memory"]["1k_devices_mb"]
            )
            pinger.stop()
    finally:
        broker.kill()
        broker.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    if "pinger" in report and "echo" in report:
        ratio = report["pinger"]["pongs_per_s"] / report["echo"]["pongs_per_s"]
        report["ratio_to_echo"] = ratio
        echo_efficiency = report["echo"].get("pings_per_cpu_s")
        if echo_efficiency and report["pinger"].get("pings_per_pinger_cpu_s"):
            report["cpu_efficiency_ratio_to_echo"] = (
                report["pinger"]["pings_per_pinger_cpu_s"] / echo_efficiency
            )
    print(json.dumps(report, indent=2, default=lambda x: round(x, 2)))


if __name__ == "__main__":
    main()
