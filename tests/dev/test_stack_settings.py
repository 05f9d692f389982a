"""What `flask dev` tells devices and its children, without starting it: the LAN address of
a wildcard host, MQTT_HOST, the hooks' trusted networks, and the banner's settings."""

from __future__ import annotations

import shlex

import ifaddr
import pytest

from iot_server.dev import stack
from iot_server.dev.stack import LOOPBACK_NETWORKS, TRY_IT, banner, lan_address, stack_environment


def adapter(name: str, *addresses: str) -> ifaddr.Adapter:
    """A network interface as ifaddr lists it (IPv6 addresses as its tuples)."""
    ips = [
        ifaddr.IP((address, 0, 0) if ":" in address else address, 24, name) for address in addresses
    ]
    return ifaddr.Adapter(name, name, ips)


@pytest.mark.parametrize(
    ("adapters", "expected"),
    [
        # A home network beside loopback, link-local and IPv6.
        ([adapter("lo", "127.0.0.1", "::1"), adapter("wlan0", "169.254.3.4", "192.168.1.23",
          "fe80::1")], "192.168.1.23"),
        # Docker's bridge is private too, but no board reaches it.
        ([adapter("docker0", "172.17.0.1"), adapter("eth0", "10.0.0.7")], "10.0.0.7"),
        # RFC 1918 before other private ranges (carrier-grade NAT, documentation).
        ([adapter("eth1", "100.64.0.9"), adapter("eth0", "172.20.1.5")], "172.20.1.5"),
        # A public address when there is nothing else.
        ([adapter("eth0", "8.8.8.50")], "8.8.8.50"),
        # Only a container bridge: better than nothing.
        ([adapter("lo", "127.0.0.1"), adapter("br-1234", "172.18.0.1")], "172.18.0.1"),
        ([adapter("lo", "127.0.0.1", "::1")], None),
    ],
)  # fmt: skip
def test_lan_address_prefers_a_private_ipv4_of_a_real_interface(adapters, expected):
    assert lan_address(adapters) == expected


def test_a_wildcard_host_tells_devices_the_lan_address(monkeypatch):
    monkeypatch.setattr(stack, "lan_address", lambda adapters=None: "192.168.1.23")
    env, _ = stack_environment("0.0.0.0", 5000, 1884, {})
    assert env["MQTT_HOST"] == "192.168.1.23:1884"
    # The children still talk to each other over loopback.
    assert env["MQTT_BROKER_URL"] == "mqtt://127.0.0.1:1884"


def test_mqtt_host_overrides_the_lan_address(monkeypatch):
    monkeypatch.setattr(stack, "lan_address", lambda adapters=None: "192.168.1.23")
    env, _ = stack_environment("0.0.0.0", 5000, 1884, {"MQTT_HOST": "iot.example.test:1883"})
    assert env["MQTT_HOST"] == "iot.example.test:1883"


def test_a_named_host_is_what_devices_are_told():
    env, _ = stack_environment("127.0.0.1", 5000, 1884, {})
    assert env["MQTT_HOST"] == "127.0.0.1:1884"


def test_the_hooks_trust_loopback_unless_the_developer_chose():
    """amqtt calls the hooks from loopback without a header: flask dev trusts loopback for
    its children whatever the production default is, and keeps a developer's choice."""
    env, _ = stack_environment("127.0.0.1", 5000, 1884, {})
    assert env["HOOK_TRUSTED_NETWORKS"] == LOOPBACK_NETWORKS
    env, _ = stack_environment("127.0.0.1", 5000, 1884, {"HOOK_TRUSTED_NETWORKS": "10.9.0.0/16"})
    assert env["HOOK_TRUSTED_NETWORKS"] == "10.9.0.0/16"


def test_the_banner_gives_a_board_the_lan_settings(monkeypatch):
    monkeypatch.setattr(stack, "lan_address", lambda adapters=None: "192.168.1.23")
    env, generated = stack_environment("0.0.0.0", 5000, 1884, {})
    env["DATABASE_URL"] = "sqlite:////tmp/x.sqlite"
    lines = banner("0.0.0.0", 5000, 1884, env, generated, env["DATABASE_URL"])
    assert "  API       http://192.168.1.23:5000" in lines
    assert '  config.serverUrl = "http://192.168.1.23:5000";' in lines
    secret = env["DEVICE_MASTER_SECRET_KEY"]
    assert f'  config.registrationSecret = "{secret}";' in lines
    commands = lines[lines.index(TRY_IT) + 1 :]
    assert "  export API=http://192.168.1.23:5000 MQTT_PORT=1884 DEVICE=" in "\n".join(commands)
    assert any(line.startswith("  mosquitto_sub -h 192.168.1.23 ") for line in commands)


def test_the_banner_exports_what_the_commands_need(monkeypatch):
    """Values that a shell would split or expand are quoted."""
    environ = {"DATABASE_URL": "postgresql://u:p a$s@h/d", "JWT_SECRET": "x y"}
    env, generated = stack_environment("127.0.0.1", 5000, 1884, environ)
    lines = banner("127.0.0.1", 5000, 1884, env, generated, env["DATABASE_URL"])
    assert f"  export DATABASE_URL={shlex.quote(environ['DATABASE_URL'])}" in lines
    assert "  export JWT_SECRET='x y'" in lines
    assert not any("config.serverUrl" in line for line in lines)  # loopback: no board
