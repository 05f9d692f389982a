"""Who may call a hook: the secret header, or no header from a trusted network.

A header-less call that carries a forwarding header while TRUSTED_PROXIES=0 came through a
reverse proxy whose address is not the caller's: it is refused, whatever that address is.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Mapping
from functools import lru_cache

from flask import Request, current_app

from . import caches

log = logging.getLogger("iot_server.hooks")

#: Headers a reverse proxy adds to name the client it forwards for.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


@lru_cache(maxsize=16)
def trusted_networks(spec: str) -> tuple:
    """Parse `HOOK_TRUSTED_NETWORKS` (comma-separated networks or addresses)."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    )


def is_trusted_address(remote_addr: str | None) -> bool:
    """True when the caller's address (after TRUSTED_PROXIES) is in a trusted network."""
    if not remote_addr:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    networks = trusted_networks(current_app.config["HOOK_TRUSTED_NETWORKS"] or "")
    return any(address in network for network in networks if network.version == address.version)


def secret_matches(given: object) -> bool:
    """`given` equals MQTT_SECRET_KEY, compared in constant time; never true when unset."""
    secret = current_app.config["MQTT_SECRET_KEY"] or ""
    candidate = given if isinstance(given, str) else ""
    matches = hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), secret.encode())
    return bool(secret) and bool(candidate) and matches


def is_forwarded(headers: Mapping[str, str]) -> bool:
    """True when a reverse proxy has named a client in the request's headers."""
    return any(name in headers for name in FORWARDING_HEADERS)


def caller_refusal(
    authorization: str | None, remote_addr: str | None, forwarded: bool = False
) -> str | None:
    """Why this hook caller may not ask, or None. It presents `Bearer MQTT_SECRET_KEY`, or
    no Authorization header at all from a trusted network, and then not through a proxy
    that TRUSTED_PROXIES does not count (`forwarded`: it carries a forwarding header). A
    wrong header is refused even from a trusted network."""
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and secret_matches(token.strip()):
            return None
        return "wrong or malformed secret"
    if not is_trusted_address(remote_addr):
        return "no secret, untrusted address"
    if forwarded and current_app.config["TRUSTED_PROXIES"] == 0:
        # Behind a same-host proxy every caller is "loopback": the header says who it was.
        warn_proxy_once(remote_addr)
        return "no secret, forwarded by a proxy"
    return None


def caller_allowed(
    authorization: str | None, remote_addr: str | None, forwarded: bool = False
) -> bool:
    """True when `caller_refusal()` finds nothing; a refusal is logged (`refused`)."""
    refusal = caller_refusal(authorization, remote_addr, forwarded)
    if refusal is not None:
        refused(remote_addr, refusal)
    return refusal is None


def request_allowed(request: Request) -> bool:
    """`caller_allowed()` for a hook request: its Authorization header and address.

    Read from the WSGI environ: werkzeug's header view costs a hook call more than the
    check. REMOTE_ADDR there is already the one TRUSTED_PROXIES allows (ProxyFix rewrote it).
    """
    environ = request.environ
    authorization = environ.get("HTTP_AUTHORIZATION")
    # Forwarding headers only matter to a header-less caller (EMQX always sends the secret).
    forwarded = authorization is None and is_forwarded(request.headers)
    return caller_allowed(authorization, environ.get("REMOTE_ADDR"), forwarded)


def refused(remote_addr: str | None, reason: str) -> None:
    """Log a refused caller, summarised per address and reason: a misconfigured broker
    retries every second."""
    caches.hook_caches().refused_callers.denied(f"{remote_addr} ({reason})", reason, None)


def warn_proxy_once(remote_addr: str | None) -> None:
    """Say once per process that a same-host proxy is in front while TRUSTED_PROXIES=0."""
    flag = caches.hook_caches().proxy_warning_logged
    if not flag.is_set():
        flag.set()
        log.warning(
            "a hook call from %s carries a forwarding header while TRUSTED_PROXIES=0: "
            "TRUSTED_PROXIES is probably wrong (set it to the number of reverse proxies "
            "in front of the server); header-less hook calls through a proxy are refused",
            remote_addr,
        )
