"""The owner console in a real browser: Debian's chromium, driven by Playwright, against
the app served over HTTP, with the amqtt broker and the pinger for presence.

Elements are found by the accessible names SPEC.md fixes (`Username`, `Device UUID`,
`Claim`, ...), as a person using a screen reader would find them.
"""

from __future__ import annotations

import re
import signal
import time

import pytest
import requests
from conftest import AGENT_SECRET, MASTER_SECRET, new_uuid, pinger_env, pinger_process
from console_kit import PASSWORD, Pages, launched_chromium, sign_in
from playwright.sync_api import expect

pytestmark = pytest.mark.slow

PHONE = {"width": 360, "height": 740}


@pytest.fixture(scope="module")
def browser():
    """One chromium for the module."""
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def app_config(app_config):
    """Room in the /auth/* bucket: these tests sign up, sign in and register devices from
    one address in a few seconds (test_pages.py tests the limit itself)."""
    return {**app_config, "RATELIMIT_AUTH": "100 per 5 seconds"}


@pytest.fixture
def pages(browser, live_server):
    """Browser pages on the live app; the test fails on any CSP violation they report."""
    opened = Pages(browser, live_server.url)
    yield opened
    opened.close()
    assert opened.csp_violations == []


def row(page, uuid: str):
    """A device's row on the devices page."""
    return page.locator(f'[data-device="{uuid}"]')


def status(page, uuid: str):
    """The text of a device's status on the page."""
    return row(page, uuid).locator("[data-status-text]")


def manage(page, uuid: str):
    """Open a device's Manage menu; returns its row."""
    found = row(page, uuid)
    found.get_by_text("Manage").click()
    return found


def device_token(live_server, uuid: str, secret: str) -> str:
    """A device's registration call over HTTP, as its firmware makes it."""
    response = requests.get(
        f"{live_server.url}/auth/devices/request",
        params={"uuid": uuid},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["t"]


# ---------------------------------------------------------------- the whole story


def test_sign_up_claim_link_and_watch_them_come_online(
    pages, live_server, amqtt_broker, app_config, fake_devices
):
    """A new owner claims a master and links an agent in the browser; both boards connect
    through amqtt and ping the pinger; the page turns them online without a reload."""
    pinger = pinger_process(
        pinger_env(
            DATABASE_URL=app_config["SQLALCHEMY_DATABASE_URI"],
            MQTT_BROKER_URL=f"mqtt://127.0.0.1:{amqtt_broker.port}",
        ),
        stdout=None,
    )
    try:
        page = pages.open()
        page.goto("/")
        expect(page).to_have_url(f"{live_server.url}/console/sign-in?next=/console")
        page.get_by_role("link", name="Create one").click()
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Create account").click()
        expect(page.get_by_role("heading", name="Devices", exact=True)).to_be_visible()
        expect(page.get_by_role("status").first).to_contain_text("Welcome, alice")

        master, agent = new_uuid(), new_uuid()
        page.get_by_label("Device UUID").fill(master)
        page.get_by_role("button", name="Claim").click()
        expect(page.get_by_role("status").first).to_contain_text(f"Claimed {master}")
        manage(page, master).get_by_label("Agent UUID").fill(agent)
        row(page, master).get_by_role("button", name="Link agent").click()
        expect(page.get_by_role("status").first).to_contain_text(f"Linked agent {agent}")
        for uuid in (master, agent):
            expect(status(page, uuid)).to_have_text("Offline")
            expect(row(page, uuid).locator("time")).to_have_text("never")
        expect(page.locator("[data-live]")).to_have_text("live")  # the script is polling
        page.evaluate("window.sameDocument = true")

        sessions = {
            uuid: fake_devices(
                amqtt_broker.port, uuid=uuid, password=device_token(live_server, uuid, secret)
            )
            for uuid, secret in ((master, MASTER_SECRET), (agent, AGENT_SECRET))
        }
        for uuid, session in sessions.items():
            session.ping_until_pong(timeout=20)
            started = time.monotonic()
            # SPEC: the online indicator follows the pinger within 5 s.
            expect(status(page, uuid)).to_have_text("Online", timeout=5_000)
            assert time.monotonic() - started < 5
            expect(row(page, uuid).locator("[data-status]")).to_have_class("status is-online")
            expect(row(page, uuid).locator("time")).to_have_text(re.compile(r"^\d+ s ago$"))
            assert row(page, uuid).locator("time").get_attribute("title").endswith(" UTC")
        expect(page.get_by_text("2 of 2 online")).to_be_visible()
        assert page.evaluate("window.sameDocument") is True  # no reload happened
    finally:
        pinger.send_signal(signal.SIGTERM)
        try:
            pinger.wait(timeout=10)
        except Exception:  # noqa: BLE001 - make sure it is gone whatever happened
            pinger.kill()
            pinger.wait()


def test_rename_then_revoke_stops_the_old_token(pages, live_server, devices):
    devices.owner("alice", PASSWORD)
    master = devices.master(owner="alice")
    old = devices.token(master)
    mqtt = f"{live_server.url}/mqtt"
    assert requests.get(mqtt, headers={"Authorization": f"Bearer {old}"}).status_code == 200

    page = pages.open()
    sign_in(page)
    manage(page, master).get_by_label("Name").fill("Greenhouse")
    row(page, master).get_by_role("button", name="Rename").click()
    expect(page.get_by_role("status").first).to_have_text("Renamed to Greenhouse.")
    expect(row(page, master).get_by_role("link", name="Greenhouse")).to_be_visible()

    row(page, master).get_by_role("link", name="Greenhouse").click()
    expect(page.get_by_role("heading", name="Greenhouse", level=1)).to_be_visible()
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("heading", name="Revoke Greenhouse?")).to_be_visible()
    assert requests.get(mqtt, headers={"Authorization": f"Bearer {old}"}).status_code == 200
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status").first).to_contain_text("Revoked Greenhouse")
    expect(page).to_have_url(f"{live_server.url}/console/devices/{master}")
    expect(page.locator("dt:text-is('Token version') + dd")).to_have_text("2")
    assert requests.get(mqtt, headers={"Authorization": f"Bearer {old}"}).status_code == 403


def test_cancel_on_a_confirmation_changes_nothing(pages, devices):
    devices.owner("alice", PASSWORD)
    master = devices.master(owner="alice")
    devices.agent(master)
    page = pages.open()
    sign_in(page)
    manage(page, master).get_by_role("button", name="Release").click()
    expect(page.get_by_role("heading", name=f"Release {master}?")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_role("heading", name="Devices", exact=True)).to_be_visible()
    assert devices.get(master).owner_id is not None
    manage(page, master).get_by_role("button", name="Release").click()
    page.get_by_role("button", name="Release").click()
    expect(page.get_by_role("status").first).to_have_text(f"Released {master}.")
    expect(page.get_by_text("No devices yet")).to_be_visible()
    assert devices.get(master).owner_id is None


def test_another_owner_gets_404(pages, live_server, devices):
    devices.owner("alice", PASSWORD)
    devices.owner("bob", PASSWORD)
    theirs = devices.master(owner="alice")
    page = pages.open()
    sign_in(page, "bob")
    for path in (f"/console/devices/{theirs}", f"/console/devices/{theirs}/revoke"):
        response = page.goto(path)
        assert response.status == 404
        expect(page.get_by_role("heading", name="No such device.")).to_be_visible()
    # Bob's own, valid CSRF token does not open Alice's device either.
    page.goto("/console")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    response = page.request.post(
        f"/console/devices/{theirs}/name", form={"name": "bob's now", "csrf_token": token}
    )
    assert response.status == 404
    assert devices.get(theirs).name is None


def test_a_post_without_the_csrf_token_changes_nothing(pages, devices):
    devices.owner("alice", PASSWORD)
    master = devices.master(owner="alice")
    page = pages.open()
    sign_in(page)
    # The form, stripped of its token, submitted by the browser with the session cookie.
    form = manage(page, master).locator("form", has=page.get_by_role("button", name="Rename"))
    form.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    form.get_by_label("Name").fill("forged")
    with page.expect_navigation() as navigation:
        form.get_by_role("button", name="Rename").click()
    assert navigation.value.status == 400
    expect(page.get_by_text("Nothing was changed.")).to_be_visible()
    # A replayed POST carrying the cookie but no token.
    response = page.request.post(f"/console/devices/{master}/revoke", form={"next": "/console"})
    assert response.status == 400
    after = devices.get(master)
    assert (after.name, after.token_version) == (None, 1)


def test_phone_width_has_no_horizontal_scroll(pages, devices, app):
    from iot_server.extensions import db
    from iot_server.models import Device

    devices.owner("alice", PASSWORD)
    master = devices.master(owner="alice")
    agents = [devices.agent(master) for _ in range(2)]
    devices.master(owner="alice")
    with app.app_context():
        db.session.get(Device, master).name = "W" * 64  # the widest name there is
        db.session.get(Device, agents[0]).name = "Soil probe in the north-east raised bed"
        db.session.commit()
    for width in (PHONE["width"], 320):
        page = pages.open(width=width, height=PHONE["height"])
        sign_in(page)
        for path in ("/console", f"/console/devices/{master}", f"/console/devices/{agents[0]}",
                     f"/console/devices/{master}/release", "/console/devices/nope"):  # fmt: skip
            page.goto(path)
            if path == "/console":
                manage(page, master)  # the open menu must fit too
            sizes = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert sizes[0] <= sizes[1], (width, path, sizes)
        page.get_by_role("button", name="Sign out").click()
        page.goto("/console/sign-in")
        sizes = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert sizes[0] <= sizes[1], (width, "sign-in", sizes)


def test_every_action_works_without_javascript(pages, devices):
    devices.owner("alice", PASSWORD)
    page = pages.open(javascript=False)
    sign_in(page)
    master, agent = new_uuid(), new_uuid()
    page.get_by_label("Device UUID").fill(master)
    page.get_by_role("button", name="Claim").click()
    manage(page, master).get_by_label("Agent UUID").fill(agent)
    row(page, master).get_by_role("button", name="Link agent").click()
    manage(page, agent).get_by_label("Name").fill("Agent Smith")
    row(page, agent).get_by_role("button", name="Rename").click()
    expect(page.get_by_role("status").first).to_have_text("Renamed to Agent Smith.")
    manage(page, agent).get_by_role("button", name="Unlink").click()
    page.get_by_role("button", name="Unlink").click()
    expect(page.get_by_role("status").first).to_have_text(f"Unlinked Agent Smith from {master}.")
    manage(page, master).get_by_role("button", name="Revoke").click()
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status").first).to_contain_text(f"Revoked {master}")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    assert devices.get(master).token_version == 2
    assert devices.get(agent).master_uuid is None


def test_the_keyboard_alone_reaches_everything(pages, devices):
    devices.owner("alice", PASSWORD)
    page = pages.open()
    page.goto("/console/sign-in")
    expect(page.get_by_label("Username")).to_be_focused()  # autofocus, no click
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Devices", exact=True)).to_be_visible()

    def tab_to(name: str, limit: int = 30) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            focused = page.evaluate(
                "(() => { const e = document.activeElement;"
                " return (e.labels && e.labels[0] ? e.labels[0].textContent : e.textContent)"
                ".trim(); })()"
            )
            if focused == name:
                return
        raise AssertionError(f"Tab never reached {name}")

    master = new_uuid()
    tab_to("Device UUID")
    page.keyboard.type(master)
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").first).to_contain_text(f"Claimed {master}")
    tab_to(f"Manage {master}")
    page.keyboard.press("Enter")
    tab_to("Name")
    page.keyboard.type("Typed")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").first).to_have_text("Renamed to Typed.")
    tab_to("Sign out")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()


def test_signing_out_in_one_tab_stops_the_other(pages, devices, live_server):
    devices.owner("alice", PASSWORD)
    devices.master(owner="alice")
    page = pages.open()
    sign_in(page)
    other = page.context.new_page()
    other.goto("/console")
    expect(other.locator("[data-live]")).to_have_text("live")
    page.get_by_role("button", name="Sign out").click()
    # The other tab's next poll is refused; it says so and stops asking.
    expect(other.locator("[data-live]")).to_have_text("live updates paused", timeout=5_000)
    other.reload()
    expect(other).to_have_url(re.compile(r"/console/sign-in\?next="))
