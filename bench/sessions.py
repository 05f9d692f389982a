"""What remembering several sessions per device costs a login, in process, on PostgreSQL.

    python bench/sessions.py [--logins 2000]

It creates (or empties) the PostgreSQL database `iot_bench_sessions` on postgres@127.0.0.1
(override with BENCH_DATABASE_URL), migrates it, seeds 200 claimed masters with 2 agents
each, and times `broker.decisions.authenticate()` (the whole login decision: cached JWT, the
one query for the device, its sessions and its agents, and any write) for:

- a remembered client id, with 1 and with 16 sessions remembered (no write);
- a new client id at every login, with fewer than 16 remembered (the upsert alone, in
  autocommit) and with 16 (the upsert and the prune to 16, in one transaction);

and then the storage alone, interleaved: this code's `device_sessions` table against the
design not taken, a bounded JSON column (`sessions` on a scratch copy of `devices`): read
the device with its sessions, and remember a new client id (for JSON: lock the row, rewrite
the document). It prints mean, p50 and p99 microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid as uuidlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/iot_bench_sessions"


def timed(calls: int, action) -> list[float]:
    """Microseconds of each of `calls` runs of `action(n)`."""
    spent = []
    for n in range(calls):
        started = time.perf_counter()
        action(n)
        spent.append((time.perf_counter() - started) * 1e6)
    return spent


def row(name: str, spent: list[float]) -> str:
    """One table row: mean, p50, p99 in microseconds."""
    ordered = sorted(spent)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"| {name} | {statistics.fmean(spent):.0f} | {statistics.median(spent):.0f} | {p99:.0f} |"
    )


def main() -> None:
    """Seed, time each case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=2000, help="logins timed per case")
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE)

    from flask_migrate import upgrade
    from sqlalchemy import create_engine, text

    from iot_server import create_app, tokens
    from iot_server.broker import decisions, device_state
    from iot_server.config import database_url
    from iot_server.extensions import db
    from iot_server.models import AGENT, MASTER, SESSIONS_PER_DEVICE, Device, Owner

    url = database_url(url)
    server = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = url.rsplit("/", 1)[1]
    with server.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "AUTH_NEGATIVE_TTL": 0})
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        owner = Owner(username="bench", password_hash="x")
        db.session.add(owner)
        db.session.flush()
        masters = []
        for _ in range(200):
            master = Device(uuid=str(uuidlib.uuid4()), kind=MASTER, owner_id=owner.id)
            db.session.add(master)
            db.session.flush()
            for _ in range(2):
                db.session.add(
                    Device(uuid=str(uuidlib.uuid4()), kind=AGENT, master_uuid=master.uuid)
                )
            masters.append(master)
        db.session.commit()
        logins = [(f"device_{m.uuid}", tokens.issue_device_token(m)) for m in masters]

        def login(index: int, clientid: str) -> None:
            username, token = logins[index % len(logins)]
            assert decisions.authenticate(username, token, clientid).allowed

        # Warm up: every token verified once (the JWT cache), one session each.
        for index in range(len(logins)):
            login(index, "esp")
        results = [
            row("remembered client id, 1 session", timed(args.logins, lambda n: login(n, "esp")))
        ]
        # At most 10 new client ids per device here: no prune (fewer than 16 remembered).
        results.append(
            row(
                "new client id, fewer than 16 remembered (upsert)",
                timed(min(args.logins, 10 * len(logins)), lambda n: login(n, f"few-{n}")),
            )
        )
        for index in range(len(logins)):
            for extra in range(SESSIONS_PER_DEVICE):
                login(index, f"debug-{extra}")
        last = f"debug-{SESSIONS_PER_DEVICE - 1}"
        results.append(
            row(
                f"remembered client id, {SESSIONS_PER_DEVICE} sessions",
                timed(args.logins, lambda n: login(n, last)),
            )
        )
        results.append(
            row(
                f"new client id, {SESSIONS_PER_DEVICE} remembered (upsert + prune)",
                timed(args.logins, lambda n: login(n, f"new-{n}")),
            )
        )

        # The storage alone, both designs, interleaved so that both see the same load:
        # the table (this code) and the design not taken, a bounded JSON document on the
        # device row. A correct JSON write must lock the row (SELECT … FOR UPDATE) and
        # rewrite the document, or two sessions logging in at once drop each other.
        with db.engine.begin() as connection:
            connection.execute(text("CREATE TABLE devices_json AS SELECT * FROM devices"))
            connection.execute(text("ALTER TABLE devices_json ADD PRIMARY KEY (uuid)"))
            connection.execute(text("CREATE INDEX ON devices_json (master_uuid)"))
            connection.execute(text("ALTER TABLE devices_json ADD COLUMN sessions jsonb"))
            document = {
                f"debug-{n}": [1, "2026-11-28T10:00:00+00:00"] for n in range(SESSIONS_PER_DEVICE)
            }
            connection.execute(
                text("UPDATE devices_json SET sessions = :d"), {"d": json.dumps(document)}
            )
        json_read = text(
            "SELECT uuid, kind, token_version, enabled, owner_id, master_uuid, sessions"
            " FROM devices_json WHERE uuid = :u OR master_uuid = :u"
        )
        json_lock = text(
            "SELECT sessions FROM devices_json WHERE uuid = :u AND token_version = :v FOR UPDATE"
        )
        json_write = text("UPDATE devices_json SET sessions = :d WHERE uuid = :u")
        uuids = [m.uuid for m in masters]

        def json_read_once(n: int) -> None:
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(json_read, {"u": uuids[n % len(uuids)]}).all()

        def json_write_once(n: int) -> None:
            uuid = uuids[n % len(uuids)]
            with db.engine.begin() as conn:
                sessions = dict(conn.execute(json_lock, {"u": uuid, "v": 1}).scalar_one())
                sessions.pop(min(sessions, key=lambda k: sessions[k][1]))
                sessions[f"json-{n}"] = [1, "2026-11-28T10:00:01+00:00"]
                conn.execute(json_write, {"u": uuid, "d": json.dumps(sessions)})

        operations = {
            "table: read device, 16 sessions, agents (load_device_state)": lambda n: (
                device_state.load_device_state(uuids[n % len(uuids)])
            ),
            "JSON: read device with its document, agents": json_read_once,
            "table: remember a new client id, prune to 16 (record_session)": lambda n: (
                device_state.record_session(uuids[n % len(uuids)], f"table-{n}", 1, prune=True)
            ),
            "JSON: remember a new client id (lock, rewrite the document)": json_write_once,
        }
        spent: dict[str, list[float]] = {name: [] for name in operations}
        for n in range(args.logins):
            names = list(operations)
            for name in names[n % 4 :] + names[: n % 4]:  # rotate the order every round
                spent[name] += timed(1, lambda _, op=operations[name], n=n: op(n))
        results.append("| *storage alone, interleaved* | | | |")
        results += [row(name, values) for name, values in spent.items()]
        db.engine.dispose()

    print(f"{args.logins} logins per case, PostgreSQL at {url.rsplit('@', 1)[-1]}")
    print("| case | mean µs | p50 µs | p99 µs |")
    print("|---|---:|---:|---:|")
    print("\n".join(results))


if __name__ == "__main__":
    main()
