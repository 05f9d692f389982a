"""The embedded amqtt broker of the development stack and the end-to-end tests.

amqtt's HTTP plugins speak the mosquitto-go-auth contract (SPEC.md): every CONNECT is
checked at `/mosquitto/user` and every subscribe, publish and delivery at `/mosquitto/acl`.
They cannot send headers, so the API must trust the broker's address
(`HOOK_TRUSTED_NETWORKS`, loopback by default).

Run it alone with `python -m iot_server.dev.broker --port 1884 --api-port 5000`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

log = logging.getLogger("iot_server.broker")


def broker_config(host: str, port: int, api_host: str, api_port: int) -> dict:
    """amqtt 0.12 config: one TCP listener, the HTTP auth and ACL plugins, nothing else.

    The plugin options are dataclasses checked strictly: `request_method` must be the enum
    (BROKERS.md, amqtt), so the config is built in Python rather than YAML.
    """
    from amqtt.contrib.http import RequestMethod, ResponseMode

    http = {
        "host": api_host,
        "port": api_port,
        "request_method": RequestMethod.POST,
        "response_mode": ResponseMode.JSON,
        "timeout": 5,
    }
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.contrib.http.UserAuthHttpPlugin": {**http, "user_uri": "/mosquitto/user"},
            "amqtt.contrib.http.TopicAuthHttpPlugin": {**http, "topic_uri": "/mosquitto/acl"},
        },
    }


async def serve(host: str, port: int, api_host: str, api_port: int, stop: asyncio.Event) -> None:
    """Run the broker until `stop` is set. The Broker must be created inside the loop."""
    from amqtt.broker import Broker

    broker = Broker(broker_config(host, port, api_host, api_port))
    await broker.start()
    log.info("amqtt broker listening on %s:%s", host, port)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: run until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--api-host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s [broker] %(message)s"
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(args.host, args.port, args.api_host, args.api_port, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
