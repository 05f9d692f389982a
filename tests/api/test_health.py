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


def test_metrics_labels_come_from_fixed_sets(client):
    """The finding: the `method` label was the raw request method, so 400 invented methods
    made 400 permanent series. Unknown methods and paths are counted as `other`."""
    for i in range(20):
        client.open("/healthz", method=f"X{i}METHOD")
        client.get(f"/no/such/path/{i}")
    text = client.get("/metrics").get_data(as_text=True)
    series = [line for line in text.splitlines() if line.startswith("iot_http_requests_total{")]
    assert not any("METHOD" in line or "/no/such" in line for line in series), series
    assert 'iot_http_requests_total{endpoint="other",method="other",status="405"} ' in text
    assert 'iot_http_requests_total{endpoint="other",method="GET",status="404"}' in text
