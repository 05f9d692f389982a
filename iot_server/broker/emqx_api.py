"""The EMQX REST API client: cut a device's live sessions after revoke, release or unlink.

Only used when EMQX_API_URL, EMQX_API_KEY and EMQX_API_SECRET are set. A failure is logged
and never breaks the caller: the token is revoked either way, and the session would end at
its next reconnect.
"""

from __future__ import annotations

import base64
import logging
import urllib.error
import urllib.parse
import urllib.request

from flask import Flask, current_app

log = logging.getLogger("iot_server.emqx_api")
TIMEOUT_SECONDS = 3


def is_configured() -> bool:
    """True when the EMQX API base URL, key and secret are all set."""
    config = current_app.config
    return bool(config["EMQX_API_URL"] and config["EMQX_API_KEY"] and config["EMQX_API_SECRET"])


#: What became of one `DELETE /api/v5/clients/{clientid}`.
CUT, ABSENT, REFUSED, UNREACHABLE = "cut", "absent", "refused", "unreachable"


def disconnect(client_id: str) -> bool:
    """`DELETE /api/v5/clients/{clientid}`; True when EMQX cut a session (204)."""
    return is_configured() and _delete_client(client_id) == CUT


def _delete_client(client_id: str) -> str:
    """Ask EMQX to kick one client id: CUT, ABSENT (not connected), REFUSED or UNREACHABLE."""
    config = current_app.config
    url = "{}/api/v5/clients/{}".format(
        config["EMQX_API_URL"].rstrip("/"), urllib.parse.quote(client_id, safe="")
    )
    credentials = f"{config['EMQX_API_KEY']}:{config['EMQX_API_SECRET']}".encode()
    request = urllib.request.Request(
        url,
        method="DELETE",
        headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return CUT if response.status == 204 else REFUSED
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # CLIENTID_NOT_FOUND: not connected, nothing to cut
            return ABSENT
        log.warning("EMQX refused to disconnect a client: HTTP %s", exc.code)
        return REFUSED
    except (urllib.error.URLError, OSError) as exc:
        log.warning("EMQX API unreachable: %s", exc)
        return UNREACHABLE


def disconnect_all(app: Flask, client_ids: list[str]) -> None:
    """`devices.sessions_cut` receiver: kick each client id on EMQX (a device may hold
    several sessions). An unreachable API is not asked again for the rest of the list,
    so a revoke waits for one timeout, not one per session."""
    if not is_configured():
        return
    for done, client_id in enumerate(client_ids):
        if _delete_client(client_id) == UNREACHABLE:
            log.warning(
                "EMQX API unreachable: %d sessions not cut (each ends when its token"
                " expires or it reconnects)",
                len(client_ids) - done,
            )
            return
