"""Blueprint `emqx_hooks`: EMQX 5.8's HTTP authentication and authorization hooks.

EMQX renders every body field as a string, sends `""` for an undefined placeholder and an
unknown one literally (BROKERS.md), and reads a 200 JSON `result`; a 5xx would mean
"ignore", so every failure here, the database's included, answers 200 `deny`.
`/mqtt/auth` keeps the seed's authn URL, with the secret in the body's `token`.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

from flask import Blueprint, current_app, jsonify, request

from .. import metrics, policy
from ..errors import error_response
from ..extensions import exempt_from_rate_limits
from . import callers, decisions
from .bodies import read_body
from .decisions import ALLOW, DENY, IGNORE, Decision

AUTHN_PATH = "/emqx/authn"
AUTHZ_PATH = "/emqx/authz"
SEED_AUTHN_PATH = "/mqtt/auth"
#: The body our emqx/ config sends each hook (tests/test_deploy.py compares them).
AUTHN_BODY_FIELDS = ("clientid", "username", "password", "peerhost")
AUTHZ_BODY_FIELDS = ("clientid", "username", "topic", "action", "qos", "retain")

#: EMQX's `${action}` values; anything else is denied.
EMQX_ACTIONS = {"publish": (policy.PUBLISH,), "subscribe": (policy.SUBSCRIBE,)}

bp = Blueprint("emqx_hooks", __name__)
exempt_from_rate_limits(bp)
log = logging.getLogger("iot_server.hooks.emqx")


@bp.post(AUTHN_PATH)
def authn():
    """Decide a CONNECT: allow (with client_attrs, expire_at, acl), deny or ignore."""
    if not callers.request_allowed(request):
        return forbidden("emqx_authn")
    return authn_answer("emqx_authn", read_body())


@bp.post(SEED_AUTHN_PATH)
def seed_authn():
    """The seed's authn URL: the secret comes in the body's `token` instead of a header."""
    body = read_body()
    token = body.get("token") if body else None
    if token is not None:
        if not callers.secret_matches(token):
            callers.refused(request.remote_addr, "wrong body token")
            return forbidden("mqtt_auth")
    elif not callers.request_allowed(request):
        return forbidden("mqtt_auth")
    return authn_answer("mqtt_auth", body)


@bp.post(AUTHZ_PATH)
def authz():
    """Decide a publish or subscribe: allow, deny, or ignore for usernames not ours."""
    if not callers.request_allowed(request):
        return forbidden("emqx_authz")
    body = read_body()
    if body is None:
        return malformed("emqx_authz")
    fields = [body.get(name) for name in ("username", "clientid", "topic", "action")]
    if not all(isinstance(value, str) for value in fields):
        return answer("emqx_authz", Decision(DENY, "malformed body"))
    username, clientid, topic, action = fields
    actions = EMQX_ACTIONS.get(action)
    if actions is None:
        return answer("emqx_authz", Decision(DENY, "unknown action"))
    return answer("emqx_authz", decisions.authorize(username, clientid, actions, topic))


def authn_answer(hook: str, body: dict | None):
    """Shape an authentication decision as EMQX 5.8 reads it."""
    if body is None:
        return malformed(hook)
    fields = [body.get(name) for name in ("username", "password", "clientid")]
    if not all(isinstance(value, str) for value in fields):
        return answer(hook, Decision(DENY, "malformed body"))
    decision = decisions.authenticate(*fields)
    if not decision.allowed:
        return answer(hook, decision)
    metrics.count_hook_decision(hook, ALLOW)
    head, tail = allow_answer(decision.identity)
    # Integer seconds: milliseconds or a past value would reject the connection.
    expire_at = "" if decision.expire_at is None else f',"expire_at":{int(decision.expire_at)}'
    # content_type rather than mimetype: the same header, without werkzeug's charset logic.
    return current_app.response_class(head + expire_at + tail, content_type="application/json")


@lru_cache(maxsize=20_000)  # as many as device states a process caches
def allow_answer(identity: policy.Identity) -> tuple[str, str]:
    """EMQX's allow answer for `identity`, as JSON text before and after its `expire_at`.

    The same identity (a device, its kind and agents) always gets the same attributes and
    ACL rules, so they are rendered once per process rather than at every CONNECT.
    """
    if identity.role == policy.SERVICE_ROLE:
        attrs = {"role": policy.SERVICE_ROLE}
    else:
        # EMQX accepts only string keys and string values here (BROKERS.md).
        attrs = {"role": policy.DEVICE_ROLE, "kind": identity.kind}
    head = {"result": ALLOW, "is_superuser": False, "client_attrs": attrs}
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    acl = json.dumps(policy.emqx_acl(identity), **compact)
    return json.dumps(head, **compact)[:-1], f',"acl":{acl}}}'


def answer(hook: str, decision: Decision):
    """`{"result": allow|deny|ignore}` with 200, the only status EMQX reads a result from."""
    result = decision.result if decision.result in (ALLOW, DENY, IGNORE) else DENY
    metrics.count_hook_decision(hook, result)
    if result != ALLOW:
        log.debug("%s: %s (%s)", hook, result, decision.reason)
    return jsonify(result=result)


def malformed(hook: str):
    """A body that is neither JSON nor a form: 400, which EMQX also treats as no allow."""
    metrics.count_hook_decision(hook, "malformed")
    return jsonify(result=DENY, error="malformed body"), 400


def forbidden(hook: str):
    """No decision for a caller without the secret (EMQX then asks no one else)."""
    metrics.count_hook_decision(hook, "forbidden")  # logged, summarised, by `callers`
    return error_response(403, "hook caller not trusted")
