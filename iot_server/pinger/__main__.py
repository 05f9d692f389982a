"""`python -m iot_server.pinger`: run the pinger with the app's config from the environment.

`python -m iot_server.pinger --check-health` checks a running pinger's heartbeat instead
(the container's health probe): one line, exit 0 when healthy, 1 when not.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """`python -m iot_server.pinger`: the app's config from the environment."""
    parser = argparse.ArgumentParser(description="The iot_server MQTT pinger.")
    parser.add_argument(
        "--stats-interval", type=float, default=60.0, help="seconds between stats log lines"
    )
    parser.add_argument(
        "--check-health",
        action="store_true",
        help="check the running pinger's heartbeat (PINGER_HEALTH_FILE) and exit 0 or 1",
    )
    args = parser.parse_args(argv)
    if args.check_health:
        return check_health()

    # Imported here: the health check, run every few seconds, needs neither.
    from .. import create_app
    from .client import run_from_app

    return run_from_app(create_app(), stats_interval=args.stats_interval)


def check_health() -> int:
    """Print the heartbeat's verdict in one line; 0 healthy, 1 unhealthy (never another code)."""
    from ..config import config_for_env
    from .health import check_heartbeat

    try:
        config = config_for_env()
        healthy, line = check_heartbeat(config.PINGER_HEALTH_FILE, config.PINGER_HEALTH_MAX_AGE)
    except Exception as exc:  # noqa: BLE001 - a probe answers, whatever went wrong
        healthy, line = False, f"unhealthy: {type(exc).__name__}: {exc}"
    print(line)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
