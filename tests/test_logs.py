"""Logs: JSON lines in production format, a request id on every line, no secrets, and each
line written once under gunicorn."""

import io
import json
import logging
import re

import pytest
from conftest import MASTER_SECRET, new_uuid

from iot_server import logs


@pytest.fixture
def json_lines(app):
    """Capture the app's log output as JSON lines."""
    stream = io.StringIO()
    handler = logs.AppLogHandler("json")
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
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    sane = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert sane.headers["X-Request-ID"] == "abc-123"
    for insane in ("x" * 65, "x" * 20 + "<script>", "a b", "semi;colon"):
        echoed = client.get("/healthz", headers={"X-Request-ID": insane}).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), insane


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
    handler = logs.AppLogHandler("text")
    record = logging.LogRecord("iot_server.auth", logging.INFO, __file__, 1, "hello", None, None)
    handler.filter(record)
    assert "[auth]" in handler.format(record)


def test_the_app_adds_one_root_handler_however_often_it_is_built(app_config):
    from iot_server import create_app

    for _ in range(3):
        create_app(app_config)
    root = logging.getLogger()
    assert sum(isinstance(h, logs.AppLogHandler) for h in root.handlers) == 1
    assert logging.getLogger("iot_server").handlers == []


@pytest.mark.slow
def test_gunicorn_writes_each_app_line_once(start_gunicorn):
    """One request under gunicorn as production runs it: its app log line appears once."""
    import requests

    server = start_gunicorn(workers=1)
    uuid = new_uuid()
    response = requests.get(
        f"{server.url}/auth/devices/request?uuid={uuid}",
        headers={"Authorization": f"Bearer {MASTER_SECRET}", "X-Request-ID": "count-me-once"},
        timeout=10,
    )
    assert response.status_code == 401
    server.stop()
    stderr = server.stderr_path.read_text().splitlines()
    ours = [line for line in stderr if "count-me-once" in line]
    app_lines = [json.loads(line) for line in ours]
    assert [r["message"] for r in app_lines] == ["device created", "token refused: NOT_REGISTERED"]
    assert all(r["logger"] in ("devices", "auth") for r in app_lines)
    access = [line for line in server.stdout_path.read_text().splitlines() if uuid in line]
    assert len(access) == 1
