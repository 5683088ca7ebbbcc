"""The meeting registry: one true count, slots taken in one step, and the
count consistent with the actors under any sequence of operations."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mc.meetings import AtCapacity, MeetingRegistry, UnknownMeeting


def registry(meetings=3, participants=30, estimate=10):
    return MeetingRegistry(meetings, participants, estimate, Clock())


def host(r, meeting_id, generation=1):
    return r.commit(r.reserve(meeting_id), generation, ())


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
    m.join("p1")
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


def test_join_leave_idle_and_remove():
    clock = Clock()
    r = MeetingRegistry(5, 100, 1, clock)
    m = r.commit(r.reserve("a"), 7, (("mh", "https://mh:1", "MH_ROLE_PRIMARY"),))
    assert (m.generation, m.participant_count, m.idle_since) == (7, 0, 0)
    m.join("p1")
    m.join("p1")
    m.join("p2")
    assert m.participants == {"p1", "p2"} and r.snapshot().participants == 2
    assert m.idle_since is None
    clock.advance(5)
    m.leave("p1")
    m.leave("nobody")
    m.leave("p2")
    assert m.idle_since == 5 and r.snapshot().participants == 0
    clock.advance(10)
    assert r.idle(10) == [m] and r.idle(11) == []
    m.join("p3")
    assert r.remove("a") is m
    assert r.snapshot() == (0, 0, 5, 100)
    with pytest.raises(UnknownMeeting):
        r.remove("a")


def test_full_observers_hear_each_flip_once():
    r = registry(meetings=1, participants=1000)
    heard = []
    r.on_capacity_change(heard.append)
    m = host(r, "a")
    m.join("p")
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
    for op, n, p in sequence:
        meeting_id, participant = f"m{n}", f"p{p}"
        m = r.get(meeting_id)
        if op == "reserve":
            with contextlib.suppress(AtCapacity, ValueError):
                reservations[meeting_id] = r.reserve(meeting_id)
        elif op in ("commit", "release") and meeting_id in reservations:
            res = reservations.pop(meeting_id)
            r.commit(res, 1, ()) if op == "commit" else r.release(res)
        elif op == "join" and m is not None:
            m.join(participant)
        elif op == "leave" and m is not None:
            m.leave(participant)
        elif op == "remove" and m is not None:
            r.remove(meeting_id)
        snap = r.snapshot()
        assert snap.meetings == len(list(r))
        assert snap.participants == sum(x.participant_count for x in r)
        assert snap.meetings + len(reservations) <= 4
