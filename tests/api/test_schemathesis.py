"""Schemathesis over the whole API described at /openapi.json, in-process (WSGI).

A bounded, deterministic run (`derandomize=True`): no 5xx, every status, content type, header
and body as documented, no HTML outside `/docs`, no stack trace anywhere. The app runs with
rate limits out of the fuzzer's way (429 is documented and tested elsewhere) and with no
trusted hook network, so the hooks are reached with the Bearer secret like EMQX sends it.
"""

from __future__ import annotations

import pytest
import schemathesis
from conftest import MASTER_SECRET, MQTT_SECRET
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as openapi_checks

from iot_server import tokens
from iot_server.api.openapi import EXAMPLE_AGENT, EXAMPLE_MASTER
from iot_server.extensions import db
from iot_server.models import AGENT, MASTER, Device, Owner

pytestmark = pytest.mark.slow

#: Examples per operation: ~23 operations, about a minute for the run on SQLite.
MAX_EXAMPLES = 40


HOOKS = {
    "/emqx/authn",
    "/emqx/authz",
    "/mqtt/auth",
    "/mosquitto/user",
    "/mosquitto/superuser",
    "/mosquitto/acl",
}


@schemathesis.check
def no_html_or_stack_trace(ctx, response, case):
    """Only /docs is HTML; no answer carries a Python traceback."""
    content_type = response.headers.get("Content-Type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if "html" in content_type.lower() and case.operation.path != "/docs":
        raise AssertionError(f"HTML answer from {case.method} {case.path}")
    if "Traceback (most recent call last)" in response.text:
        raise AssertionError(f"stack trace in the answer of {case.method} {case.path}")


CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.ignored_auth,
    no_html_or_stack_trace,
]


@pytest.fixture
def app_config(app_config):
    """High rate limits, and hooks reachable only with the secret header."""
    return {
        **app_config,
        "RATELIMIT_AUTH": "1000000 per second",
        "RATELIMIT_DEFAULT": "1000000 per second",
        "HOOK_TRUSTED_NETWORKS": "192.0.2.0/24",
    }


@pytest.fixture
def api_schema(app, credentials):
    """The served document, bound to the app for in-process calls, with real credentials."""
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)

    class RealCredentials:
        """A real credential for the operation's security scheme, so cases get past the 403
        to the API itself (the `ignored_auth` check still probes without it)."""

        def get(self, case, context):
            """The credential of the operation's first security requirement, if any."""
            for requirement in case.operation.definition.raw.get("security", [])[:1]:
                for name in requirement:
                    return credentials[name]
            return None

        def set(self, case, data, context):
            """Send it as a Bearer token."""
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    loaded.auth.auth(refresh_interval=None, retry_on=[])(RealCredentials)
    return loaded


@pytest.fixture
def credentials(app, devices) -> dict:
    """A valid credential for each security scheme of the document."""
    master = devices.master()
    with app.app_context():
        # The document's example uuids: alice's master and its agent.
        owner_id = db.session.get(Device, master).owner_id
        db.session.add(Device(uuid=EXAMPLE_MASTER, kind=MASTER, owner_id=owner_id))
        db.session.flush()
        db.session.add(Device(uuid=EXAMPLE_AGENT, kind=AGENT, master_uuid=EXAMPLE_MASTER))
        db.session.commit()
        owner = db.session.execute(db.select(Owner).filter_by(username="alice")).scalar_one()
        owner_token = tokens.issue_owner_token(owner)
    return {
        "ownerToken": owner_token,
        "deviceToken": devices.token(master),
        "registrationSecret": MASTER_SECRET,
        "hookSecret": MQTT_SECRET,
    }


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_description(case):
    checks = CHECKS
    if case.operation.path in HOOKS:
        # A hook answers every body with a decision: fields of the wrong type or missing
        # are `deny` (200 for EMQX, which reads a 4xx as "no decision"), not a 4xx.
        checks = [check for check in CHECKS if check is not openapi_checks.negative_data_rejection]
    case.call_and_validate(checks=checks)
