"""Logs: JSON lines in production format, a request id on every line, no secrets."""

import io
import json
import logging

import pytest
from conftest import MASTER_SECRET, new_uuid

from iot_server import logs


@pytest.fixture
def json_lines(app):
    """Capture the app's log output as JSON lines."""
    stream = io.StringIO()
    handler = logs.build_handler("json")
    handler.setStream(stream)
    logger = logging.getLogger("iot_server")
    logger.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_request_lines_are_json_with_request_id_and_device(client, devices, json_lines):
    uuid = devices.master()
    response = client.get(
        f"/auth/devices/request?uuid={uuid}",
        headers={"Authorization": f"Bearer {MASTER_SECRET}", "X-Request-ID": "abc-123"},
    )
    token = response.get_json()["t"]
    records = json_lines()
    issued = [r for r in records if r["message"] == "token issued"]
    assert issued and issued[0]["request_id"] == "abc-123"
    assert issued[0]["logger"] == "auth"
    assert issued[0]["device"] == uuid
    assert {"time", "level"} <= issued[0].keys()
    text = json.dumps(records)
    assert MASTER_SECRET not in text
    assert token not in text and token.split(".")[2] not in text


def test_request_id_is_generated_when_absent_or_insane(client):
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    insane = client.get("/healthz", headers={"X-Request-ID": "x" * 500 + "<script>"})
    assert insane.headers["X-Request-ID"] != "x" * 500


def test_refusals_are_logged_without_the_secret(client, json_lines):
    client.get(
        f"/auth/devices/request?uuid={new_uuid()}", headers={"Authorization": "Bearer wrong-secret"}
    )
    records = json_lines()
    assert any(r["message"] == "token refused: FORBIDDEN" for r in records)
    assert "wrong-secret" not in json.dumps(records)


def test_debug_flag_sets_debug_level(app_config):
    from iot_server import create_app

    create_app({**app_config, "DEBUG_LOGS": True})
    assert logging.getLogger("iot_server").level == logging.DEBUG
    create_app({**app_config, "DEBUG_LOGS": False})
    assert logging.getLogger("iot_server").level == logging.INFO


def test_text_format_for_development():
    handler = logs.build_handler("text")
    record = logging.LogRecord("iot_server.auth", logging.INFO, __file__, 1, "hello", None, None)
    handler.filter(record)
    assert "[auth]" in handler.format(record)
