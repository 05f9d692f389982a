"""Presence bookkeeping without MQTT or a database: the re-PING schedule, offline after three
misses, and the pending `last_seen_at` writes."""

from conftest import new_uuid

from iot_server.pinger.presence import PendingSeen, Presence, pack_uuid, unpack_uuid

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_packed_uuid_round_trip():
    assert unpack_uuid(pack_uuid(UUID)) == UUID


def test_a_device_that_keeps_pinging_is_never_due():
    presence = Presence(interval=15, max_misses=3)
    for now in range(0, 100, 10):
        presence.seen(UUID, now)
        assert presence.sweep(now + 5) == ([], [])
    assert len(presence) == 1


def test_silent_device_is_pinged_three_times_then_offline():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    assert presence.sweep(14.9) == ([], [])
    assert presence.sweep(15) == ([UUID], [])
    assert presence.sweep(29.9) == ([], [])
    assert presence.sweep(30) == ([UUID], [])
    assert presence.sweep(45) == ([UUID], [])
    assert presence.sweep(59.9) == ([], [])
    assert presence.sweep(60) == ([], [UUID])
    assert len(presence) == 0
    assert presence.sweep(1000) == ([], [])


def test_an_answer_forgives_the_misses():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    presence.sweep(15)
    presence.sweep(30)
    presence.seen(UUID, 31)  # the device's PONG
    assert presence.sweep(45) == ([], [])
    assert presence.sweep(46) == ([UUID], [])


def test_late_sweep_pings_once_not_in_a_burst():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    assert presence.sweep(40) == ([UUID], [])  # two intervals late: one PING
    assert presence.sweep(40) == ([], [])
    assert presence.sweep(45) == ([UUID], [])
    assert presence.sweep(100) == ([], [UUID])  # silent far too long


def test_a_device_first_heard_after_a_sweep():
    presence = Presence(interval=15, max_misses=3)
    presence.sweep(10)
    presence.seen(UUID, 12)
    assert presence.sweep(26) == ([], [])
    assert presence.sweep(27) == ([UUID], [])


def test_postpone_all_after_an_outage():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    presence.postpone_all(100)
    assert presence.sweep(114) == ([], [])
    assert presence.sweep(115) == ([UUID], [])


def test_memory_is_bounded_by_the_live_fleet():
    presence = Presence(interval=1, max_misses=3)
    for i in range(1000):
        presence.seen(new_uuid(), i / 1000)
    assert len(presence) == 1000
    for now in (2, 3, 4, 5):
        presence.sweep(now)
    assert len(presence) == 0


def test_pending_keeps_the_latest_time_and_takes_in_batches():
    pending = PendingSeen()
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    pending.add(a, 1.0)
    pending.add(b, 2.0)
    pending.add(a, 3.0)
    pending.add(c, 4.0)
    batch = pending.take(2)
    assert batch == {a: 3.0, b: 2.0}
    assert len(pending) == 1
    pending.add(a, 5.0)  # newer than the batch's value
    pending.restore(batch)
    assert pending.take(10) == {c: 4.0, a: 5.0, b: 2.0}
    assert len(pending) == 0
