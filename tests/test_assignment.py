"""The assignment and ownership services' decisions, checks and retries,
driven by a Clock over an in-memory fenced store; plus the request rules and
the token check."""

from collections import defaultdict, deque

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mc.assignment import (
    AT_CAPACITY,
    DRAINING,
    UNHEALTHY,
    AssignmentService,
    InvalidAssignment,
    assignment_record,
    validate_assignment,
)
from mc.config import Secret
from mc.errors import FencedOut, StoreUnavailable
from mc.gc.auth import TokenCheck
from mc.interfaces import IFencedStore, ITokenCheck
from mc.lease import Lease
from mc.meetings import MOVED, MeetingRegistry, Redirect
from mc.ops.health import Health
from mc.ops.metrics import Metrics
from mc.ownership import OwnershipService
from mc.testing.doubles import ScriptedGcClient, gc_error
from tests.configs import make_config

PRIMARY = ("mh-a", "https://mh-a.example:4433", "")
BACKUP = ("mh-b", "https://mh-b.example:4433", "")
MH = (PRIMARY, BACKUP)


# --- the request rules -------------------------------------------------------

@pytest.mark.parametrize("meeting_id, mh, field", [
    ("", MH, "meeting_id"),
    ("a" * 256, MH, "meeting_id"),
    ("meeting.1", MH, "meeting_id"),
    ("meeting-1\n", MH, "meeting_id"),
    (None, MH, "meeting_id"),
    ("m", (), "mh_assignments"),
    ("m", (PRIMARY,) * 17, "mh_assignments"),
    ("m", (("", PRIMARY[1], ""),), "mh_assignments[0].mh_id"),
    ("m", (PRIMARY, (" mh-b", BACKUP[1], "")), "mh_assignments[1].mh_id"),
    ("m", (PRIMARY, ("mh\x00b", BACKUP[1], "")), "mh_assignments[1].mh_id"),
    ("m", (PRIMARY, ("b" * 256, BACKUP[1], "")), "mh_assignments[1].mh_id"),
    ("m", (("mh-a", "mh-a.example:4433", ""),), "mh_assignments[0].webtransport_endpoint"),
    ("m", (PRIMARY, ("mh-b", "https://", "")), "mh_assignments[1].webtransport_endpoint"),
    ("m", (PRIMARY, ("mh-b", "https://u:p@mh-b", "")), "mh_assignments[1].webtransport_endpoint"),
    ("m", (PRIMARY, ("mh-b", "https://mh-b:99999", "")),
     "mh_assignments[1].webtransport_endpoint"),
])
def test_invalid_assignments_name_the_field(meeting_id, mh, field):
    with pytest.raises(InvalidAssignment) as info:
        validate_assignment(meeting_id, mh)
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")


def test_valid_assignments():
    validate_assignment("a" * 255, (PRIMARY,) * 16)
    validate_assignment("Meeting_1-x", (("mh.a:1", "http://[::1]:4433/x", ""),))


def test_assignment_record_is_the_contract_json():
    assert assignment_record((PRIMARY,), 7) == {
        "primary_mh_id": "mh-a", "primary_endpoint": "https://mh-a.example:4433",
        "backup_mh_id": None, "backup_endpoint": None, "assigned_at": 7}
    assert assignment_record(MH + (PRIMARY,), 7)["backup_mh_id"] == "mh-b"


# --- the token check -----------------------------------------------------------

def test_token_check():
    check = TokenCheck((Secret("tok-1"), Secret("tok-2")))
    assert verifyObject(ITokenCheck, check)
    assert check.check("Bearer tok-1") and check.check("Bearer tok-2")
    for bad in (None, b"Bearer tok-1", "", "Bearer ", "bearer tok-1", "Bearer  tok-1",
                "Bearer tok-1 ", "Bearer tok-", "Bearer tok-12", "tok-1", "Bearer tok-3",
                "Bearer \udcff", "Bearer " + "x" * 8193):
        assert not check.check(bad), bad
    assert "tok-1" not in repr(check)
    assert TokenCheck((Secret("x" * 8192),)).check("Bearer " + "x" * 8192)
    with pytest.raises(ValueError):
        TokenCheck(())


# --- the services, on a Clock -------------------------------------------------------

@implementer(IFencedStore)
class MemoryStore:
    """The fencing rule (generation and owner) and the news of lost meetings
    in memory; ``script[method]`` queues outcomes: an exception to fail with,
    or ``"hold"`` to wait for ``held.pop(0).callback(None)``. ``push`` False
    drops the messages (as a cut subscription would); ``lose_data()`` is a
    Redis restarted without persistence."""

    def __init__(self):
        self.connected = True
        self.push = True
        self.generations = {}
        self.mh = {}
        self.state = {}
        self.lost = defaultdict(dict)  # mc_id -> {meeting_id: generation}
        self.marked = set()
        self.listeners = {}
        self.observers = []
        self.calls = []
        self.script = defaultdict(deque)
        self.held = []

    @property
    def reachable(self):
        return self.connected

    def on_change(self, observer):
        self.observers.append(observer)

    def set_connected(self, connected):
        self.connected = connected
        for observer in self.observers:
            observer(connected)

    def listen(self, mc_id, heard):
        self.listeners[mc_id] = heard

    def lose_data(self):
        for kept in (self.generations, self.mh, self.state, self.lost):
            kept.clear()
        self.marked.clear()

    def _do(self, method, meeting_id, fn):
        self.calls.append((method, meeting_id))
        outcome = self.script[method].popleft() if self.script[method] else None
        if outcome == "hold":
            d = defer.Deferred()
            self.held.append(d)
            return d.addCallback(lambda _: fn())
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.maybeDeferred(fn)

    def _fence(self, meeting_id, generation, mc_id):
        stored = self.generations.get(meeting_id)
        owner = self.state.get(meeting_id, {}).get("mc_id")
        if (stored is not None and generation < stored) or owner not in (None, mc_id):
            raise FencedOut(meeting_id, generation, stored or 0)
        self.generations[meeting_id] = max(generation, stored or 0)

    def claim_and_write(self, meeting_id, mc_id, assignment, state, issued_at=None):
        def run():
            g = self.generations[meeting_id] = self.generations.get(meeting_id, 0) + 1
            previous = self.state.get(meeting_id, {}).get("mc_id")
            self.mh[meeting_id] = dict(assignment)
            self.state[meeting_id] = dict(state, mc_id=mc_id, generation=g)
            if previous not in (None, mc_id):
                self.lost[previous][meeting_id] = g
                if self.push and previous in self.listeners:
                    self.listeners[previous]()
            return g
        return self._do("claim_and_write", meeting_id, run)

    def reassert(self, meeting_id, generation, mc_id, assignment, state):
        def run():
            self._fence(meeting_id, generation, mc_id)
            self.mh[meeting_id] = dict(assignment)
            self.state.setdefault(meeting_id, {}).update(state, mc_id=mc_id,
                                                         generation=generation)
            return generation
        return self._do("reassert", meeting_id, run)

    def write_assignment(self, meeting_id, generation, mc_id, assignment):
        def run():
            self._fence(meeting_id, generation, mc_id)
            self.mh[meeting_id] = dict(assignment)
            return generation
        return self._do("write_assignment", meeting_id, run)

    def write_state(self, meeting_id, generation, mc_id, fields):
        def run():
            self._fence(meeting_id, generation, mc_id)
            self.state.setdefault(meeting_id, {}).update(fields, mc_id=mc_id,
                                                         generation=generation)
            return generation
        return self._do("write_state", meeting_id, run)

    def delete(self, meeting_id, generation, mc_id):
        def run():
            self._fence(meeting_id, generation, mc_id)
            self.mh.pop(meeting_id, None)
            self.state.pop(meeting_id, None)
            return generation
        return self._do("delete", meeting_id, run)

    def read_generation(self, meeting_id):
        return defer.succeed(self.generations.get(meeting_id))

    def read_assignment(self, meeting_id):
        return defer.succeed(self.mh.get(meeting_id))

    def news(self, mc_id):
        def run():
            intact = mc_id in self.marked
            self.marked.add(mc_id)  # the read raises the marker
            return intact, sorted(self.lost[mc_id].items())
        return self._do("news", None, run)

    def forget_news(self, mc_id, lost):
        def run():
            for meeting_id, generation in lost:
                if self.lost[mc_id].get(meeting_id) == generation:
                    del self.lost[mc_id][meeting_id]
        return self._do("forget_news", None, run)

    def count(self, method):
        return sum(1 for m, _ in self.calls if m == method)


class Rig:
    def __init__(self, ownership_interval=30.0, **flags):
        self.clock = Clock()
        self.config = make_config(**flags)
        self.store = MemoryStore()
        verifyObject(IFencedStore, self.store)
        self.registry = MeetingRegistry(self.config.max_meetings, self.config.max_participants,
                                        self.config.participant_estimate, self.clock)
        self.health = Health(lambda: self.store.connected, self.config.lag_threshold)
        self.gc = ScriptedGcClient(self.clock)
        self.metrics = Metrics()
        self.interval = ownership_interval
        self.ownership = OwnershipService(self.config, self.store, self.registry, self.gc,
                                          self.clock, self.metrics, lambda: self.interval,
                                          Lease(self.clock, lambda: 3600.0))
        self.service = AssignmentService(self.config, self.store, self.registry, self.health,
                                         self.ownership, self.clock, self.metrics)
        self.ownership.startService()
        self.service.startService()

    def assign(self, meeting_id="meeting-1", mh=MH):
        return self.service.assign(meeting_id, mh, "gc-1")

    def run(self, seconds, step=0.05):
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def stop(self):
        return defer.DeferredList([self.service.stopService(), self.ownership.stopService()])


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


class Sink:
    def __init__(self):
        self.events = []

    def deliver(self, event):
        self.events.append(event)


def test_decision_order():
    rig = Rig()
    rig.store.connected = False
    rig.health.set_draining(True)
    assert result_of(rig.assign()) == (False, DRAINING)
    rig.health.set_draining(False)
    assert result_of(rig.assign()) == (False, UNHEALTHY)
    assert rig.store.calls == []
    rig.store.connected = True
    assert result_of(rig.assign()) == (True, None)
    assert rig.metrics.assignments.labels("rejected", "DRAINING")._value.get() == 1
    assert rig.metrics.assignments.labels("accepted", "")._value.get() == 1


def test_concurrent_assignments_of_one_meeting_share_one_accept():
    rig = Rig(max_meetings=1)
    rig.store.script["claim_and_write"].append("hold")
    first, second = rig.assign(), rig.assign(mh=(BACKUP,))
    assert not first.called and not second.called
    assert result_of(rig.assign("meeting-2")) == (False, AT_CAPACITY)
    rig.store.held.pop(0).callback(None)
    assert result_of(first) == result_of(second) == (True, None)
    assert rig.store.count("claim_and_write") == 1 and len(rig.registry) == 1


def test_a_cancelled_assignment_still_completes_its_accept():
    rig = Rig()
    rig.store.script["claim_and_write"].append("hold")
    d = rig.assign()
    d.cancel()
    assert result_of(d).check(defer.CancelledError)
    rig.store.held.pop(0).callback(None)
    assert rig.service.hosted() == {"meeting-1"}
    assert rig.metrics.assignments.labels("abandoned", "")._value.get() == 1


def test_reassigning_a_lost_meeting_claims_it_afresh():
    rig = Rig(max_meetings=1)
    assert result_of(rig.assign()) == (True, None)
    rig.store.generations["meeting-1"] = 5  # another MC claimed it
    assert result_of(rig.assign()) == (True, None)
    assert rig.registry.get("meeting-1").generation == 6
    assert rig.metrics.fenced_out._value.get() == 1
    assert rig.store.state["meeting-1"]["generation"] == 6


def test_reassign_is_one_store_call_and_keeps_the_generation():
    rig = Rig()
    result_of(rig.assign())
    assert result_of(rig.assign(mh=(BACKUP,))) == (True, None)
    assert [c for c, _ in rig.store.calls if c != "news"] == ["claim_and_write", "reassert"]
    assert rig.registry.get("meeting-1").mh_assignments == (BACKUP,)
    assert rig.store.mh["meeting-1"]["primary_mh_id"] == "mh-b"


def test_reassign_with_redis_failing_is_unhealthy_and_keeps_the_meeting():
    rig = Rig()
    result_of(rig.assign())
    rig.store.script["reassert"].append(StoreUnavailable("down"))
    assert result_of(rig.assign()) == (False, UNHEALTHY)
    assert rig.registry.get("meeting-1").generation == 1


def test_a_claim_by_another_mc_is_heard_at_once_and_its_people_are_moved():
    rig = Rig(ownership_interval=30.0)
    result_of(rig.assign())
    sink = Sink()
    rig.registry.get("meeting-1").admit("user-1", "Ann", sink, 0.0, lambda: "p-1")
    rig.store.claim_and_write("meeting-1", "mc-other", {}, {})
    assert rig.service.hosted() == frozenset()
    assert [type(e) for e in sink.events] == [Redirect] and sink.events[0].reason == MOVED
    assert rig.metrics.fenced_out._value.get() == 1
    assert rig.store.lost["mc-test-1"] == {}, "acted on, then forgotten"
    assert "meeting-1" not in rig.store.state or rig.store.state["meeting-1"]["mc_id"] == \
        "mc-other"


def test_a_missed_message_is_caught_by_the_periodic_check_within_the_interval():
    rig = Rig(ownership_interval=10.0)
    result_of(rig.assign())
    rig.run(1)
    rig.store.push = False
    rig.store.claim_and_write("meeting-1", "mc-other", {}, {})
    claimed = rig.clock.seconds()
    while rig.service.hosted():
        rig.clock.advance(0.05)
        assert rig.clock.seconds() - claimed <= 10.0
    assert rig.clock.seconds() - claimed <= 5.0 + 0.05, "half the interval"


def test_news_held_for_an_accept_in_flight_is_acted_on_when_it_settles():
    """News of a claim that arrives while our own accept of the meeting is in
    flight may be of a claim before ours or after it: it waits for the accept
    and is read again the moment the accept settles, not a check later."""
    for ours_last in (True, False):
        rig = Rig(ownership_interval=10.0, max_meetings=5)
        rig.store.marked.add("mc-test-1")
        rig.store.claim_and_write("meeting-1", "mc-test-1", {}, {})  # ours once, long ago
        rig.store.script["claim_and_write"].append("hold")
        accepting = rig.assign()  # our claim is in flight ...
        rig.store.push = False
        rig.store.claim_and_write("meeting-1", "mc-other", {}, {})  # ... another lands first
        rig.store.script["claim_and_write"].clear()
        result_of(rig.ownership.check())
        assert rig.store.lost["mc-test-1"] == {"meeting-1": 2}, "kept: our accept is in flight"
        if not ours_last:  # Redis ran ours first: the other's claim is the newer one
            rig.store.generations["meeting-1"] = 1
        rig.store.held.pop(0).callback(None)
        assert result_of(accepting) == (True, None)
        if not ours_last:
            rig.store.lost["mc-test-1"]["meeting-1"] = 3
            rig.store.generations["meeting-1"] = 3
            rig.ownership.check()
        expected = frozenset({"meeting-1"}) if ours_last else frozenset()
        assert rig.service.hosted() == expected, ours_last
        assert rig.store.lost["mc-test-1"] == {}


def test_no_store_work_per_hosted_meeting_while_idle():
    rig = Rig(ownership_interval=2.0, meeting_idle=3600)
    rig.run(1.1)  # the first check sets the marker (the recovery does, in the MC)
    for i in range(500):
        result_of(rig.assign(f"m-{i}"))
    before = len(rig.store.calls)
    rig.run(60, step=0.5)
    calls = rig.store.calls[before:]
    assert {c for c, _ in calls} == {"news"}
    assert len(calls) <= 60 / 1.0 + 1, "one news read per half interval"


def test_the_first_check_follows_the_interval_the_gc_dictates():
    rig = Rig(ownership_interval=30.0)
    assert rig.store.count("news") == 0
    rig.run(0.5)
    rig.interval = 3.0  # the GC's registration answer
    rig.ownership.intervals_changed()
    rig.run(0.95)
    assert rig.store.count("news") == 0
    rig.run(0.1)
    assert rig.store.count("news") == 1, "one dictated half-interval after start"
    rig.interval = 60.0
    rig.ownership.intervals_changed()
    rig.run(29.9)
    assert rig.store.count("news") == 1
    rig.run(0.2)
    assert rig.store.count("news") == 2


def test_back_from_an_outage_the_check_runs_at_once():
    rig = Rig()
    rig.run(15.1)
    reads = rig.store.count("news")
    rig.store.set_connected(False)
    rig.store.set_connected(True)
    assert rig.store.count("news") == reads + 1


def test_a_redis_that_lost_its_data_gets_every_meeting_written_back():
    rig = Rig(ownership_interval=4.0)
    for m in ("m-1", "m-2", "m-3"):
        result_of(rig.assign(m))
    rig.run(2.1)
    assert rig.store.marked == {"mc-test-1"}
    rig.store.lose_data()
    rig.store.claim_and_write("m-2", "mc-other", {}, {})  # placed elsewhere meanwhile: 1
    rig.store.script["reassert"].append(StoreUnavailable("blip"))
    rig.run(2)
    assert rig.ownership._lost._write_back_due, "a failed write-back is done again"
    assert "m-1" not in rig.store.state
    rig.run(2)
    assert rig.service.hosted() == {"m-1", "m-3"}, "m-2 is fenced out by its owner"
    assert rig.store.state["m-1"]["mc_id"] == "mc-test-1"
    assert rig.store.state["m-2"]["mc_id"] == "mc-other"
    assert not rig.ownership._lost._write_back_due


def test_idle_end_retries_a_failed_delete_then_notifies_with_backoff():
    rig = Rig(meeting_idle=1)
    result_of(rig.assign())
    m = rig.registry.get("meeting-1")
    p = m.admit("user-1", "Ann", None, rig.clock.seconds(), lambda: "p-1")
    rig.run(3)
    assert rig.service.hosted() == {"meeting-1"}  # not idle while someone is in it
    m.leave(p, "VOLUNTARY", rig.clock.seconds())
    rig.store.script["delete"].append(StoreUnavailable("down"))
    rig.gc.script("notify_meeting_ended", gc_error("NotifyMeetingEnded", "UNAVAILABLE"),
                  gc_error("NotifyMeetingEnded", "UNAVAILABLE"))
    rig.run(1.5)
    assert rig.store.count("delete") == 2
    assert rig.service.hosted() == frozenset() and "meeting-1" not in rig.store.state
    rig.run(4)
    times = rig.gc.times("notify_meeting_ended")
    assert len(times) == 3
    assert 0.75 <= times[1] - times[0] <= 1.05 and 1.5 <= times[2] - times[1] <= 2.05
    [request] = rig.gc.requests("notify_meeting_ended")[-1:]
    assert (request.meeting_id, request.region) == ("meeting-1", "us-east-1")
    assert rig.metrics.meetings_ended.labels("idle")._value.get() == 1


def test_the_idle_check_looks_only_at_the_meetings_that_expired():
    clock = Clock()
    registry = MeetingRegistry(10_000, 10**9, 1, clock)
    for i in range(5000):  # idle since 0.000, 0.001, ... 4.999
        registry.commit(registry.reserve(f"m-{i}"), 1, MH)
        clock.advance(0.001)
    first = registry.get("m-0")
    p = first.admit("user-1", "Ann", Sink(), clock.seconds(), lambda: "p-1")
    clock.advance(10)
    first.leave(p, "VOLUNTARY", clock.seconds())  # idle again, now the newest
    now = clock.seconds()
    assert [m.meeting_id for m in registry.idle(now - 0.0035)] == ["m-1", "m-2", "m-3"]
    assert registry.idle(now) == [], "nothing is idle that long"
    assert registry.idle(0.0)[-1] is first
    registry.remove("m-1")
    assert [m.meeting_id for m in registry.idle(now - 0.0035)] == ["m-2", "m-3"]
    registry.get("m-2").idle_since = now  # assigned again: waits afresh
    assert [m.meeting_id for m in registry.idle(now - 0.0035)] == ["m-3"]


def _spy(fn, before):
    def spy(*args):
        before()
        return fn(*args)
    return spy


def test_a_fenced_out_delete_counts_as_fenced_out():
    rig = Rig(meeting_idle=1)
    result_of(rig.assign())
    rig.store.generations["meeting-1"] = 9
    rig.run(1.5)
    assert rig.service.hosted() == frozenset()
    assert rig.metrics.fenced_out._value.get() == 1
    assert rig.gc.requests("notify_meeting_ended") == []


def test_an_assignment_during_an_end_waits_and_decides_afresh():
    rig = Rig(meeting_idle=1)
    result_of(rig.assign())
    rig.store.script["delete"].append("hold")
    rig.run(1.5)
    d = rig.assign()
    assert not d.called
    rig.store.held.pop(0).callback(None)
    assert result_of(d) == (True, None)
    assert rig.registry.get("meeting-1").generation == 2
    assert rig.store.state["meeting-1"]["generation"] == 2


def test_stop_cancels_retries_and_waits_for_work_in_flight():
    rig = Rig(meeting_idle=1)
    result_of(rig.assign())
    rig.gc.script("notify_meeting_ended",
                  *[gc_error("NotifyMeetingEnded", "UNAVAILABLE")] * 50)
    rig.run(1.5)
    assert len(rig.gc.requests("notify_meeting_ended")) == 1
    rig.store.script["claim_and_write"].append("hold")
    accepting = rig.assign("meeting-2")
    stopped = rig.stop()
    assert not stopped.called
    rig.store.held.pop(0).callback(None)
    assert result_of(accepting) == (True, None)
    result_of(stopped)
    assert rig.clock.getDelayedCalls() == []
    assert result_of(rig.assign("meeting-3")) == (False, DRAINING)


def test_invalid_argument_from_the_gc_gives_up_notifying():
    rig = Rig(meeting_idle=1)
    result_of(rig.assign())
    rig.gc.script("notify_meeting_ended", gc_error("NotifyMeetingEnded", "INVALID_ARGUMENT"))
    rig.run(10)
    assert len(rig.gc.requests("notify_meeting_ended")) == 1


@pytest.mark.parametrize("level,logged", [("debug", True), ("info", False)])
def test_each_answer_is_logged_only_at_debug(level, logged):
    rig = Rig(log_level=level)
    with capturedLogs() as events:
        assert result_of(rig.assign()) == (True, None)
        rig.health.set_draining(True)
        assert result_of(rig.assign("meeting-2")) == (False, DRAINING)
    lines = [e for e in events if e.get("meeting_id") in ("meeting-1", "meeting-2")]
    assert bool(lines) == logged
    if logged:
        assert {e["log_level"] for e in lines} == {LogLevel.debug}
