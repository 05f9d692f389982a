"""The OpenAPI document: a valid OpenAPI 3.1 description of exactly the app's routes,
whose responses match what the code answers, served at /openapi.json and rendered at /docs."""

from __future__ import annotations

import re

from conftest import AGENT_SECRET, MASTER_SECRET, new_uuid
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from iot_server.api.openapi import DOCUMENT, METHODS

#: The routes SPEC.md names, so the document fails this test if it drifts from the contract
#: even while a blueprint is missing from the app.
SPEC_ROUTES = {
    ("GET", "/auth/devices/request"),
    ("POST", "/auth/users/register"),
    ("POST", "/auth/users/login"),
    ("POST", "/auth/users/logout"),
    ("POST", "/auth/users/password"),
    ("GET", "/mqtt"),
    ("GET", "/devices"),
    ("GET", "/devices/{uuid}"),
    ("PATCH", "/devices/{uuid}"),
    ("POST", "/devices/{uuid}/claim"),
    ("DELETE", "/devices/{uuid}/claim"),
    ("PUT", "/devices/{master}/agents/{agent}"),
    ("DELETE", "/devices/{master}/agents/{agent}"),
    ("POST", "/devices/{uuid}/revoke"),
    ("POST", "/emqx/authn"),
    ("POST", "/emqx/authz"),
    ("POST", "/mqtt/auth"),
    ("POST", "/mosquitto/user"),
    ("POST", "/mosquitto/superuser"),
    ("POST", "/mosquitto/acl"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
}
PASSWORD = "a long enough password"
HOOKS = {path for _, path in SPEC_ROUTES if path.startswith(("/emqx", "/mosquitto", "/mqtt/"))}
HEALTH = {"/healthz", "/readyz", "/metrics"}


def documented_routes(doc: dict) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in METHODS
        if method in item
    }


def app_routes(app) -> set[tuple[str, str]]:
    """(METHOD, path) of every rule in the app's URL map, in OpenAPI's `{param}` form,
    but for the owner console's HTML pages (and `/`, which redirects there)."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("console.") or rule.endpoint == "front_page":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((method, path))
    return found


def resolve(node, doc: dict = DOCUMENT):
    """The node with every local `$ref` replaced by its target (the document has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target, doc)
        return {key: resolve(value, doc) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, doc) for item in node]
    return node


def assert_documented(response, method: str, path: str) -> None:
    """The response's status, content type, headers and body are what the document says."""
    operation = DOCUMENT["paths"][path][method.lower()]
    described = operation["responses"].get(str(response.status_code))
    assert described is not None, f"{method} {path}: {response.status_code} is undocumented"
    described = resolve(described)
    content = described.get("content", {})
    mimetype = response.mimetype
    assert mimetype in content, f"{method} {path}: {mimetype} not in {list(content)}"
    for header in described.get("headers", {}):
        assert header in response.headers, f"{method} {path}: missing {header}"
    if mimetype == "application/json":
        errors = list(
            Draft202012Validator(content[mimetype]["schema"]).iter_errors(response.get_json())
        )
        assert not errors, f"{method} {path} {response.status_code}: {errors[0].message}"


# ---------------------------------------------------------------- the document itself


def test_document_is_valid_openapi_31():
    OpenAPIV31SpecValidator(DOCUMENT).validate()


def test_every_schema_is_valid_json_schema():
    for schema in DOCUMENT["components"]["schemas"].values():
        Draft202012Validator.check_schema(resolve(schema))


def test_document_lists_the_spec_routes():
    documented = documented_routes(DOCUMENT)
    assert documented - SPEC_ROUTES == set(), "documented but not in SPEC"
    assert SPEC_ROUTES - documented == set(), "in SPEC but undocumented"


def test_document_lists_exactly_the_apps_routes(app):
    documented, served = documented_routes(DOCUMENT), app_routes(app)
    assert served - documented == set(), "served but undocumented"
    assert documented - served == set(), "documented but not served (a blueprint missing?)"


def test_operation_ids_are_unique():
    ids = [
        item[method]["operationId"]
        for item in DOCUMENT["paths"].values()
        for method in METHODS
        if method in item
    ]
    assert len(ids) == len(set(ids))


def test_rate_limited_routes_document_429_and_all_document_405():
    for method, path in documented_routes(DOCUMENT):
        responses = DOCUMENT["paths"][path][method.lower()]["responses"]
        assert "405" in responses, (method, path)
        exempt = path in HOOKS or path in HEALTH
        assert ("429" in responses) != exempt, (method, path)
        if "requestBody" in DOCUMENT["paths"][path][method.lower()]:
            assert "413" in responses, (method, path)


def test_served_document_is_the_document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == DOCUMENT


def test_docs_page_lists_every_operation_offline(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    for method, path in documented_routes(DOCUMENT):
        assert f'<span class="m">{method}</span> <code>{path}</code>' in page
    # Works offline: no scripts, no external stylesheets, images or fonts.
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


def test_docs_page_renders_markdown_and_schemas_as_tables(client):
    """Descriptions' Markdown is HTML (no literal backticks), and schemas are tables of
    fields whose nested objects expand, not raw JSON."""
    page = client.get("/docs").get_data(as_text=True)
    text = re.sub(r"<[^>]+>", "", page)
    assert "`" not in text
    assert "with a result code <code>c</code>" in page
    assert '"type":' not in page and "&#34;type&#34;" not in page
    # The device list: a field table, `devices` an array of Device, expandable to its fields.
    listing = page[page.index('id="listDevices"') :]
    listing = listing[: listing.index("</section>")]
    assert "<summary>DeviceList</summary><table>" in listing
    assert '<code>devices</code> <span class="req">required</span>' in listing
    assert "<code>array of Device</code>" in listing
    assert "<details><summary>Device</summary><table>" in listing
    assert "<code>last_seen_at</code>" in listing
    # Constraints in words; control characters of a pattern escaped, not raw.
    assert "12–256 characters" in page
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", page)


# ---------------------------------------------------------------- the code answers as documented


def test_owner_api_answers_as_documented(client, devices):
    h = devices.owner_headers()
    master, agent = new_uuid(), new_uuid()
    cases = [
        (
            "POST",
            "/auth/users/register",
            "/auth/users/register",
            {"json": {"username": "bob", "password": PASSWORD}},
        ),
        (
            "POST",
            "/auth/users/register",
            "/auth/users/register",
            {"json": {"username": "bob", "password": PASSWORD}},
        ),
        ("POST", "/auth/users/register", "/auth/users/register", {"json": {"nope": 1}}),
        (
            "POST",
            "/auth/users/login",
            "/auth/users/login",
            {"json": {"username": "bob", "password": PASSWORD}},
        ),
        (
            "POST",
            "/auth/users/login",
            "/auth/users/login",
            {"json": {"username": "bob", "password": PASSWORD + "!"}},
        ),
        ("POST", "/auth/users/login", "/auth/users/login", {"data": "[]"}),
        ("POST", f"/devices/{master}/claim", "/devices/{uuid}/claim", {"headers": h}),
        ("POST", f"/devices/{master}/claim", "/devices/{uuid}/claim", {"headers": h}),
        ("POST", f"/devices/{agent}/claim", "/devices/{uuid}/claim", {"headers": {}}),
        (
            "PUT",
            f"/devices/{master}/agents/{agent}",
            "/devices/{master}/agents/{agent}",
            {"headers": h},
        ),
        (
            "PUT",
            f"/devices/{master}/agents/{agent}",
            "/devices/{master}/agents/{agent}",
            {"headers": h},
        ),
        (
            "PUT",
            f"/devices/{agent}/agents/{master}",
            "/devices/{master}/agents/{agent}",
            {"headers": h},
        ),
        ("GET", "/devices", "/devices", {"headers": h}),
        ("GET", f"/devices/{agent}", "/devices/{uuid}", {"headers": h}),
        ("GET", f"/devices/{new_uuid()}", "/devices/{uuid}", {"headers": h}),
        ("GET", "/devices/nope", "/devices/{uuid}", {"headers": h}),
        (
            "PATCH",
            f"/devices/{master}",
            "/devices/{uuid}",
            {"headers": h, "json": {"name": "hall"}},
        ),
        (
            "PATCH",
            f"/devices/{master}",
            "/devices/{uuid}",
            {"headers": h, "json": {"name": "x" * 70_000}},
        ),
        ("POST", f"/devices/{master}/revoke", "/devices/{uuid}/revoke", {"headers": h}),
        (
            "DELETE",
            f"/devices/{master}/agents/{agent}",
            "/devices/{master}/agents/{agent}",
            {"headers": h},
        ),
        ("DELETE", f"/devices/{master}/claim", "/devices/{uuid}/claim", {"headers": h}),
        ("DELETE", f"/devices/{master}/claim", "/devices/{uuid}/claim", {"headers": h}),
        ("GET", "/devices?limit=1", "/devices", {"headers": h}),
        ("GET", "/devices?limit=0", "/devices", {"headers": h}),
        ("GET", "/devices?cursor=nope", "/devices", {"headers": h}),
        (
            "POST",
            "/auth/users/password",
            "/auth/users/password",
            {"headers": h, "json": {"password": "wrong", "new_password": PASSWORD}},
        ),
        (
            "POST",
            "/auth/users/password",
            "/auth/users/password",
            {"headers": h, "json": {"password": "wrong", "new_password": "short"}},
        ),
        ("POST", "/auth/users/logout", "/auth/users/logout", {"headers": h}),
        ("POST", "/auth/users/logout", "/auth/users/logout", {"headers": h}),
    ]
    seen = set()
    for i, (method, url, template, kwargs) in enumerate(cases):
        # An address per case: the /auth/* limit would otherwise answer the later ones.
        response = client.open(
            url, method=method, environ_base={"REMOTE_ADDR": f"10.3.0.{i + 1}"}, **kwargs
        )
        assert_documented(response, method, template)
        seen.add((method, template, response.status_code))
    # The cases above really cover these answers.
    for expected in [
        ("POST", "/auth/users/register", 201),
        ("POST", "/auth/users/register", 409),
        ("POST", "/auth/users/register", 400),
        ("POST", "/auth/users/login", 200),
        ("POST", "/auth/users/login", 403),
        ("POST", "/devices/{uuid}/claim", 201),
        ("POST", "/devices/{uuid}/claim", 200),
        ("POST", "/devices/{uuid}/claim", 403),
        ("PUT", "/devices/{master}/agents/{agent}", 201),
        ("PUT", "/devices/{master}/agents/{agent}", 200),
        ("PUT", "/devices/{master}/agents/{agent}", 400),
        ("GET", "/devices/{uuid}", 404),
        ("GET", "/devices/{uuid}", 400),
        ("PATCH", "/devices/{uuid}", 413),
        ("DELETE", "/devices/{uuid}/claim", 404),
        ("GET", "/devices", 200),
        ("GET", "/devices", 400),
        ("POST", "/auth/users/password", 403),
        ("POST", "/auth/users/password", 400),
        ("POST", "/auth/users/logout", 200),
        ("POST", "/auth/users/logout", 403),
    ]:
        assert expected in seen, expected


def test_device_api_answers_as_documented(client, devices):
    master = devices.master()
    unclaimed = devices.master(registered=False)
    ip = {"REMOTE_ADDR": "10.3.0.2"}

    def register(uuid, secret):
        return client.get(
            f"/auth/devices/request?uuid={uuid}",
            headers={"Authorization": f"Bearer {secret}"},
            environ_base=ip,
        )

    ok = register(master, MASTER_SECRET)
    assert ok.status_code == 200
    for response in (
        ok,
        register(unclaimed, MASTER_SECRET),
        register(master, AGENT_SECRET),
        register("x", MASTER_SECRET),
    ):
        assert_documented(response, "GET", "/auth/devices/request")
    assert register(master, MASTER_SECRET).status_code == 200
    limited = register(master, MASTER_SECRET)
    assert limited.status_code == 429
    assert_documented(limited, "GET", "/auth/devices/request")
    token = ok.get_json()["t"]
    for headers in ({"Authorization": f"Bearer {token}"}, {}):
        assert_documented(client.get("/mqtt", headers=headers), "GET", "/mqtt")


def test_health_and_documentation_answer_as_documented(client):
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        response = client.get(path)
        assert response.status_code == 200
        assert_documented(response, "GET", path)
    # 405 comes from routing, for a method the path has no operation for.
    not_allowed = client.post("/healthz")
    assert not_allowed.status_code == 405
    described = resolve(DOCUMENT["paths"]["/healthz"]["get"]["responses"]["405"])
    schema = described["content"]["application/json"]["schema"]
    assert not list(Draft202012Validator(schema).iter_errors(not_allowed.get_json()))
    assert not_allowed.headers["Allow"]
