"""What the pinger reads and writes on the wire: broker URLs, topics and payloads."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..identifiers import parse_uuid

log = logging.getLogger("iot_server.pinger")

# Every message the server publishes carries "src":"server": MQTT 3.1.1 has no "no local",
# so the pinger hears its own messages (and other replicas') and must recognise them.
SERVER_PING = b'{"c":"PING","src":"server"}'
SERVER_PONG = b'{"c":"PONG","src":"server"}'
MAX_PAYLOAD = 4096


@dataclass(frozen=True)
class BrokerAddress:
    """Where the pinger connects: host, port and whether to use TLS."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://host[:1883]` or `mqtts://host[:8883]`; anything else is a ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"MQTT_BROKER_URL must be mqtt://host:port or mqtts://host:port: {url!r}")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def ping_subscription(shared_group: str | None) -> str:
    """`device/+/ping`, or its shared form so replicas split the load (EMQX `$share`)."""
    topic = "device/+/ping"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


#: What the ESP8266 library sends, byte for byte: known without parsing JSON (the pinger
#: reads one of these for nearly every message).
FIRMWARE_PAYLOADS = {b'{"c":"PING"}': "PING", b'{"c":"PONG"}': "PONG"}


def parse_device_message(topic: str, payload: bytes) -> tuple[str, str] | None:
    """`(uuid, "PING"|"PONG")` for a device's message; None (with a debug log) for
    anything else: the server's own messages, garbage, wrong topics."""
    if len(payload) > MAX_PAYLOAD:
        return ignore(topic, f"payload of {len(payload)} bytes")
    levels = topic.split("/")
    if len(levels) != 3 or levels[0] != "device" or levels[2] != "ping":
        return ignore(topic, "not a ping topic")
    uuid = parse_uuid(levels[1])
    if uuid is None:
        return ignore(topic, "topic level is not a uuid")
    command = FIRMWARE_PAYLOADS.get(payload)
    if command is not None:
        return uuid, command
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return ignore(topic, "not JSON")
    if not isinstance(body, dict):
        return ignore(topic, "not a JSON object")
    if body.get("src") == "server":
        return None
    command = body.get("c")
    if command not in ("PING", "PONG"):
        return ignore(topic, "no PING or PONG command")
    return uuid, command


def ignore(topic: str, reason: str) -> None:
    """Log why a message is ignored (debug only: devices can send garbage at any rate)."""
    log.debug("ignored message on %.100s: %s", topic, reason)
    return None
