"""PeriodicCall on a Clock: the schedule, failures, overlap, rescheduling."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from mc.periodic import PeriodicCall


class Work:
    def __init__(self, clock):
        self.clock = clock
        self.starts = []
        self.outcomes = []  # per run: None, an exception to raise, or "hold"
        self.held = []

    def __call__(self):
        self.starts.append(self.clock.seconds())
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome == "hold":
            d = defer.Deferred()
            self.held.append(d)
            return d
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def rig(interval=1.0):
    clock = Clock()
    work = Work(clock)
    seconds = [interval]
    call = PeriodicCall(lambda: seconds[0], work, clock, "test work")
    return clock, work, call, seconds


def advance(clock, seconds):
    """Advance to each due call in turn, exactly, then to the end."""
    end = clock.seconds() + seconds
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= end]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


def test_runs_every_interval_and_a_failure_does_not_end_it():
    clock, work, call, _ = rig()
    work.outcomes = [None, RuntimeError("boom"), defer.fail(ValueError("late boom"))]
    with capturedLogs() as events:
        call.start()
        advance(clock, 5.005)
    assert [round(t, 2) for t in work.starts] == [1.0, 2.0, 3.0, 4.0, 5.0]
    failures = [e for e in events if "log_failure" in e]
    assert [e["log_failure"].type for e in failures] == [RuntimeError, ValueError]


def test_runs_never_overlap_and_an_overdue_one_follows_at_once():
    clock, work, call, _ = rig()
    work.outcomes = ["hold"]
    call.start(now=True)
    advance(clock, 2.5)
    assert work.starts == [0.0]
    work.held.pop().callback(None)
    assert len(work.starts) == 1
    clock.advance(0)
    assert work.starts == [0.0, 2.5], "overdue: at once, and only once"
    advance(clock, 1.0)
    assert [round(t, 2) for t in work.starts] == [0.0, 2.5, 3.5]


def test_reschedule_counts_the_new_interval_from_the_last_start():
    clock, work, call, seconds = rig(30.0)
    call.start()
    advance(clock, 0.5)
    seconds[0] = 2.0
    call.reschedule()
    advance(clock, 1.49)
    assert work.starts == []
    advance(clock, 0.02)
    assert [round(t, 2) for t in work.starts] == [2.0]
    seconds[0] = 0.5
    call.reschedule()
    clock.advance(0)
    advance(clock, 0.51)
    assert [round(t, 2) for t in work.starts] == [2.0, 2.5]


def test_run_now_runs_at_once_or_once_more_after_the_run_in_flight():
    clock, work, call, _ = rig(10.0)
    call.start()
    done = call.run_now()
    assert work.starts == [0.0] and done.called
    work.outcomes = ["hold"]
    first = call.run_now()
    second, third = call.run_now(), call.run_now()
    assert len(work.starts) == 2 and not first.called
    work.held.pop().callback(None)
    assert first.called and not second.called
    clock.advance(0)
    assert len(work.starts) == 3 and second.called and third.called
    advance(clock, 9.99)
    assert len(work.starts) == 3
    advance(clock, 0.02)
    assert len(work.starts) == 4


def test_stop_waits_for_the_run_in_flight_and_leaves_nothing_scheduled():
    clock, work, call, _ = rig()
    work.outcomes = ["hold"]
    call.start(now=True)
    stopped = call.stop()
    assert not stopped.called
    work.held.pop().callback(None)
    assert stopped.called
    assert clock.getDelayedCalls() == []
    assert call.run_now().called and len(work.starts) == 1


def test_a_broken_interval_is_logged_and_retried_in_a_second():
    clock = Clock()
    work = Work(clock)

    def broken():
        raise KeyError("no interval")

    call = PeriodicCall(broken, work, clock, "test work")
    with capturedLogs() as events:
        call.start()
    assert any("log_failure" in e for e in events)
    clock.advance(1.0)
    assert work.starts == [1.0]
