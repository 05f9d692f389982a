"""The exact device-state cache: its rules alone, then on PostgreSQL with the real
LISTEN/NOTIFY triggers: changes from anywhere drop entries, a cached login costs no query,
and a lost listener means reading the database, never a stale answer."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import new_uuid, wait_until
from sqlalchemy import create_engine, event, text

from iot_server import create_app, tokens
from iot_server import devices as device_service
from iot_server.broker import caches, decisions
from iot_server.broker.state_cache import DeviceStateCache
from iot_server.extensions import db
from iot_server.models import Device

# ---------------------------------------------------------------- the rules, alone


@pytest.fixture
def cache():
    """A trusted cache with a clock the test moves."""
    now = [1000.0]
    cache = DeviceStateCache(ttl=60, max_entries=3, clock=lambda: now[0])
    cache.set_listening(True)
    cache.now = now
    return cache


def test_a_kept_state_is_served_until_dropped(cache):
    ticket = cache.begin_read()
    cache.put("a", "state-a", ticket)
    assert cache.get("a") == "state-a"
    cache.drop(["a"])
    assert cache.get("a") is None


def test_a_state_read_across_a_notification_is_not_kept(cache):
    """The race this design exists for: read, the change commits and is announced, then the
    (stale) state arrives to be kept. It must not be."""
    ticket = cache.begin_read()
    cache.drop(["a"])  # the notification of a change the read may have missed
    cache.put("a", "stale", ticket)
    assert cache.get("a") is None
    cache.put("a", "fresh", cache.begin_read())
    assert cache.get("a") == "fresh"


def test_a_drop_of_another_device_does_not_stop_a_put(cache):
    ticket = cache.begin_read()
    cache.drop(["b"])
    cache.put("a", "state-a", ticket)
    assert cache.get("a") == "state-a"


def test_not_trusted_means_no_answers_and_nothing_kept(cache):
    cache.put("a", "state-a", cache.begin_read())
    cache.set_listening(False)
    assert cache.get("a") is None
    assert cache.begin_read() is None
    cache.put("a", "state-a", None)
    cache.set_listening(True)
    assert cache.get("a") is None  # emptied: what happened while deaf is unknown


def test_a_read_begun_before_the_listener_came_back_is_not_kept(cache):
    ticket = cache.begin_read()
    cache.set_listening(False)
    cache.set_listening(True)
    cache.put("a", "state-a", ticket)
    assert cache.get("a") is None


def test_size_bound_and_safety_ttl(cache):
    for name in "abcd":
        cache.put(name, name, cache.begin_read())
    assert len(cache) == 3 and cache.get("a") is None
    cache.now[0] += 61
    assert cache.get("d") is None


def test_forgotten_drops_still_refuse_older_reads(cache):
    """Drops are remembered per device up to the bound, then as a floor: a read older
    than a forgotten drop is refused rather than trusted."""
    ticket = cache.begin_read()
    cache.drop(["a", "b", "c", "d", "e"])  # more than max_entries: "a" is forgotten
    cache.put("a", "stale", ticket)
    assert cache.get("a") is None


# ---------------------------------------------------------------- on PostgreSQL


@pytest.fixture
def pg_app(database):
    """An app on the migrated PostgreSQL database with the exact cache on."""
    if not database.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY needs PostgreSQL")
    app = create_app({"SQLALCHEMY_DATABASE_URI": database, "DEVICE_CACHE_SIZE": 1000})
    yield app
    with app.app_context():
        listener = caches.hook_caches().listener
        listener.stop()
        db.session.remove()
        db.engine.dispose()


def login(app, uuid, token, clientid="esp"):
    with app.test_request_context():
        return decisions.authenticate(f"device_{uuid}", token, clientid)


def cached_login(app, cache, uuid, token, clientid="esp"):
    """Log in until a login is answered from the cache (a first login of a client id
    records the session, and that write's own notification drops the entry once)."""

    def served_from_cache() -> bool:
        assert login(app, uuid, token, clientid).allowed
        time.sleep(0.05)  # the notification of a session it recorded has come and gone
        hits = cache.hits
        return login(app, uuid, token, clientid).allowed and cache.hits > hits

    assert wait_until(served_from_cache, 5), "the state never stayed cached"


def trusted_cache(app) -> DeviceStateCache:
    """The app's exact cache, once its listener is listening."""
    with app.test_request_context():
        hooks = caches.hook_caches()
        hooks.exact_states()  # starts the listener
        assert wait_until(lambda: hooks.states.trusted, 10), "the listener never listened"
        return hooks.states


@pytest.fixture
def registered(pg_app, devices):
    """A registered master of the pg_app's database and its token."""
    uuid = devices.master()
    return uuid, devices.token(uuid)


def count_statements(app):
    statements = []
    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", lambda *a, **k: statements.append(a[2]))
    return statements


def test_a_cached_login_sends_no_query(pg_app, registered):
    uuid, token = registered
    cache = trusted_cache(pg_app)
    cached_login(pg_app, cache, uuid, token)
    statements = count_statements(pg_app)
    for _ in range(5):
        assert login(pg_app, uuid, token).allowed
    assert statements == []
    assert cache.hits >= 5


@pytest.mark.parametrize("change", ["revoke", "disable", "release", "sql"])
def test_a_change_from_elsewhere_reaches_the_cache(pg_app, registered, database, change):
    """Revoke, disable and release through the service (its own app, as another worker or
    the CLI would), and a plain SQL UPDATE: each drops the entry when it commits."""
    uuid, token = registered
    cache = trusted_cache(pg_app)
    cached_login(pg_app, cache, uuid, token)
    other = create_app({"SQLALCHEMY_DATABASE_URI": database})
    with other.app_context():
        device = db.session.get(Device, uuid)
        if change == "revoke":
            device_service.revoke(device)
        elif change == "disable":
            device_service.set_enabled(device, False)
        elif change == "release":
            device_service.release(device)
        else:
            db.session.execute(
                text("UPDATE devices SET token_version = token_version + 1 WHERE uuid = :u"),
                {"u": uuid},
            )
            db.session.commit()
        db.engine.dispose()
    assert wait_until(lambda: uuid not in cache._entries, 2), "the notification never came"
    assert not login(pg_app, uuid, token, "esp-2").allowed


def test_a_new_agent_reaches_the_masters_cached_acl(pg_app, registered, database):
    uuid, token = registered
    cache = trusted_cache(pg_app)
    cached_login(pg_app, cache, uuid, token)
    agent = new_uuid()
    other = create_app({"SQLALCHEMY_DATABASE_URI": database})
    with other.app_context():
        device_service.link(uuid, agent)
        db.engine.dispose()
    assert wait_until(lambda: uuid not in cache._entries, 2)
    topic = f"device/{agent}/master"
    with pg_app.test_request_context():
        assert decisions.authorize(f"device_{uuid}", "esp", ("publish",), topic).allowed


def test_a_lost_listener_means_the_database_answers(pg_app, registered, database):
    """Kill the listener's connection: the cache is emptied and not trusted, so a revoke
    made while it is deaf is refused at once; then it listens again by itself."""
    uuid, token = registered
    cache = trusted_cache(pg_app)
    cached_login(pg_app, cache, uuid, token)
    admin = create_engine(database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'iot-state-listener' AND datname = current_database()"
            )
        ).all()
    assert killed
    assert wait_until(lambda: not cache.trusted, 5)
    assert len(cache) == 0
    with admin.begin() as conn:
        conn.execute(
            text("UPDATE devices SET token_version = token_version + 1 WHERE uuid = :u"),
            {"u": uuid},
        )
    assert not login(pg_app, uuid, token, "esp-2").allowed  # read from the database
    assert wait_until(lambda: cache.trusted, 15), "the listener did not come back"
    admin.dispose()


def test_without_the_triggers_the_cache_is_never_trusted(postgres_url):
    """A schema made without the migrations (create_all) announces nothing: never trust."""
    from sqlalchemy.engine import make_url

    from iot_server.broker.state_cache import Listener, listen_url

    url = make_url(postgres_url)
    scratch = url.set(database=f"{url.database}_no_triggers")
    server = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{scratch.database}"'))
    engine = create_engine(scratch)
    db.Model.metadata.create_all(engine)
    engine.dispose()
    states = DeviceStateCache(60, 100)
    listener = Listener(states, listen_url(scratch))
    try:
        listener.ensure_running()
        time.sleep(1.5)
        assert not states.trusted
        assert listener.thread.is_alive()  # it keeps trying, with backoff
    finally:
        listener.stop()
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)'))
        server.dispose()


def test_concurrent_logins_and_revokes_never_allow_a_revoked_token(pg_app, database, devices):
    """Hammer one device with logins from two threads while another process revokes it
    again and again: after each revoke's commit plus the delivery bound, the old token is
    never allowed."""
    uuid = devices.master()
    trusted_cache(pg_app)
    other = create_app({"SQLALCHEMY_DATABASE_URI": database})
    stop = threading.Event()
    allowed_after: list[float] = []
    current = {"token": None, "revoked_at": None}
    with other.app_context():
        current["token"] = tokens.issue_device_token(db.session.get(Device, uuid))

    def hammer():
        while not stop.is_set():
            token, revoked_at = current["token"], current["revoked_at"]
            if login(pg_app, uuid, token, f"t-{threading.get_ident()}").allowed and revoked_at:
                allowed_after.append(time.monotonic() - revoked_at)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        with other.app_context():
            for _ in range(10):
                time.sleep(0.1)
                device = db.session.get(Device, uuid)
                old = current["token"]
                device_service.revoke(device)
                current.update(token=old, revoked_at=time.monotonic())
                time.sleep(0.2)
                current.update(token=tokens.issue_device_token(device), revoked_at=None)
            db.engine.dispose()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    # An old token may pass only inside the notification's delivery: milliseconds.
    assert all(delay < 0.1 for delay in allowed_after), sorted(allowed_after)[-5:]


def test_the_cache_fills_itself_once_it_listens(pg_app, devices):
    """After a (re)start the most recently heard registered devices are loaded in one go,
    so the reconnect storm finds them: the first login sends no query."""
    master = devices.master()
    agent = devices.agent(master)
    devices.remember_session(master, "esp")
    token = devices.token(master)
    cache = trusted_cache(pg_app)
    assert wait_until(lambda: master in cache._entries and agent in cache._entries, 5)
    assert cache._entries[master][1].agents == frozenset({agent})
    statements = count_statements(pg_app)
    assert login(pg_app, master, token, "esp").allowed
    assert statements == []


def test_request_threads_check_for_notifications_without_tripping_each_other(pg_app):
    """Every request thread polls the listener's socket before it trusts the cache. With
    nothing arriving, none of them may fall into a drain: a poll object shared by threads
    refuses a second caller ("concurrent poll() invocation"), which read as "ready" and sent
    logins through the drain lock under load."""
    trusted_cache(pg_app)
    with pg_app.app_context():
        listener = caches.hook_caches().listener
    drains = []
    real_drain = listener._drain
    listener._drain = lambda conn: (drains.append(1), real_drain(conn))

    def requests():
        for _ in range(3000):
            listener.drain_arrived()

    threads = [threading.Thread(target=requests) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert drains == []
