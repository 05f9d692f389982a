"""Every error path answers JSON `{"c": ...}`: never HTML, never a traceback."""

import pytest
from conftest import MASTER_SECRET, new_uuid
from flask import Flask

from iot_server import create_app
from iot_server.extensions import db


def assert_json_error(response, status, code):
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["c"] == code
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def test_unknown_route_is_json_404(client):
    assert_json_error(client.get("/nope"), 404, "NOT_FOUND")
    assert_json_error(client.get("/auth/devices/request/extra"), 404, "NOT_FOUND")


def test_wrong_method_is_json_405_with_allow(client):
    response = client.post("/auth/devices/request")
    assert_json_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["Allow"]
    assert_json_error(client.delete("/mqtt"), 405, "METHOD_NOT_ALLOWED")


def test_oversized_body_is_413(app, client):
    @app.post("/echo-for-test")
    def echo():
        from flask import request

        return {"c": "OK", "n": len(request.get_data())}

    response = client.post("/echo-for-test", data=b"x" * (64 * 1024 + 1))
    assert_json_error(response, 413, "TOO_LARGE")
    assert client.post("/echo-for-test", data=b"x" * 1000).status_code == 200


def test_unexpected_exception_is_json_500_without_trace(app, client, caplog):
    @app.get("/boom-for-test")
    def boom():
        raise RuntimeError("secret internals")

    body = assert_json_error(client.get("/boom-for-test"), 500, "ERROR")
    assert "secret internals" not in str(body)
    assert any("unhandled error" in record.message for record in caplog.records)


def test_garbage_query_strings_are_clear_4xx(client):
    for query in ("uuid=%ff%fe", "uuid=%", "uuid=a&uuid=b", "%%%%", "uuid=" + "%00" * 100):
        response = client.get(
            "/auth/devices/request?" + query, headers={"Authorization": f"Bearer {MASTER_SECRET}"}
        )
        assert response.status_code == 400, query
        assert response.get_json()["c"] == "BAD_REQUEST"


def test_database_outage_is_503_then_recovers_without_restart(proxied_postgres):
    """The app talks to PostgreSQL through a proxy we cut: 503 during, 200 after."""
    app, proxy = proxied_postgres
    client = app.test_client()
    headers = {"Authorization": f"Bearer {MASTER_SECRET}"}
    assert client.get("/readyz").status_code == 200
    assert (
        client.get(f"/auth/devices/request?uuid={new_uuid()}", headers=headers).status_code == 401
    )

    proxy.cut()
    assert_json_error(client.get("/readyz"), 503, "ERROR")
    response = client.get(
        f"/auth/devices/request?uuid={new_uuid()}",
        headers=headers,
        environ_base={"REMOTE_ADDR": "10.9.9.9"},
    )
    assert_json_error(response, 503, "ERROR")
    assert client.get("/healthz").status_code == 200

    proxy.start()
    assert client.get("/readyz").status_code == 200
    response = client.get(
        f"/auth/devices/request?uuid={new_uuid()}",
        headers=headers,
        environ_base={"REMOTE_ADDR": "10.9.9.8"},
    )
    assert response.status_code == 401


def test_create_app_refuses_equal_registration_secrets(database):
    with pytest.raises(RuntimeError, match="must differ"):
        create_app({"DEVICE_MASTER_SECRET_KEY": "same", "DEVICE_AGENT_SECRET_KEY": "same"})


def test_factory_returns_flask_app(app):
    assert isinstance(app, Flask)
    assert app.config["MAX_CONTENT_LENGTH"] == 64 * 1024


def test_a_restart_between_requests_costs_no_failed_read(proxied_postgres):
    """No pre-ping round trip: a pooled connection that died while idle (the server
    restarted) is found dead on use, and a read is run once more on a fresh one."""
    app, proxy = proxied_postgres
    client = app.test_client()
    headers = {"Authorization": f"Bearer {MASTER_SECRET}"}
    with app.app_context():
        assert not db.engine.pool._pre_ping  # the point of the exercise
    for restart in range(3):
        # Warm the pool, then drop every connection while nothing runs, as a restart does.
        assert client.get("/readyz").status_code == 200
        proxy.cut()
        proxy.start()
        response = client.get(
            f"/auth/devices/request?uuid={new_uuid()}",
            headers=headers,
            environ_base={"REMOTE_ADDR": f"10.9.8.{restart + 1}"},
        )
        assert response.status_code == 401, response.get_json()
        proxy.cut()
        proxy.start()
        assert client.get("/readyz").status_code == 200


def test_a_write_is_never_retried(proxied_postgres, devices):
    """Only GET and HEAD are read again: a POST that meets a dead connection answers 503."""
    app, proxy = proxied_postgres
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    proxy.cut()
    proxy.start()
    response = client.post(
        "/auth/users/login",
        json={"username": "nobody-here", "password": "x" * 12},
        environ_base={"REMOTE_ADDR": "10.9.7.1"},
    )
    assert_json_error(response, 503, "ERROR")
    assert client.get("/readyz").status_code == 200
