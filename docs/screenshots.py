"""Screenshots of the owner console for the docs: the devices page and a device page, at
desktop and at phone width, saved as docs/console-*.png.

    python docs/screenshots.py [--out docs]

It serves the app on a free port over a throwaway SQLite database seeded with one owner's
devices (some online, some not), signs in with Debian's chromium through Playwright (as the
browser tests do) and saves four PNGs. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import uuid as uuidlib
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "console")]

from console_kit import PASSWORD, launched_chromium, sign_in  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from iot_server import create_app, owners  # noqa: E402
from iot_server.extensions import db  # noqa: E402
from iot_server.models import AGENT, MASTER, Device, DeviceSession, utcnow  # noqa: E402

#: (name, seconds since last seen or None, agents as (name, seconds)).
FLEET = [
    ("Greenhouse", 4, [("Soil probe, bed 1", 2), ("Soil probe, bed 2", 3 * 3600)]),
    ("Weather station", 11, [("Anemometer", 9)]),
    ("Garage door", 2 * 86400, []),
    (None, None, []),
]
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def seed(app) -> str:
    """The owner and their devices; returns the Greenhouse's uuid."""
    now = utcnow()
    first = None
    with app.app_context():
        db.create_all()
        owner = owners.create("alice", PASSWORD)
        for offset, (name, seen, agents) in enumerate(FLEET):
            master = Device(
                uuid=str(uuidlib.uuid4()),
                kind=MASTER,
                name=name,
                owner_id=owner.id,
                created_at=now - timedelta(days=30 - offset),
                last_seen_at=now - timedelta(seconds=seen) if seen is not None else None,
            )
            db.session.add(master)
            if seen is not None:
                db.session.flush()
                client_id = f"esp8266-{offset:04x}"
                db.session.add(
                    DeviceSession(device_uuid=master.uuid, client_id=client_id, token_version=1)
                )
            for index, (agent_name, agent_seen) in enumerate(agents):
                db.session.add(
                    Device(
                        uuid=str(uuidlib.uuid4()),
                        kind=AGENT,
                        name=agent_name,
                        master_uuid=master.uuid,
                        created_at=now - timedelta(days=29 - offset, minutes=-index),
                        last_seen_at=now - timedelta(seconds=agent_seen),
                    )
                )
            first = first or master.uuid
        db.session.commit()
    return first


def main(argv: list[str] | None = None) -> None:
    """Serve, sign in, save the four screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp}/console.sqlite"})
        greenhouse = seed(app)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            with launched_chromium() as browser:
                for size, (width, height) in SIZES.items():
                    context = browser.new_context(
                        base_url=base, viewport={"width": width, "height": height}
                    )
                    page = context.new_page()
                    sign_in(page)
                    page.wait_for_selector("[data-live]:not([hidden])")  # presence arrived
                    shots = {"devices": "/console", "device": f"/console/devices/{greenhouse}"}
                    for name, path in shots.items():
                        page.goto(path)
                        page.wait_for_timeout(300)
                        target = args.out / f"console-{name}-{size}.png"
                        page.screenshot(path=str(target), full_page=True)
                        print(target.relative_to(ROOT) if target.is_relative_to(ROOT) else target)
                    context.close()
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
