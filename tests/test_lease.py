"""The hosting lease on a Clock: it holds for its bound after the start of
the read that confirmed it, its lapse sends every participant back to the GC
and refuses joins, and the meetings are written back (fenced) before it is
taken again."""

from twisted.internet.task import Clock

from mc.lease import READS_PER_BOUND, Lease
from mc.ops.health import HEALTHY, UNHEALTHY, Health
from tests.test_assignment import Rig, Sink, result_of
from tests.test_signaling import Rig as JoinRig
from tests.test_signaling import received


def test_valid_for_its_bound_after_the_read_started():
    clock = Clock()
    clock.advance(100)
    bound = [2.0]
    lease = Lease(clock, lambda: bound[0])
    changes = []
    lease.on_change(changes.append)
    assert not lease.valid and not lease.lapsed  # never confirmed
    lease.confirm(started=99.5)
    assert lease.valid and changes == [True]
    clock.advance(1.4)
    assert lease.valid
    clock.advance(0.1)  # 101.5 = 99.5 + 2
    assert not lease.valid and lease.lapsed and changes == [True, False]
    lease.confirm(started=99.4)  # a read that started too long ago: no use
    assert not lease.valid and changes == [True, False]
    lease.confirm(started=clock.seconds())
    assert lease.valid and not lease.lapsed and changes == [True, False, True]
    lease.confirm(started=clock.seconds() - 1)  # older than the one that holds: no change
    clock.advance(1.99)
    assert lease.valid
    lease.stop()
    assert not clock.getDelayedCalls()


def test_a_lapse_sends_everyone_away_refuses_joins_and_is_unhealthy():
    rig = Rig(ownership_interval=30.0)
    lease = Lease(rig.clock, lambda: 2.0)
    rig.ownership._lost._lease = lease  # the rig's lease is long; this one is short
    lease.on_change(rig.ownership._lost._lease_changed)
    rig.health = Health(lambda: rig.store.connected, 0.5, hosting=lambda: lease.valid)
    rig.service._health = rig.health
    rig.store.marked.add("mc-test-1")
    assert result_of(rig.assign()) == (False, UNHEALTHY), "not before the first confirmation"
    result_of(rig.ownership.check())
    assert lease.valid and rig.health.status == HEALTHY
    assert result_of(rig.assign()) == (True, None)
    sink = Sink()
    rig.registry.get("meeting-1").admit("user-1", "Ann", sink, rig.clock.seconds(),
                                        lambda: "p-1")

    rig.store.connected = False  # Redis unreachable: reads are skipped
    rig.clock.advance(1.9)
    assert lease.valid and sink.events == []
    rig.clock.advance(0.1)
    assert not lease.valid and rig.health.status == UNHEALTHY
    assert [(type(e).__name__, e.reason) for e in sink.events] == [("Redirect", "moved")]
    assert rig.registry.get("meeting-1").participant_count == 0
    assert result_of(rig.assign("meeting-2")) == (False, UNHEALTHY)

    # Redis answers again, and another MC claimed the meeting meanwhile: the
    # write-back is fenced, the meeting dropped, the lease taken again.
    rig.store.connected = True
    rig.store.push = False
    rig.store.claim_and_write("meeting-1", "mc-other", {}, {})
    rig.store.lost["mc-test-1"].clear()  # the news itself was lost: the fence still tells
    before = rig.store.count("reassert")
    result_of(rig.ownership.check())
    assert rig.store.count("reassert") == before + 1
    assert rig.service.hosted() == frozenset() and lease.valid
    assert rig.health.status == HEALTHY


def test_reads_run_several_times_per_bound():
    rig = Rig(ownership_interval=30.0)
    assert rig.ownership._lost._check_interval() == 15.0  # the rig's lease is an hour
    lease = Lease(rig.clock, lambda: 2.0)
    rig.ownership._lost._lease = lease
    assert rig.ownership._lost._check_interval() == 2.0 / READS_PER_BOUND


def test_joins_are_redirected_while_the_lease_has_lapsed_or_the_meeting_ends():
    rig = JoinRig()
    hosting = [False]
    rig.health = Health(lambda: True, 1.0, hosting=lambda: hosting[0])
    rig.joins._health = rig.health
    _, t = rig.join("Ann")
    m = received(t)[-1]
    assert (m.redirect_to_mc.meeting_id, m.redirect_to_mc.reason) == ("m-1", "moved")
    assert t.finished and rig.joins_total("redirected") == 1
    hosting[0] = True
    rig.meeting.ending = True
    _, t = rig.join("Bob")
    assert received(t)[-1].redirect_to_mc.reason == "moved"
    rig.meeting.ending = False
    _, t = rig.join("Cy")
    assert received(t)[-1].HasField("join_response")
