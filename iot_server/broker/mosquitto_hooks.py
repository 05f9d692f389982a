"""Blueprint `mosquitto_hooks`: the mosquitto-go-auth HTTP contract (Mosquitto, amqtt).

Grant is 200 `{"ok":true,"error":""}` and deny 403 `{"ok":false,"error":"…"}`, so go-auth's
`status` and `json` modes and amqtt's `json` mode all read it right. Neither broker can send
headers, so they are trusted by address (HOOK_TRUSTED_NETWORKS). Bodies come as JSON or as a
form (go-auth `params_mode = form`); amqtt says `client_id` where go-auth says `clientid`.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request

from .. import metrics, policy
from ..extensions import exempt_from_rate_limits
from . import callers, decisions
from .bodies import read_body
from .decisions import ALLOW, DENY, Decision

#: go-auth / amqtt `acc` → the policy actions that must all be allowed. go-auth never sends
#: 3, but mosquitto's own ACL model defines it as read and write.
ACC_ACTIONS = {
    1: (policy.RECEIVE,),
    2: (policy.PUBLISH,),
    3: (policy.PUBLISH, policy.RECEIVE),
    4: (policy.SUBSCRIBE,),
}

bp = Blueprint("mosquitto_hooks", __name__)
exempt_from_rate_limits(bp)
log = logging.getLogger("iot_server.hooks.mosquitto")


@bp.before_request
def check_caller():
    """Refuse (403, no decision) a caller without the secret from an untrusted address."""
    if not callers.request_allowed(request):
        metrics.count_hook_decision("mosquitto", "forbidden")  # logged, summarised
        return answer("mosquitto", Decision(DENY, "hook caller not trusted"))
    return None


@bp.post("/user")
def user():
    """Decide a CONNECT: a device with its current token, or the service account."""
    body = read_body()
    if body is None:
        return malformed("mosquitto_user")
    username, password = body.get("username"), body.get("password")
    clientid = client_id(body)
    if not all(isinstance(value, str) for value in (username, password, clientid)):
        return answer("mosquitto_user", Decision(DENY, "malformed body"))
    return answer("mosquitto_user", decisions.authenticate(username, password, clientid))


@bp.post("/superuser")
def superuser():
    """Nobody is a superuser: every topic goes through the ACL."""
    return answer("mosquitto_superuser", Decision(DENY, "no superusers"))


@bp.post("/acl")
def acl():
    """Decide a subscribe (4), publish (2) or delivery (1) on a topic."""
    body = read_body()
    if body is None:
        return malformed("mosquitto_acl")
    username, topic, clientid = body.get("username"), body.get("topic"), client_id(body)
    actions = ACC_ACTIONS.get(parse_acc(body.get("acc")))
    if actions is None:
        return answer("mosquitto_acl", Decision(DENY, "unknown acc"))
    if not all(isinstance(value, str) for value in (username, topic, clientid)):
        return answer("mosquitto_acl", Decision(DENY, "malformed body"))
    return answer("mosquitto_acl", decisions.authorize(username, clientid, actions, topic))


def client_id(body: dict) -> object:
    """go-auth's `clientid` or amqtt's `client_id`."""
    value = body.get("clientid")
    return value if value is not None else body.get("client_id")


def parse_acc(value: object) -> int | None:
    """`acc` as an int: JSON numbers, or digit strings from a form body."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # ASCII digits only: str.isdigit() accepts "²", which int() then refuses (a 500).
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 3:
        return int(value)
    return None


def answer(hook: str, decision: Decision):
    """Grant 200 `{"ok":true}`, anything else 403 `{"ok":false,"error":…}`."""
    if hook != "mosquitto":
        metrics.count_hook_decision(hook, ALLOW if decision.allowed else DENY)
    if decision.allowed:
        return jsonify(ok=True, error="")
    log.debug("%s: deny (%s)", hook, decision.reason)
    return jsonify(ok=False, error=decision.reason or "denied"), 403


def malformed(hook: str):
    """A body that is neither JSON nor a form."""
    metrics.count_hook_decision(hook, "malformed")
    return jsonify(ok=False, error="malformed body"), 400
