"""Health, readiness and Prometheus metrics."""

from conftest import MASTER_SECRET, new_uuid


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"c": "OK"}


def test_readyz_with_database(client):
    assert client.get("/readyz").get_json() == {"c": "OK"}


def test_readyz_without_database(app_config):
    from iot_server import create_app

    app = create_app({**app_config, "SQLALCHEMY_DATABASE_URI": "sqlite:////nonexistent/dir/x.db"})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["c"] == "ERROR"


def test_metrics_count_requests_and_registrations(client):
    client.get(
        f"/auth/devices/request?uuid={new_uuid()}",
        headers={"Authorization": f"Bearer {MASTER_SECRET}"},
    )
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'iot_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in text
    assert 'iot_registrations_total{result="NOT_REGISTERED"}' in text
    assert "iot_http_request_duration_seconds_bucket" in text
    assert "iot_hook_decisions_total" in text
