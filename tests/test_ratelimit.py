"""Rate limits: one /auth/* bucket per client IP, a default bucket elsewhere, exemptions,
ProxyFix hops, shared Redis storage, and serving on when Redis is down."""

import logging
import uuid as uuidlib

import pytest
from conftest import MASTER_SECRET, free_port, new_uuid

from iot_server import create_app
from iot_server.extensions import limiter

HEADERS = {"Authorization": f"Bearer {MASTER_SECRET}"}


def register(client, ip="203.0.113.7", **headers):
    return client.get(
        f"/auth/devices/request?uuid={new_uuid()}",
        headers={**HEADERS, **headers},
        environ_base={"REMOTE_ADDR": ip},
    )


def test_sixth_quick_auth_request_is_rate_limited(client):
    statuses = [register(client).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    response = register(client)
    assert response.get_json() == {"c": "RATE_LIMITED"}
    assert int(response.headers["Retry-After"]) >= 1


def test_buckets_are_per_client_ip(client):
    for _ in range(5):
        register(client, ip="198.51.100.1")
    assert register(client, ip="198.51.100.1").status_code == 429
    assert register(client, ip="198.51.100.2").status_code == 401


def test_bad_requests_count_too(client):
    for _ in range(5):
        client.get("/auth/devices/request", environ_base={"REMOTE_ADDR": "198.51.100.9"})
    assert register(client, ip="198.51.100.9").status_code == 429


def test_spoofed_forwarded_for_changes_nothing_without_trusted_proxies(client):
    statuses = [
        register(client, ip="192.0.2.1", **{"X-Forwarded-For": f"10.0.0.{i}"}).status_code
        for i in range(6)
    ]
    assert statuses[-1] == 429


@pytest.fixture
def proxied_app(app_config):
    app = create_app({**app_config, "TRUSTED_PROXIES": 1})
    with app.app_context():
        limiter.reset()
    return app


def test_trusted_proxy_hop_gives_the_real_client_ip(proxied_app):
    client = proxied_app.test_client()
    for _ in range(5):
        register(client, ip="10.1.1.1", **{"X-Forwarded-For": "198.51.100.50"})
    assert (
        register(client, ip="10.1.1.1", **{"X-Forwarded-For": "198.51.100.50"}).status_code == 429
    )
    # Same proxy, another real client: its own bucket.
    assert (
        register(client, ip="10.1.1.1", **{"X-Forwarded-For": "198.51.100.51"}).status_code == 401
    )
    # Only the last hop is trusted: a client cannot prepend its way out.
    spoofed = {"X-Forwarded-For": "1.2.3.4, 198.51.100.50"}
    assert register(client, ip="10.1.1.1", **spoofed).status_code == 429


def test_default_limit_applies_to_other_routes(app_config, devices):
    app = create_app({**app_config, "RATELIMIT_DEFAULT": "3 per 30 seconds"})
    client = app.test_client()
    token = devices.token(devices.master())
    statuses = [
        client.get("/mqtt", headers={"Authorization": f"Bearer {token}"}).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


def test_default_limit_is_one_bucket_shared_by_every_route(app_config, devices):
    """/mqtt, /devices and /openapi.json draw on the same per-IP bucket; /auth does not."""
    app = create_app({**app_config, "RATELIMIT_DEFAULT": "3 per 30 seconds"})
    client = app.test_client()
    token = devices.token(devices.master())
    assert client.get("/mqtt", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/devices").status_code == 403  # no owner token: still counted
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/mqtt", headers={"Authorization": f"Bearer {token}"}).status_code == 429
    assert client.get("/devices").status_code == 429
    assert register(client).status_code == 401  # the /auth bucket is its own
    other = {"REMOTE_ADDR": "192.0.2.77"}
    assert client.get("/openapi.json", environ_base=other).status_code == 200


def test_health_endpoints_are_exempt(client):
    for _ in range(250):
        assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_redis_storage_is_shared_between_app_instances(app_config, redis_url):
    """Two processes' worth of apps on one Redis: the bucket is one."""
    config = {**app_config, "RATELIMIT_STORAGE_URI": redis_url}
    first, second = create_app(config), create_app(config)
    ip = f"198.18.{uuidlib.uuid4().int % 250}.{uuidlib.uuid4().int % 250}"
    with first.app_context():
        limiter.reset()
    try:
        statuses = [register(first.test_client(), ip=ip).status_code for _ in range(3)]
        statuses += [register(second.test_client(), ip=ip).status_code for _ in range(3)]
        assert statuses == [401] * 5 + [429]
    finally:
        with first.app_context():
            limiter.reset()


def test_unreachable_redis_keeps_serving_and_says_so(app_config, caplog):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app({**app_config, "RATELIMIT_STORAGE_URI": dead})
    # flask-limiter keeps "storage dead" on the Limiter, which every app of this process
    # shares: an earlier test's dead Redis would otherwise hide this app's warning.
    limiter._storage_dead = False
    client = app.test_client()
    with caplog.at_level(logging.WARNING):
        statuses = [register(client, ip="192.0.2.77").status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    assert any("rate limit storage" in r.getMessage().lower() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
