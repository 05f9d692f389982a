"""Revocation latency across instances: a revoke committed through instance A, and how soon
instance B denies the old token at its login hook (EMQX's `/emqx/authn`).

    python bench/revocation.py [--rounds 200] [--workers 2]

Two `gunicorn -c gunicorn.conf.py wsgi:app` instances on one PostgreSQL database (created or
emptied: `iot_revocation` on postgres@127.0.0.1, or REVOCATION_DATABASE_URL). Each round: a
device logs in on B until B's workers serve it from their device-state caches, then its owner
revokes it through A's owner API, and B is asked again, back to back on fresh connections,
until it denies. It prints the delay from A's answer to B's first denial (p50, p99, max), and
how often B's very next login was already denied. B's caches learn of the revoke by
PostgreSQL NOTIFY; iot_device_state_reads_total shows they served the logins.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import requests

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

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/iot_revocation"
HOOK = {"Authorization": f"Bearer {SECRETS['MQTT_SECRET_KEY']}", "Connection": "close"}


def login(base: str, device: dict, token: str) -> str:
    """B's answer to the device's login: allow or deny."""
    body = {"clientid": device["clientid"], "username": "device_" + device["uuid"],
            "password": token, "peerhost": "10.0.0.7"}  # fmt: skip
    return requests.post(base + "/emqx/authn", json=body, headers=HOOK, timeout=10).json()["result"]


def state_reads(base: str) -> dict[str, float]:
    """iot_device_state_reads_total by source, summed over the instance's workers."""
    found = {}
    for line in requests.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("iot_device_state_reads_total{"):
            source = line.split('source="', 1)[1].split('"', 1)[0]
            found[source] = float(line.rsplit(" ", 1)[1])
    return found


def fresh_token(app, uuid: str) -> str:
    """A token at the device's current version, as a new registration would hand out."""
    from iot_server import tokens
    from iot_server.extensions import db
    from iot_server.models import Device

    with app.app_context():
        token = tokens.issue_device_token(db.session.get(Device, uuid))
        db.session.remove()
        return token


def owner_token(app) -> str:
    """A token of the seeded owner ("bench")."""
    from iot_server import tokens
    from iot_server.extensions import db
    from iot_server.models import Owner

    with app.app_context():
        owner = db.session.execute(db.select(Owner).filter_by(username="bench")).scalar_one()
        token = tokens.issue_owner_token(owner)
        db.session.remove()
        return token


def main(argv: list[str] | None = None) -> int:
    """Two instances, `--rounds` revokes, the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY of each instance")
    args = parser.parse_args(argv)

    database_url = os.environ.get("REVOCATION_DATABASE_URL", DEFAULT_DATABASE)
    env_a = bench_env(database_url, free_port(), args.workers)
    env_b = {**env_a, "PORT": str(free_port())}
    reset_database(database_url, env_a)
    devices = seed(env_a, 20, 0)
    from iot_server import create_app

    app = create_app()
    owner = {"Authorization": f"Bearer {owner_token(app)}", "Connection": "close"}
    delays, first_denied = [], 0
    with running_gunicorn(env_a) as (a, _), running_gunicorn(env_b) as (b, _):
        time.sleep(2)  # every worker booted
        before = state_reads(b)
        for n in range(args.rounds):
            device = devices[n % len(devices)]
            token = fresh_token(app, device["uuid"])
            for _ in range(4 * args.workers):  # fresh connections reach every worker
                assert login(b, device, token) == "allow"
            revoked = requests.post(
                f"{a}/devices/{device['uuid']}/revoke", headers=owner, timeout=10
            )
            answered = time.perf_counter()
            assert revoked.status_code == 200, revoked.text
            first = True
            while login(b, device, token) != "deny":
                first = False
                if time.perf_counter() - answered > 10:
                    sys.exit(f"round {n}: B still allows the revoked token after 10 s")
            delays.append(time.perf_counter() - answered)
            first_denied += first
        after = state_reads(b)

    reads = {key: after.get(key, 0) - before.get(key, 0) for key in ("hit", "miss", "uncached")}
    ordered = sorted(delays)
    p99 = ordered[max(0, round(0.99 * len(ordered)) - 1)]
    print(
        f"{args.rounds} revokes through A ({args.workers} workers), old token at B's login hook "
        f"({args.workers} workers), PostgreSQL; {os.cpu_count()} cores shared with the load"
    )
    print("\n| measure | value | target |")
    print("|---|---:|---:|")
    print(f"| A's answer → B's denial, p50 | {statistics.median(delays) * 1000:.1f} ms | — |")
    print(f"| A's answer → B's denial, p99 | {p99 * 1000:.1f} ms | < 50 ms |")
    print(f"| A's answer → B's denial, max | {max(delays) * 1000:.1f} ms | — |")
    print(f"| B's very next login denied | {first_denied} of {args.rounds} | — |")
    print(
        f"| B's device states: cache hits / misses / uncached | {reads['hit']:.0f} / "
        f"{reads['miss']:.0f} / {reads['uncached']:.0f} | — |"
    )
    return 0 if p99 < 0.050 else 1


if __name__ == "__main__":
    sys.exit(main())
