"""NotifyMeetingEnded through one bounded queue and one sender, on a Clock."""

from twisted.internet.task import Clock

from mc.notices import EndNotices
from mc.testing.doubles import ScriptedGcClient, gc_error
from tests.configs import make_config


def rig(limit=100):
    clock = Clock()
    gc = ScriptedGcClient(clock)
    notices = EndNotices(make_config(), gc, clock, limit=limit)
    notices.start()
    return clock, gc, notices


def sent(gc):
    return [r.meeting_id for r in gc.requests("notify_meeting_ended")]


def test_one_call_at_a_time_in_order_and_a_failure_backs_off_alone():
    clock, gc, notices = rig()
    gc.script("notify_meeting_ended", "hold")
    for m in ("m1", "m2", "m3"):
        notices.add(m)
    assert sent(gc) == ["m1"] and len(notices) == 3, "one in flight, the rest queued"
    gc.script("notify_meeting_ended", gc_error("NotifyMeetingEnded", "UNAVAILABLE"))
    gc.held.pop(0)[1].errback(gc_error("NotifyMeetingEnded", "UNAVAILABLE"))
    assert sent(gc) == ["m1", "m2", "m3"], "m1 waits its backoff, the others go on"
    assert len(notices) == 2  # m1 and m2 (failed too) wait; m3 was told
    clock.advance(30)
    assert sorted(sent(gc)[3:]) == ["m1", "m2"] and len(notices) == 0


def test_hosted_again_is_taken_off_and_invalid_argument_gives_up():
    clock, gc, notices = rig()
    gc.script("notify_meeting_ended", "hold")
    notices.add("m1")
    notices.add("m2")
    notices.cancel("m2")  # accepted again before its notice went out
    notices.cancel("m1")  # ... and the one in flight is cancelled
    assert len(notices) == 0
    gc.script("notify_meeting_ended", gc_error("NotifyMeetingEnded", "INVALID_ARGUMENT"))
    notices.add("m3")
    clock.advance(60)
    assert sent(gc) == ["m1", "m3"] and len(notices) == 0


def test_the_queue_is_bounded_and_stop_waits_for_the_call_in_flight():
    clock, gc, notices = rig(limit=3)
    gc.script("notify_meeting_ended", "hold")
    for i in range(10):
        notices.add(f"m{i}")
    assert len(notices) == 3, "the oldest are dropped past the limit"
    stopped = notices.stop()
    assert stopped.called, "the call in flight was cancelled"
    clock.advance(60)
    assert sent(gc) == ["m0"]
