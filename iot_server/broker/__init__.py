"""The broker's questions: EMQX and mosquitto-go-auth hook adapters and their decisions.

`emqx_hooks` and `mosquitto_hooks` parse their broker's requests and shape its answers;
`decisions` answers who may connect and who may use which topic, from `device_state`
(read through `caches`); `callers` decides who may ask at all; `emqx_api` cuts sessions.
"""

from __future__ import annotations

from flask import Flask

from .. import devices
from . import caches, emqx_api


def init_app(app: Flask) -> None:
    """The app's hook caches, and EMQX disconnects when the devices service cuts sessions."""
    caches.init_app(app)
    devices.sessions_cut.connect(emqx_api.disconnect_all, sender=app)
