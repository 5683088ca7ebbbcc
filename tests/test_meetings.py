"""The meeting registry: one true count, slots taken in one step, and the
count consistent with the actors under any sequence of operations."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mc.meetings import (
    MOVED,
    TIMEOUT,
    VOLUNTARY,
    AtCapacity,
    Joined,
    Left,
    MeetingRegistry,
    MuteChanged,
    Redirect,
    UnknownMeeting,
)


def registry(meetings=3, participants=30, estimate=10, per_meeting=1000):
    return MeetingRegistry(meetings, participants, estimate, Clock(),
                           max_participants_per_meeting=per_meeting)


def host(r, meeting_id, generation=1):
    return r.commit(r.reserve(meeting_id), generation, ())


class Sink:
    def __init__(self):
        self.events = []

    def deliver(self, event):
        self.events.append(event)


_ids = iter(range(10**9))


def admit(m, name="Ann", now=0.0, sink=None):
    return m.admit("user-" + name, name, sink or Sink(), now, lambda: f"p{next(_ids)}")


def test_capacity_on_meetings_counts_pending_slots():
    r = registry(meetings=2, participants=1000)
    host(r, "a")
    pending = r.reserve("b")
    with pytest.raises(AtCapacity) as e:
        r.reserve("c")
    assert e.value.resource == "meetings"
    r.release(pending)
    host(r, "c")
    assert r.snapshot().meetings == 2


def test_capacity_on_participants_counts_the_estimate_of_pending_slots():
    r = registry(meetings=10, participants=15, estimate=10)
    m = host(r, "a")
    r.reserve("b")
    with pytest.raises(AtCapacity) as e:
        r.reserve("c")
    assert e.value.resource == "participants"
    admit(m)
    assert r.snapshot().participants == 1


def test_a_meeting_has_one_slot():
    r = registry()
    host(r, "a")
    with pytest.raises(ValueError):
        r.reserve("a")
    res = r.reserve("b")
    r.commit(res, 1, ())
    with pytest.raises(ValueError):
        r.commit(res, 1, ())
    r.release(res)
    assert r.get("b") is not None


def test_admit_leave_idle_and_remove():
    clock = Clock()
    r = MeetingRegistry(5, 100, 1, clock)
    m = r.commit(r.reserve("a"), 7, (("mh", "https://mh:1", ""),))
    assert (m.generation, m.participant_count, m.idle_since) == (7, 0, 0)
    assert m.media_servers == ("https://mh:1",)
    p1, p2 = admit(m, "Ann", now=1.5), admit(m, "Bob")
    assert (p1.user_id, p2.user_id) == (1, 2) and p1.joined_at_ms == 1500
    assert m.participants == (p1, p2) and r.snapshot().participants == 2
    assert m.idle_since is None
    m.leave(p1, VOLUNTARY, now=5)
    m.leave(p1, VOLUNTARY, now=6)
    m.leave(p2, TIMEOUT, now=5)
    assert m.idle_since == 5 and r.snapshot().participants == 0
    clock.advance(15)
    assert r.idle(10) == [m] and r.idle(11) == []
    p3 = admit(m, "Cy")
    assert p3.user_id == 3  # never reused within the meeting
    assert r.remove("a") is m
    assert r.snapshot() == (0, 0, 5, 100) and not m.hosted
    m.leave(p3, VOLUNTARY, now=16)  # a participant of a removed meeting leaving: no count
    assert r.snapshot().participants == 0
    with pytest.raises(UnknownMeeting):
        r.remove("a")
    with pytest.raises(UnknownMeeting):
        admit(m)


def test_fan_out_reaches_everyone_else_with_one_shared_event():
    r = registry()
    m = host(r, "a")
    ann, bob = admit(m, "Ann"), admit(m, "Bob")
    cy = admit(m, "Cy")
    [joined_bob] = ann.sink.events[:1]
    assert isinstance(joined_bob, Joined) and joined_bob.participant_id == bob.participant_id
    assert ann.sink.events[1] is bob.sink.events[0]  # Cy's arrival: one object for all
    assert cy.sink.events == []
    m.set_mute(bob, True, False)
    for p in (ann, bob, cy):
        assert isinstance(p.sink.events[-1], MuteChanged)
        assert (p.sink.events[-1].audio_muted, p.sink.events[-1].video_muted) == (True, False)
    assert bob.muted
    cy_sink = cy.sink
    m.leave(cy, VOLUNTARY, now=1)
    assert isinstance(ann.sink.events[-1], Left) and ann.sink.events[-1].reason == VOLUNTARY
    assert cy.sink is None and not any(isinstance(e, Left) for e in cy_sink.events)
    ann_sink, bob_sink = ann.sink, bob.sink
    before = len(ann_sink.events)
    m.redirect_all(MOVED, now=2)
    assert isinstance(ann_sink.events[-1], Redirect) and ann_sink.events[-1].reason == MOVED
    # Everyone goes at once: nobody hears of the others leaving.
    assert ann_sink.events[-1] is bob_sink.events[-1]
    assert len(ann_sink.events) == before + 1
    assert m.participant_count == 0 and m.idle_since == 2


def test_participant_caps_per_meeting_and_per_mc():
    r = registry(meetings=3, participants=3, estimate=0, per_meeting=2)
    a, b = host(r, "a"), host(r, "b")
    admit(a), admit(a)
    with pytest.raises(AtCapacity) as e:
        admit(a)
    assert e.value.resource == "meeting"
    admit(b)
    with pytest.raises(AtCapacity) as e:
        admit(b)
    assert e.value.resource == "participants"
    assert r.snapshot().participants == 3


def test_full_observers_hear_each_flip_once():
    r = registry(meetings=1, participants=1000)
    heard = []
    r.on_capacity_change(heard.append)
    m = host(r, "a")
    admit(m)
    r.remove("a")
    assert heard == [True, False]


ops = st.lists(st.tuples(st.sampled_from(["reserve", "commit", "release", "join", "leave",
                                          "remove"]),
                         st.integers(0, 5), st.integers(0, 6)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_counts_match_the_actors_whatever_the_order(sequence):
    r = registry(meetings=4, participants=40, estimate=5)
    reservations = {}
    people = {}
    for op, n, p in sequence:
        meeting_id = f"m{n}"
        m = r.get(meeting_id)
        if op == "reserve":
            with contextlib.suppress(AtCapacity, ValueError):
                reservations[meeting_id] = r.reserve(meeting_id)
        elif op in ("commit", "release") and meeting_id in reservations:
            res = reservations.pop(meeting_id)
            r.commit(res, 1, ()) if op == "commit" else r.release(res)
        elif op == "join" and m is not None:
            with contextlib.suppress(AtCapacity):
                people[(n, p)] = admit(m)
        elif op == "leave" and (n, p) in people:
            person = people.pop((n, p))
            person.meeting.leave(person, VOLUNTARY, now=0)
        elif op == "remove" and m is not None:
            r.remove(meeting_id)
        snap = r.snapshot()
        assert snap.meetings == len(list(r))
        assert snap.participants == sum(x.participant_count for x in r)
        assert snap.meetings + len(reservations) <= 4
