"""Presence bookkeeping without MQTT or a database: the re-PING schedule, offline after three
misses, and the pending `last_seen_at` writes."""

from conftest import new_uuid

from iot_server.pinger.presence import (
    DuePings,
    PendingSeen,
    Presence,
    pack_uuid,
    unpack_all,
    unpack_uuid,
)

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def swept(presence: Presence, now: float) -> tuple[list[str], list[str]]:
    """A sweep's packed answer as uuids: (to PING, offline)."""
    due, offline = presence.sweep(now)
    return unpack_all(due), unpack_all(offline)


def test_packed_uuid_round_trip():
    assert unpack_uuid(pack_uuid(UUID)) == UUID


def test_a_device_that_keeps_pinging_is_never_due():
    presence = Presence(interval=15, max_misses=3)
    for now in range(0, 100, 10):
        presence.seen(UUID, now)
        assert swept(presence, now + 5) == ([], [])
    assert len(presence) == 1


def test_silent_device_is_pinged_three_times_then_offline():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    assert swept(presence, 14.9) == ([], [])
    assert swept(presence, 15) == ([UUID], [])
    assert swept(presence, 29.9) == ([], [])
    assert swept(presence, 30) == ([UUID], [])
    assert swept(presence, 45) == ([UUID], [])
    assert swept(presence, 59.9) == ([], [])
    assert swept(presence, 60) == ([], [UUID])
    assert len(presence) == 0
    assert swept(presence, 1000) == ([], [])


def test_an_answer_forgives_the_misses():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    swept(presence, 15)
    swept(presence, 30)
    presence.seen(UUID, 31)  # the device's PONG
    assert swept(presence, 45) == ([], [])
    assert swept(presence, 46) == ([UUID], [])


def test_late_sweep_pings_once_not_in_a_burst():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    assert swept(presence, 40) == ([UUID], [])  # two intervals late: one PING
    assert swept(presence, 40) == ([], [])
    assert swept(presence, 45) == ([UUID], [])
    assert swept(presence, 100) == ([], [UUID])  # silent far too long


def test_a_device_first_heard_after_a_sweep():
    presence = Presence(interval=15, max_misses=3)
    presence.sweep(10)
    presence.seen(UUID, 12)
    assert swept(presence, 26) == ([], [])
    assert swept(presence, 27) == ([UUID], [])


def test_postpone_all_after_an_outage():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    presence.postpone_all(100)
    assert swept(presence, 114) == ([], [])
    assert swept(presence, 115) == ([UUID], [])


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


def test_a_late_sweep_lists_a_device_once_whatever_ranges_it_falls_in():
    presence = Presence(interval=15, max_misses=3)
    uuids = [new_uuid() for _ in range(50)]
    for i, uuid in enumerate(uuids):
        presence.seen(uuid, i / 10)  # all within 5 s
    due, offline = swept(presence, 50)  # past the first, second and third PING of them all
    assert sorted(due) == sorted(uuids)
    assert offline == []


def test_a_whole_fleet_due_at_once_is_returned_compactly():
    """After a broker outage every clock restarts together: 100,000 devices fall due in one
    sweep, and come back as one bytes object, not 100,000 Python strings."""
    presence = Presence(interval=15, max_misses=3)
    uuids = [new_uuid() for _ in range(100_000)]
    for uuid in uuids:
        presence.seen(uuid, 0)
    presence.postpone_all(10)
    due, offline = presence.sweep(25)
    assert isinstance(due, bytes) and len(due) == 16 * 100_000
    assert set(unpack_all(due)) == set(uuids)
    assert offline == b""


def test_due_pings_come_out_oldest_first_in_slices():
    due = DuePings(max_age=15)
    first, second = [new_uuid() for _ in range(5)], [new_uuid() for _ in range(3)]
    due.add(b"".join(map(pack_uuid, first)), now=0)
    due.add(b"", now=0.5)  # an empty sweep queues nothing
    due.add(b"".join(map(pack_uuid, second)), now=1)
    assert len(due) == 8
    assert due.take(2, now=1) == (first[:2], 0)
    assert due.take(4, now=1) == (first[2:] + second[:1], 0)
    assert len(due) == 2
    assert due.take(100, now=1) == (second[1:], 0)
    assert len(due) == 0
    assert due.take(100, now=1) == ([], 0)


def test_due_pings_waiting_longer_than_an_interval_are_dropped_not_sent_late():
    due = DuePings(max_age=15)
    old, new = [new_uuid() for _ in range(4)], [new_uuid() for _ in range(2)]
    due.add(b"".join(map(pack_uuid, old)), now=0)
    assert due.take(1, now=1) == (old[:1], 0)
    due.add(b"".join(map(pack_uuid, new)), now=10)
    assert due.take(10, now=15.5) == (new, 3)  # the three left of the first sweep are stale
    assert len(due) == 0


def test_due_pings_clear_says_how_many_were_waiting():
    due = DuePings(max_age=15)
    due.add(b"".join(pack_uuid(new_uuid()) for _ in range(7)), now=0)
    due.take(2, now=0)
    assert due.clear() == 5
    assert len(due) == 0
