"""Blueprint `openapi`: the OpenAPI 3.1 description of the whole HTTP API, and a page to read it.

`DOCUMENT` below is the one source: `/openapi.json` serves it and `/docs` renders it with
`templates/docs.html`, plain HTML with no scripts or external assets, so it works offline:
descriptions' Markdown is rendered on the server (markdown-it-py), and schemas are tables
whose nested objects expand (`<details>`).
Patterns, limits, request bodies and result codes come from the modules that enforce them
(`identifiers`, `errors`, the blueprints' field specs), so the description cannot drift.
`tests/test_openapi.py` keeps it equal to the app's URL map, and the schemathesis run checks
the answers against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from flask import Blueprint, jsonify, render_template
from markdown_it import MarkdownIt
from markupsafe import Markup

from .. import devices, identifiers
from ..errors import CODES
from ..models import DEVICE_NAME_MAX
from . import auth, owner_devices
from .validation import object_schema

bp = Blueprint("openapi", __name__, template_folder="templates")

UUID_PATTERN = f"^{identifiers.UUID_PATTERN}$"
LOWER_UUID = {"type": "string", "pattern": f"^{identifiers.STORED_UUID_PATTERN}$"}
#: `GET /devices` cursors: microseconds, a dot, a uuid (`owner_devices.cursor_after`).
CURSOR_PATTERN = f"^[0-9]{{1,17}}\\.{identifiers.UUID_PATTERN}$"


def with_descriptions(schema: dict, **descriptions: str) -> dict:
    """`schema` with a description added to each named property."""
    for name, text in descriptions.items():
        schema["properties"][name]["description"] = text
    return schema


def ref(name: str) -> dict:
    """A `$ref` to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict) -> dict:
    """`content` for an application/json body."""
    return {"application/json": {"schema": schema}}


def ok(description: str, schema_name: str) -> dict:
    """A success response with a JSON body."""
    return {"description": description, "content": json_content(ref(schema_name))}


def error(name: str) -> dict:
    """A `$ref` to a shared error response."""
    return {"$ref": f"#/components/responses/{name}"}


def errors(*statuses: int) -> dict:
    """Shared error responses by status (405 is on every path: any other method gets it)."""
    names = {
        400: "BadRequest",
        401: "NotRegistered",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        413: "TooLarge",
        429: "RateLimited",
        503: "Unavailable",
    }
    return {str(status): error(names[status]) for status in (*statuses, 405)}


def path_uuid(name: str, description: str, example: str) -> dict:
    """A device uuid path parameter."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description + " Any letter case; malformed → 400.",
        "schema": {"type": "string", "pattern": UUID_PATTERN},
        "example": example,
    }


def body(schema_name: str, description: str = "") -> dict:
    """A required JSON request body."""
    return {"required": True, "description": description, "content": json_content(ref(schema_name))}


OWNER = [{"ownerToken": []}]
HOOK = [{"hookSecret": []}, {}]
# Statuses every owner route can answer besides its own.
OWNER_ERRORS = (403, 429, 503)


def _result_error(code: str, description: str, headers: dict | None = None) -> dict:
    """A shared error response: `{"c": code, "error"?: string}`."""
    schema = {
        "type": "object",
        "required": ["c"],
        "additionalProperties": False,
        "properties": {"c": {"const": code}, "error": {"type": "string"}},
    }
    response = {"description": description, "content": json_content(schema)}
    if headers:
        response["headers"] = headers
    return response


def hook_body(schema_name: str) -> dict:
    """A hook's request body: JSON (EMQX, go-auth, amqtt) or a form (go-auth `form` mode)."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": ref(schema_name)},
            "application/x-www-form-urlencoded": {"schema": ref(schema_name)},
        },
    }


def _emqx_hook(summary: str, description: str, request: str, answer: str) -> dict:
    """An EMQX hook operation: 200 with a decision, 403 for a caller that is not trusted."""
    return {
        "tags": ["broker hooks (EMQX)"],
        "summary": summary,
        "description": description
        + " Every failure, an unreachable database included, is 200 `deny`: EMQX reads a "
        "5xx as `ignore`. A body with fields of the wrong type is `deny` too.",
        "security": HOOK,
        "requestBody": hook_body(request),
        "responses": {
            "200": ok("The decision.", answer),
            "400": {
                "description": "A body that is neither JSON nor a form.",
                "content": json_content(ref("EmqxMalformed")),
            },
            "403": _result_error(
                "FORBIDDEN",
                "The caller sent a wrong secret, or none from outside HOOK_TRUSTED_NETWORKS: "
                "no decision.",
            ),
            **errors(413),
        },
    }


def _goauth_hook(summary: str, request: str) -> dict:
    """A mosquitto-go-auth hook operation: 200 grants, 403 denies, both `{"ok","error"}`."""
    return {
        "tags": ["broker hooks (mosquitto-go-auth, amqtt)"],
        "summary": summary,
        "security": HOOK,
        "requestBody": hook_body(request),
        "responses": {
            "200": ok("Granted.", "GoAuthAnswer"),
            "400": ok("A body that is neither JSON nor a form.", "GoAuthAnswer"),
            "403": ok(
                "Denied; also for a body with fields of the wrong type, a caller with a wrong "
                "secret or none from outside HOOK_TRUSTED_NETWORKS, and an unreachable database.",
                "GoAuthAnswer",
            ),
            **errors(413),
        },
    }


#: Example uuids (tests/test_schemathesis.py gives them to its owner, so examples reach 2xx).
EXAMPLE_MASTER = "0b5e8f3c-6d1a-4c2e-9f70-3a8d2b1c4e5f"
EXAMPLE_AGENT = "7c2d9e4f-1b3a-4d5c-8e6f-9a0b1c2d3e4f"
_DEVICE_PATH = path_uuid("uuid", "The device uuid.", EXAMPLE_MASTER)
_MASTER_PATH = path_uuid("master", "The master's uuid.", EXAMPLE_MASTER)
_AGENT_PATH = path_uuid("agent", "The agent's uuid.", EXAMPLE_AGENT)

DOCUMENT: dict = {
    "openapi": "3.1.0",
    "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
    "info": {
        "title": "iot_server",
        "version": "1.0.0",
        "summary": "Registers IoT devices, hands them tokens and answers their MQTT broker.",
        "description": (
            "Every answer of the device, owner and health APIs is JSON with a result code "
            "`c` and maybe an `error` string. Broker hooks answer in their broker's format; "
            "`/metrics` in Prometheus text. A path the server does not know answers 404 "
            "`NOT_FOUND`; another method on a known path answers 405 `METHOD_NOT_ALLOWED` "
            "with `Allow`; a body over 64 KB answers 413 `TOO_LARGE`; a database outage "
            "answers 503 `ERROR`. Rate limits: `/auth/*` share one bucket per client IP "
            "(an IPv6 client's /64) (`RATELIMIT_AUTH`, default 5 per 5 seconds), and failed "
            "logins one per username (`RATELIMIT_LOGIN_FAILURES`, default 10 per 10 "
            "minutes); every other route but the hooks "
            "and health shares a second bucket per client IP (`RATELIMIT_DEFAULT`, default 200 "
            "per 30 seconds); over the limit "
            "is 429 `RATE_LIMITED` with `Retry-After`."
        ),
    },
    "tags": [
        {"name": "device", "description": "Called by device firmware (frozen contract)."},
        {"name": "owner accounts"},
        {"name": "owner devices"},
        {"name": "broker hooks (EMQX)"},
        {"name": "broker hooks (mosquitto-go-auth, amqtt)"},
        {"name": "health"},
        {"name": "documentation"},
    ],
    "paths": {
        "/auth/devices/request": {
            "get": {
                "tags": ["device"],
                "operationId": "requestDeviceToken",
                "summary": "A device token for a registered device",
                "description": (
                    "The registration secret is checked first (a bad secret is 403 whatever "
                    "the uuid), then the uuid. The secret decides the kind of an unknown "
                    "device, which is created."
                ),
                "security": [{"registrationSecret": []}],
                "parameters": [
                    {
                        "name": "uuid",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": UUID_PATTERN},
                    }
                ],
                "responses": {
                    "200": ok("The device is registered: its token.", "Token"),
                    **errors(400, 401, 403, 429, 503),
                },
            }
        },
        "/auth/users/register": {
            "post": {
                "tags": ["owner accounts"],
                "operationId": "registerOwner",
                "summary": "Create an owner account",
                "requestBody": body("Registration"),
                "responses": {
                    "201": ok("Created.", "Ok"),
                    **errors(400, 409, 413, 429, 503),
                },
            }
        },
        "/auth/users/login": {
            "post": {
                "tags": ["owner accounts"],
                "operationId": "loginOwner",
                "summary": "An owner token for an owner's credentials",
                "description": "Wrong credentials are 403, whether or not the user exists.",
                "requestBody": body("Login"),
                "responses": {
                    "200": ok("The owner token.", "Token"),
                    **errors(400, 403, 413, 429, 503),
                },
            }
        },
        "/auth/users/logout": {
            "post": {
                "tags": ["owner accounts"],
                "operationId": "logoutOwner",
                "summary": "End the presented owner token, and every other one of the owner",
                "description": (
                    "Owner tokens carry the owner's token version; logging out bumps it, so "
                    "every token issued so far stops working at once (log out everywhere)."
                ),
                "security": OWNER,
                "responses": {
                    "200": ok("Logged out.", "Ok"),
                    **errors(*OWNER_ERRORS),
                },
            }
        },
        "/auth/users/password": {
            "post": {
                "tags": ["owner accounts"],
                "operationId": "changeOwnerPassword",
                "summary": "Change the owner's password",
                "description": (
                    "The current password is checked (wrong: 403). Every earlier token ends; "
                    "the answer carries a new one."
                ),
                "security": OWNER,
                "requestBody": body("PasswordChange"),
                "responses": {
                    "200": ok("Changed: a new owner token.", "Token"),
                    **errors(400, 413, *OWNER_ERRORS),
                },
            }
        },
        "/mqtt": {
            "get": {
                "tags": ["device"],
                "operationId": "brokerAddress",
                "summary": "Where the MQTT broker is",
                "security": [{"deviceToken": []}],
                "responses": {
                    "200": ok("The broker address (`host:port`).", "BrokerAddress"),
                    "403": {
                        "description": "Missing, invalid, expired or revoked token, or a "
                        "device no longer registered.",
                        "content": json_content(ref("Result")),
                    },
                    **errors(429, 503),
                },
            }
        },
        "/devices": {
            "get": {
                "tags": ["owner devices"],
                "operationId": "listDevices",
                "summary": "The owner's masters and their agents, oldest first, a page at a time",
                "description": (
                    "Follow `next` (null on the last page) as `?cursor=` for the next page."
                ),
                "security": OWNER,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Entries per page.",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": owner_devices.PAGE_MAX,
                            "default": owner_devices.PAGE_DEFAULT,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "The previous page's `next`.",
                        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                    },
                ],
                "responses": {
                    "200": ok("Each device an entry.", "DeviceList"),
                    **errors(400, *OWNER_ERRORS),
                },
            }
        },
        "/devices/{uuid}": {
            "parameters": [_DEVICE_PATH],
            "get": {
                "tags": ["owner devices"],
                "operationId": "showDevice",
                "summary": "One of the owner's devices",
                "security": OWNER,
                "responses": {
                    "200": ok("The device.", "DeviceAnswer"),
                    **errors(400, 404, *OWNER_ERRORS),
                },
            },
            "patch": {
                "tags": ["owner devices"],
                "operationId": "renameDevice",
                "summary": "Rename a device (null clears the name)",
                "security": OWNER,
                "requestBody": body("Rename"),
                "responses": {
                    "200": ok("The renamed device.", "DeviceAnswer"),
                    **errors(400, 404, 413, *OWNER_ERRORS),
                },
            },
        },
        "/devices/{uuid}/claim": {
            "parameters": [_DEVICE_PATH],
            "post": {
                "tags": ["owner devices"],
                "operationId": "claimDevice",
                "summary": "Claim a master",
                "description": (
                    "An agent uuid is 400; a master claimed by another owner is 409 (the one "
                    "place another owner's device shows), and so is a claim beyond "
                    f"{devices.MAX_MASTERS_PER_OWNER:,} masters. Of two owners claiming one "
                    "uuid at once, exactly one wins."
                ),
                "security": OWNER,
                "responses": {
                    "200": ok("Claimed an existing master, or already held it.", "DeviceAnswer"),
                    "201": ok("Created the master and claimed it.", "DeviceAnswer"),
                    **errors(400, 409, *OWNER_ERRORS),
                },
            },
            "delete": {
                "tags": ["owner devices"],
                "operationId": "releaseDevice",
                "summary": "Release a master: its agents are unlinked, and it and they revoked",
                "security": OWNER,
                "responses": {
                    "200": ok("Released.", "Ok"),
                    **errors(400, 404, *OWNER_ERRORS),
                },
            },
        },
        "/devices/{master}/agents/{agent}": {
            "parameters": [_MASTER_PATH, _AGENT_PATH],
            "put": {
                "tags": ["owner devices"],
                "operationId": "linkAgent",
                "summary": "Link an agent to the owner's master (an unknown agent is created)",
                "description": (
                    "An agent linked to another master is 409, and so is a master's "
                    f"{devices.MAX_AGENTS_PER_MASTER + 1}th agent; a master in the agent "
                    "place, or the reverse, is 400."
                ),
                "security": OWNER,
                "responses": {
                    "200": ok("Linked (or already linked): the agent.", "DeviceAnswer"),
                    "201": ok("Created the agent and linked it.", "DeviceAnswer"),
                    **errors(400, 404, 409, *OWNER_ERRORS),
                },
            },
            "delete": {
                "tags": ["owner devices"],
                "operationId": "unlinkAgent",
                "summary": "Unlink an agent from its master and revoke it",
                "security": OWNER,
                "responses": {
                    "200": ok("Unlinked.", "Ok"),
                    **errors(400, 404, *OWNER_ERRORS),
                },
            },
        },
        "/devices/{uuid}/revoke": {
            "parameters": [_DEVICE_PATH],
            "post": {
                "tags": ["owner devices"],
                "operationId": "revokeDevice",
                "summary": "Invalidate the device's tokens and cut its live MQTT sessions",
                "security": OWNER,
                "responses": {
                    "200": ok("Revoked.", "DeviceAnswer"),
                    **errors(400, 404, *OWNER_ERRORS),
                },
            },
        },
        "/emqx/authn": {
            "post": {
                "operationId": "emqxAuthn",
                **_emqx_hook(
                    "EMQX 5 HTTP authentication",
                    "`ignore` for a username that is neither `device_<uuid>` nor the service "
                    "account; the allow answer carries the client's ACL.",
                    "EmqxAuthnRequest",
                    "EmqxAuthnAnswer",
                ),
            }
        },
        "/emqx/authz": {
            "post": {
                "operationId": "emqxAuthz",
                **_emqx_hook(
                    "EMQX 5 HTTP authorization",
                    "The topic rules, for EMQX before 5.8 or when the authn ACL is not used.",
                    "EmqxAuthzRequest",
                    "EmqxDecision",
                ),
            }
        },
        "/mqtt/auth": {
            "post": {
                "operationId": "legacyEmqxAuthn",
                **_emqx_hook(
                    "The seed's EMQX authentication URL",
                    "Kept for existing EMQX configs: the body's `token` (MQTT_SECRET_KEY) "
                    "stands in for the header. Same answers as `/emqx/authn`.",
                    "LegacyAuthRequest",
                    "EmqxAuthnAnswer",
                ),
            }
        },
        "/mosquitto/user": {
            "post": {
                "operationId": "goAuthUser",
                **_goauth_hook("go-auth user check (every CONNECT)", "GoAuthUser"),
            }
        },
        "/mosquitto/superuser": {
            "post": {
                "operationId": "goAuthSuperuser",
                **_goauth_hook("go-auth superuser check: always denied", "GoAuthSuperuser"),
            }
        },
        "/mosquitto/acl": {
            "post": {
                "operationId": "goAuthAcl",
                **_goauth_hook(
                    "go-auth ACL check (every subscribe, publish and delivery)", "GoAuthAcl"
                ),
            }
        },
        "/healthz": {
            "get": {
                "tags": ["health"],
                "operationId": "healthz",
                "summary": "The process is up (touches nothing else)",
                "responses": {"200": ok("Up.", "Ok"), **errors()},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["health"],
                "operationId": "readyz",
                "summary": "Ready when the database answers",
                "responses": {"200": ok("Ready.", "Ok"), **errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "tags": ["health"],
                "operationId": "metrics",
                "summary": "Prometheus metrics, summed over all workers",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **errors(),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["documentation"],
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": json_content({"type": "object"}),
                    },
                    **errors(429),
                },
            }
        },
        "/docs": {
            "get": {
                "tags": ["documentation"],
                "operationId": "docs",
                "summary": "This document as a readable HTML page",
                "responses": {
                    "200": {
                        "description": "A self-contained HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **errors(429),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "registrationSecret": {
                "type": "http",
                "scheme": "bearer",
                "description": "DEVICE_MASTER_SECRET_KEY or DEVICE_AGENT_SECRET_KEY; it "
                "decides the kind of a new device.",
            },
            "deviceToken": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A device token from `/auth/devices/request` (role `device`).",
            },
            "ownerToken": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An owner token from `/auth/users/login` (role `owner`).",
            },
            "hookSecret": {
                "type": "http",
                "scheme": "bearer",
                "description": "MQTT_SECRET_KEY. Callers from HOOK_TRUSTED_NETWORKS may send "
                "no Authorization header instead (amqtt and go-auth cannot send headers).",
            },
        },
        "responses": {
            "BadRequest": _result_error(
                "BAD_REQUEST",
                "Malformed input: the body is not a JSON object, has unknown fields (named "
                "in `error`), wrong types or lengths, or a uuid is malformed.",
            ),
            "NotRegistered": _result_error(
                "NOT_REGISTERED", "Known, but not yet claimed (master) or linked (agent)."
            ),
            "Forbidden": _result_error("FORBIDDEN", "Missing, wrong or expired credentials."),
            "NotFound": _result_error(
                "NOT_FOUND", "No such device among the owner's (another owner's device too)."
            ),
            "MethodNotAllowed": _result_error(
                "METHOD_NOT_ALLOWED",
                "Any other method on this path; `Allow` lists the right ones.",
                {"Allow": {"schema": {"type": "string"}}},
            ),
            "Conflict": _result_error("CONFLICT", "Taken by someone else."),
            "TooLarge": _result_error("TOO_LARGE", "The body is over 64 KB."),
            "RateLimited": _result_error(
                "RATE_LIMITED",
                "Over the rate limit.",
                {
                    "Retry-After": {
                        "description": "Seconds to wait.",
                        "schema": {"type": "string"},
                    }
                },
            ),
            "Unavailable": _result_error("ERROR", "The database is unreachable."),
        },
        "schemas": {
            "Result": {
                "type": "object",
                "required": ["c"],
                "properties": {"c": {"enum": list(CODES)}, "error": {"type": "string"}},
            },
            "Ok": {
                "type": "object",
                "required": ["c"],
                "additionalProperties": False,
                "properties": {"c": {"const": "OK"}},
            },
            "Token": {
                "type": "object",
                "required": ["c", "t"],
                "additionalProperties": False,
                "properties": {"c": {"const": "OK"}, "t": {"type": "string"}},
            },
            "BrokerAddress": {
                "type": "object",
                "required": ["c", "ip"],
                "additionalProperties": False,
                "properties": {"c": {"const": "OK"}, "ip": {"type": "string"}},
            },
            "Registration": with_descriptions(
                object_schema(auth.REGISTER_FIELDS),
                username="Case-insensitive; stored lowercase.",
            ),
            "Login": object_schema(auth.LOGIN_FIELDS),
            "PasswordChange": with_descriptions(
                object_schema(auth.PASSWORD_FIELDS),
                password="The current password.",
                new_password="Not one repeated character, not a common password.",
            ),
            "Rename": object_schema(owner_devices.RENAME_FIELDS),
            "Device": {
                "type": "object",
                "required": ["uuid", "kind", "name", "online", "last_seen_at", "master", "agents"],
                "additionalProperties": False,
                "properties": {
                    "uuid": LOWER_UUID,
                    "kind": {"enum": ["master", "agent"]},
                    "name": {"type": ["string", "null"], "maxLength": DEVICE_NAME_MAX},
                    "online": {"type": "boolean", "description": "Seen within the last 60 s."},
                    "last_seen_at": {
                        "type": ["string", "null"],
                        "format": "date-time",
                        "description": "ISO 8601 UTC, e.g. 2026-11-26T23:10:07Z.",
                    },
                    "master": {
                        "anyOf": [LOWER_UUID, {"type": "null"}],
                        "description": "An agent's master; null for a master.",
                    },
                    "agents": {
                        "type": "array",
                        "items": LOWER_UUID,
                        "description": "A master's agents; [] for an agent.",
                    },
                },
            },
            "DeviceAnswer": {
                "type": "object",
                "required": ["c", "device"],
                "additionalProperties": False,
                "properties": {"c": {"const": "OK"}, "device": ref("Device")},
            },
            "DeviceList": {
                "type": "object",
                "required": ["c", "devices", "next"],
                "additionalProperties": False,
                "properties": {
                    "c": {"const": "OK"},
                    "devices": {
                        "type": "array",
                        "items": ref("Device"),
                        "maxItems": owner_devices.PAGE_MAX,
                    },
                    "next": {
                        "type": ["string", "null"],
                        "pattern": CURSOR_PATTERN,
                        "description": "`?cursor=` for the next page; null on the last.",
                    },
                },
            },
            "EmqxAuthnRequest": {
                "type": "object",
                "required": ["clientid", "username", "password"],
                "properties": {
                    "clientid": {"type": "string"},
                    "username": {"type": "string"},
                    "password": {"type": "string"},
                    "peerhost": {"type": "string"},
                },
            },
            "LegacyAuthRequest": {
                "type": "object",
                "required": ["clientid", "username", "password", "token"],
                "properties": {
                    "clientid": {"type": "string"},
                    "username": {"type": "string"},
                    "password": {"type": "string"},
                    "token": {"type": "string", "description": "MQTT_SECRET_KEY."},
                },
            },
            "EmqxAuthnAnswer": {
                "type": "object",
                "required": ["result"],
                "properties": {
                    "result": {"enum": ["allow", "deny", "ignore"]},
                    "is_superuser": {"type": "boolean"},
                    "client_attrs": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                    },
                    "expire_at": {"type": "integer", "description": "The token's `exp`."},
                    "acl": {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "EMQX client ACL rules, ending with a deny-all.",
                    },
                },
            },
            "EmqxAuthzRequest": {
                "type": "object",
                "required": ["clientid", "username", "topic", "action"],
                "properties": {
                    "clientid": {"type": "string"},
                    "username": {"type": "string"},
                    "topic": {"type": "string"},
                    "action": {"enum": ["publish", "subscribe"]},
                    "qos": {"type": "string", "description": "EMQX sends every field as a string."},
                    "retain": {"type": "string"},
                },
            },
            "EmqxMalformed": {
                "type": "object",
                "required": ["result"],
                "properties": {"result": {"const": "deny"}, "error": {"type": "string"}},
            },
            "EmqxDecision": {
                "type": "object",
                "required": ["result"],
                "properties": {"result": {"enum": ["allow", "deny", "ignore"]}},
            },
            "GoAuthUser": {
                "type": "object",
                "required": ["username", "password"],
                "properties": {
                    "username": {"type": "string"},
                    "password": {"type": "string"},
                    "clientid": {"type": "string"},
                    "client_id": {"type": "string", "description": "amqtt's spelling."},
                },
            },
            "GoAuthSuperuser": {
                "type": "object",
                "required": ["username"],
                "properties": {"username": {"type": "string"}},
            },
            "GoAuthAcl": {
                "type": "object",
                "required": ["username", "topic", "acc"],
                "properties": {
                    "username": {"type": "string"},
                    "clientid": {"type": "string"},
                    "client_id": {"type": "string", "description": "amqtt's spelling."},
                    "topic": {"type": "string"},
                    "acc": {
                        "enum": [1, 2, 3, 4, "1", "2", "3", "4"],
                        "description": "1 read (delivery), 2 write, 3 both, 4 subscribe; "
                        "a digit string in a form body.",
                    },
                },
            },
            "GoAuthAnswer": {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}, "error": {"type": "string"}},
            },
        },
    },
}

METHODS = ("get", "put", "post", "delete", "patch")


def resolve(node: dict, doc: dict) -> dict:
    """Follow a local `$ref` (one level is all this document uses)."""
    target = node.get("$ref")
    if not target:
        return node
    found: dict = doc
    for part in target.removeprefix("#/").split("/"):
        found = found[part]
    return found


_MARKDOWN = MarkdownIt("commonmark", {"html": False})


def markdown(text: str | None, inline: bool = False) -> Markup:
    """A description's Markdown as HTML (CommonMark; raw HTML in the text is escaped)."""
    if not text:
        return Markup("")
    return Markup(_MARKDOWN.renderInline(text) if inline else _MARKDOWN.render(text))


@dataclass
class Field:
    """One property of an object schema, for the page."""

    name: str
    required: bool
    schema: SchemaView


@dataclass
class SchemaView:
    """A JSON Schema as the page shows it: a readable type, its constraints and description,
    and the fields of an object (or of an array's items), each expandable in turn."""

    type: str
    name: str = ""
    constraints: list[str] = dataclass_field(default_factory=list)
    description: Markup = Markup("")
    fields: list[Field] = dataclass_field(default_factory=list)

    @property
    def expandable(self) -> bool:
        """True when there are fields to show."""
        return bool(self.fields)


def schema_view(schema: dict | None, doc: dict, depth: int = 0) -> SchemaView | None:
    """The readable form of `schema` (local `$ref`s followed, named after their component)."""
    if not schema:
        return None
    name = schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else ""
    schema = resolve(schema, doc)
    view = SchemaView(type=_type_label(schema, doc), name=name)
    view.description = markdown(schema.get("description"), inline=True)
    view.constraints = _constraints(schema, doc)
    target = schema
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        items = schema["items"]
        view.name = view.name or items.get("$ref", "").rsplit("/", 1)[-1]
        target = resolve(items, doc)
    if depth < 6:  # the document is not recursive; the bound only keeps the page finite
        required = set(target.get("required", []))
        view.fields = [
            Field(key, key in required, schema_view(value, doc, depth + 1))
            for key, value in target.get("properties", {}).items()
        ]
    return view


def _type_label(schema: dict, doc: dict) -> str:
    """`string`, `"OK"`, `"master" | "agent"`, `string | null`, `array of Device`…"""
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    if "anyOf" in schema or "oneOf" in schema:
        variants = schema.get("anyOf") or schema.get("oneOf")
        return " | ".join(_type_label(resolve(variant, doc), doc) for variant in variants)
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " | ".join(kind)
    if kind == "array":
        items = schema.get("items") or {}
        item_name = items["$ref"].rsplit("/", 1)[-1] if "$ref" in items else ""
        return f"array of {item_name or _type_label(resolve(items, doc), doc)}"
    return kind


def printable(text: str) -> str:
    """`text` with control characters written as `\\uXXXX` (patterns list some)."""
    return "".join(
        f"\\u{ord(char):04x}" if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 else char
        for char in text
    )


def _constraints(schema: dict, doc: dict) -> list[str]:
    """What else a value must be, in words."""
    found = []
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None and high is not None:
        found.append(f"{low}–{high} characters")
    elif high is not None:
        found.append(f"at most {high} characters")
    elif low is not None:
        found.append(f"at least {low} characters")
    if "pattern" in schema:
        found.append(f"matches {printable(schema['pattern'])}")
    if "format" in schema:
        found.append(schema["format"])
    extra = schema.get("additionalProperties")
    if extra is False:
        found.append("no other fields")
    elif isinstance(extra, dict):
        found.append(f"any field name → {_type_label(resolve(extra, doc), doc)}")
    return found


def security_alternatives(op: dict, doc: dict) -> list[dict]:
    """How an operation may be authorized: each alternative's schemes (name and
    description), or none (an empty list: from a trusted network)."""
    schemes = doc["components"]["securitySchemes"]
    return [
        [{"name": name, "description": markdown(schemes[name].get("description"), True)}
         for name in alternative]
        for alternative in op.get("security", [])
    ]  # fmt: skip


def operations(doc: dict) -> list[dict]:
    """Every operation, flattened for the HTML page, in document order."""
    found = []
    for path, item in doc["paths"].items():
        shared = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            responses = []
            for status, response in op["responses"].items():
                response = resolve(response, doc)
                content = response.get("content", {})
                media, body = next(iter(content.items()), (None, {}))
                responses.append(
                    {
                        "status": status,
                        "description": markdown(response["description"], inline=True),
                        "media": media,
                        "schema": schema_view(body.get("schema"), doc),
                    }
                )
            request_body = op.get("requestBody", {})
            media = list(request_body.get("content", {}))
            first = request_body.get("content", {}).get(media[0], {}) if media else {}
            found.append(
                {
                    "id": op["operationId"],
                    "tag": op.get("tags", ["broker hooks"])[0],
                    "method": method.upper(),
                    "path": path,
                    "summary": markdown(op.get("summary", ""), inline=True),
                    "description": markdown(op.get("description", "")),
                    "security": security_alternatives(op, doc),
                    "parameters": [
                        {
                            "name": p["name"],
                            "in": p["in"],
                            "required": p.get("required", False),
                            "schema": schema_view(p["schema"], doc),
                            "description": markdown(p.get("description"), inline=True),
                            "example": p.get("example"),
                        }
                        for p in [*shared, *op.get("parameters", [])]
                    ],
                    "body": schema_view(first.get("schema"), doc),
                    "body_media": media,
                    "body_description": markdown(request_body.get("description"), True),
                    "responses": responses,
                }
            )
    return found


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3.1 document."""
    return jsonify(DOCUMENT)


@bp.get("/docs")
def docs_page():
    """The document as a readable, self-contained HTML page (no scripts, no CDN): Markdown
    rendered, schemas as tables whose nested objects expand."""
    ops = operations(DOCUMENT)
    tags = [
        {
            **tag,
            "description": markdown(tag.get("description"), inline=True),
            "operations": [op for op in ops if op["tag"] == tag["name"]],
        }
        for tag in DOCUMENT["tags"]
    ]
    schemes = [
        {"name": name, "description": markdown(scheme.get("description"), inline=True)}
        for name, scheme in DOCUMENT["components"]["securitySchemes"].items()
    ]
    return render_template(
        "docs.html",
        doc=DOCUMENT,
        tags=tags,
        schemes=schemes,
        description=markdown(DOCUMENT["info"]["description"]),
    )
