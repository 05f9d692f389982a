"""`python -m iot_server.pinger`: run the pinger with the app's config from the environment."""

from __future__ import annotations

import argparse
import sys

from .. import create_app
from .client import run_from_app


def main(argv: list[str] | None = None) -> int:
    """`python -m iot_server.pinger`: the app's config from the environment."""
    parser = argparse.ArgumentParser(description="The iot_server MQTT pinger.")
    parser.add_argument(
        "--stats-interval", type=float, default=60.0, help="seconds between stats log lines"
    )
    args = parser.parse_args(argv)
    return run_from_app(create_app(), stats_interval=args.stats_interval)


if __name__ == "__main__":
    sys.exit(main())
