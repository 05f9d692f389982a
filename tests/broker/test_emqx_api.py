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


def kicked(emqx) -> list[str]:
    """The client ids EMQX was asked to disconnect."""
    return [call["path"].rsplit("/", 1)[1] for call in emqx.calls]


def test_revoke_kicks_the_remembered_session(app, client, devices, emqx):
    master = devices.master()
    devices.remember_session(master, "esp-master")
    emqx.connected.add("esp-master")
    assert (
        client.post(f"/devices/{master}/revoke", headers=devices.owner_headers()).status_code == 200
    )
    assert kicked(emqx) == ["esp-master"]
    assert "esp-master" not in emqx.connected
    assert devices.sessions(master) == {}
    # Nothing remembered any more: a second revoke calls nobody.
    assert (
        client.post(f"/devices/{master}/revoke", headers=devices.owner_headers()).status_code == 200
    )
    assert kicked(emqx) == ["esp-master"]


def test_revoke_kicks_every_session_of_the_device(app, client, devices, emqx):
    """Several sessions of one device (firmware, a second connection, a debugger): each
    client id is kicked; a row left at an older token version is forgotten too."""
    master = devices.master()
    for client_id in ("esp-master", "esp-master-2", "mosquitto-sub"):
        devices.remember_session(master, client_id)
        emqx.connected.add(client_id)
    response = client.post(f"/devices/{master}/revoke", headers=devices.owner_headers())
    assert response.status_code == 200
    assert sorted(kicked(emqx)) == ["esp-master", "esp-master-2", "mosquitto-sub"]
    assert emqx.connected == set()
    assert devices.sessions(master) == {}


@pytest.mark.parametrize("cut", ["disable", "release", "unlink"])
def test_every_cut_kicks_every_session(app, client, runner, devices, emqx, cut):
    """Disable, release and unlink end every session of the devices they revoke."""
    master = devices.master()
    agent = devices.agent(master=master)
    target = master if cut in ("disable", "release") else agent
    for client_id in ("one", "two"):
        devices.remember_session(target, f"{client_id}-{target[:8]}")
    headers = devices.owner_headers()
    if cut == "disable":
        assert runner.invoke(args=["devices", "disable", target]).exit_code == 0
    elif cut == "release":
        assert client.delete(f"/devices/{master}/claim", headers=headers).status_code == 200
    else:
        url = f"/devices/{master}/agents/{agent}"
        assert client.delete(url, headers=headers).status_code == 200
    assert {f"one-{target[:8]}", f"two-{target[:8]}"} <= set(kicked(emqx))
    assert devices.sessions(target) == {}


def test_emqx_down_costs_one_timeout_not_one_per_session(app, client, devices, monkeypatch, caplog):
    """An unreachable API is tried once per cut, not once per remembered session."""
    app.config["EMQX_API_URL"] = f"http://127.0.0.1:{free_port()}"
    master = devices.master()
    for n in range(5):
        devices.remember_session(master, f"esp-{n}")
    attempts = []
    real = emqx_api.urllib.request.urlopen

    def counting(*args, **kwargs):
        attempts.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(emqx_api.urllib.request, "urlopen", counting)
    with caplog.at_level(logging.WARNING, logger="iot_server.emqx_api"):
        response = client.post(f"/devices/{master}/revoke", headers=devices.owner_headers())
    assert response.status_code == 200
    assert len(attempts) == 1
    assert "5 sessions" in caplog.text


def test_release_kicks_master_and_agents(app, client, devices, emqx):
    master = devices.master()
    agent = devices.agent(master=master)
    devices.remember_session(master, "esp-master")
    devices.remember_session(agent, "esp-agent")
    assert (
        client.delete(f"/devices/{master}/claim", headers=devices.owner_headers()).status_code
        == 200
    )
    assert sorted(kicked(emqx)) == ["esp-agent", "esp-master"]


def test_unlink_kicks_the_agent_and_refreshes_the_master(app, client, devices, emqx):
    master = devices.master()
    agent = devices.agent(master=master)
    devices.remember_session(master, "esp-master")
    devices.remember_session(agent, "esp-agent")
    url = f"/devices/{master}/agents/{agent}"
    assert client.delete(url, headers=devices.owner_headers()).status_code == 200
    # The master reconnects so EMQX takes a new ACL snapshot without the agent's topic.
    assert sorted(kicked(emqx)) == ["esp-agent", "esp-master"]
    assert devices.sessions(master) == {"esp-master": 1}


def test_link_refreshes_the_master_session(app, client, devices, emqx):
    master = devices.master()
    devices.remember_session(master, "esp-master")
    url = f"/devices/{master}/agents/{devices.agent()}"
    assert client.put(url, headers=devices.owner_headers()).status_code == 200
    assert kicked(emqx) == ["esp-master"]


def test_emqx_down_does_not_fail_the_revoke(app, client, devices):
    app.config["EMQX_API_URL"] = f"http://127.0.0.1:{free_port()}"
    master = devices.master()
    devices.remember_session(master, "esp-master")
    response = client.post(f"/devices/{master}/revoke", headers=devices.owner_headers())
    assert response.status_code == 200
    assert devices.get(master).token_version == 2
