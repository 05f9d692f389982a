"""The EMQX REST client, against a local HTTP server answering like EMQX 5's API.

EMQX 5: `DELETE /api/v5/clients/{clientid}` with Basic auth (API key:secret) answers 204
when it kicked the client, 404 `{"code":"CLIENTID_NOT_FOUND",...}` when it is not connected.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest
from conftest import free_port

from iot_server.broker import emqx_api
from iot_server.extensions import db
from iot_server.models import Device

KEY, SECRET = "api-key", "api-secret"


class FakeEmqx:
    """Records every call; answers 204 for connected client ids, 404 otherwise."""

    def __init__(self):
        self.calls: list[dict] = []
        self.connected: set[str] = set()
        self.status_override: int | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_DELETE(self):  # noqa: N802 - http.server's naming
                fake.calls.append(
                    {
                        "method": "DELETE",
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                    }
                )
                prefix = "/api/v5/clients/"
                client_id = (
                    unquote(self.path[len(prefix) :]) if self.path.startswith(prefix) else None
                )
                expected = "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self._answer(
                        401,
                        {"code": "BAD_API_KEY_OR_SECRET", "message": "Check api_key/api_secret"},
                    )
                elif fake.status_override:
                    self._answer(
                        fake.status_override, {"code": "INTERNAL_ERROR", "message": "boom"}
                    )
                elif client_id in fake.connected:
                    fake.connected.discard(client_id)
                    self.send_response(204)
                    self.end_headers()
                else:
                    self._answer(
                        404, {"code": "CLIENTID_NOT_FOUND", "message": "Client ID not found"}
                    )

            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def emqx():
    """A fake EMQX API on a free port."""
    fake = FakeEmqx()
    yield fake
    fake.stop()


@pytest.fixture
def app_config(app_config, emqx):
    """Point the app at the fake EMQX."""
    return {
        **app_config,
        "EMQX_API_URL": emqx.url + "/",
        "EMQX_API_KEY": KEY,
        "EMQX_API_SECRET": SECRET,
    }


def test_disconnect_of_a_connected_client(app, emqx):
    emqx.connected.add("esp-1")
    with app.app_context():
        assert emqx_api.disconnect("esp-1") is True
    assert emqx.calls == [
        {
            "method": "DELETE",
            "path": "/api/v5/clients/esp-1",
            "authorization": "Basic " + base64.b64encode(b"api-key:api-secret").decode(),
        }
    ]


def test_client_id_is_quoted_into_one_path_segment(app, emqx):
    emqx.connected.add("a/b c?d#e")
    with app.app_context():
        assert emqx_api.disconnect("a/b c?d#e") is True
    assert emqx.calls[0]["path"] == "/api/v5/clients/a%2Fb%20c%3Fd%23e"


def test_not_connected_is_false_without_a_warning(app, emqx, caplog):
    with caplog.at_level(logging.WARNING, logger="iot_server.emqx_api"), app.app_context():
        assert emqx_api.disconnect("gone") is False
    assert len(emqx.calls) == 1
    assert not caplog.records


def test_server_error_is_logged_not_raised(app, emqx, caplog):
    emqx.status_override = 500
    with caplog.at_level(logging.WARNING, logger="iot_server.emqx_api"), app.app_context():
        assert emqx_api.disconnect("esp-1") is False
    assert "HTTP 500" in caplog.text
    assert SECRET not in caplog.text


def test_wrong_credentials_are_logged(app, emqx, caplog):
    app.config["EMQX_API_SECRET"] = "wrong"
    with caplog.at_level(logging.WARNING, logger="iot_server.emqx_api"), app.app_context():
        assert emqx_api.disconnect("esp-1") is False
    assert "HTTP 401" in caplog.text
    assert "wrong" not in caplog.text


def test_unreachable_api_is_logged_not_raised(app, caplog):
    app.config["EMQX_API_URL"] = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="iot_server.emqx_api"), app.app_context():
        assert emqx_api.disconnect("esp-1") is False
    assert "unreachable" in caplog.text


@pytest.mark.parametrize("missing", ["EMQX_API_URL", "EMQX_API_KEY", "EMQX_API_SECRET"])
def test_unconfigured_api_is_not_called(app, emqx, missing):
    app.config[missing] = None
    with app.app_context():
        assert emqx_api.is_configured() is False
        assert emqx_api.disconnect("esp-1") is False
    assert emqx.calls == []


# ---------------------------------------------------------------- through the owner API


def remember_session(app, uuid, client_id):
    """Record a client id as the broker hooks do when they authenticate a device."""
    with app.app_context():
        db.session.get(Device, uuid).mqtt_client_id = client_id
        db.session.commit()


def kicked(emqx) -> list[str]:
    """The client ids EMQX was asked to disconnect."""
    return [call["path"].rsplit("/", 1)[1] for call in emqx.calls]


def test_revoke_kicks_the_remembered_session(app, client, devices, emqx):
    master = devices.master()
    remember_session(app, master, "esp-master")
    emqx.connected.add("esp-master")
    assert (
        client.post(f"/devices/{master}/revoke", headers=devices.owner_headers()).status_code == 200
    )
    assert kicked(emqx) == ["esp-master"]
    assert "esp-master" not in emqx.connected
    assert devices.get(master).mqtt_client_id is None
    # Nothing remembered any more: a second revoke calls nobody.
    assert (
        client.post(f"/devices/{master}/revoke", headers=devices.owner_headers()).status_code == 200
    )
    assert kicked(emqx) == ["esp-master"]


def test_release_kicks_master_and_agents(app, client, devices, emqx):
    master = devices.master()
    agent = devices.agent(master=master)
    remember_session(app, master, "esp-master")
    remember_session(app, agent, "esp-agent")
    assert (
        client.delete(f"/devices/{master}/claim", headers=devices.owner_headers()).status_code
        == 200
    )
    assert sorted(kicked(emqx)) == ["esp-agent", "esp-master"]


def test_unlink_kicks_the_agent_and_refreshes_the_master(app, client, devices, emqx):
    master = devices.master()
    agent = devices.agent(master=master)
    remember_session(app, master, "esp-master")
    remember_session(app, agent, "esp-agent")
    url = f"/devices/{master}/agents/{agent}"
    assert client.delete(url, headers=devices.owner_headers()).status_code == 200
    # The master reconnects so EMQX takes a new ACL snapshot without the agent's topic.
    assert sorted(kicked(emqx)) == ["esp-agent", "esp-master"]
    assert devices.get(master).mqtt_client_id == "esp-master"


def test_link_refreshes_the_master_session(app, client, devices, emqx):
    master = devices.master()
    remember_session(app, master, "esp-master")
    url = f"/devices/{master}/agents/{devices.agent()}"
    assert client.put(url, headers=devices.owner_headers()).status_code == 200
    assert kicked(emqx) == ["esp-master"]


def test_emqx_down_does_not_fail_the_revoke(app, client, devices):
    app.config["EMQX_API_URL"] = f"http://127.0.0.1:{free_port()}"
    master = devices.master()
    remember_session(app, master, "esp-master")
    response = client.post(f"/devices/{master}/revoke", headers=devices.owner_headers())
    assert response.status_code == 200
    assert devices.get(master).token_version == 2
