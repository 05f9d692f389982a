"""Who may call a hook: the secret header, or no header from a trusted network."""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from flask import current_app


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


def caller_allowed(authorization: str | None, remote_addr: str | None) -> bool:
    """A hook caller presents `Bearer MQTT_SECRET_KEY`, or no Authorization header at all
    from a trusted network; a wrong header is refused even from a trusted network."""
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and secret_matches(token.strip())
    return is_trusted_address(remote_addr)
