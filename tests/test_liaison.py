"""The GC liaison driven by a Clock and a scripted GC client."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mc.backoff import CAPPED_ATTEMPT, MAX_DELAY, retry_policy
from mc.gc.liaison import GcLiaison
from mc.gc.registration import BACKING_OFF, REGISTERED, REGISTERING, WAITING_FOR_TOKEN
from mc.interfaces import IGcClient, IServiceIdentity
from mc.meetings import MeetingRegistry
from mc.ops.health import DRAINING, Health
from mc.ops.metrics import Metrics
from mc.proto import gc_mc_pb2 as pb
from mc.testing.doubles import ScriptedGcClient, gc_error
from tests.configs import make_config


@implementer(IServiceIdentity)
class LateIdentity:
    """A service identity whose token comes when the test says so."""

    def __init__(self):
        self.ready = False
        self._waiters = []

    def metadata(self):
        return (("authorization", "Bearer t"),) if self.ready else None

    def when_ready(self):
        d = defer.Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    def expiry_seconds(self):
        return 60.0 if self.ready else 0.0

    def arrive(self):
        self.ready = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


class Rig:
    def __init__(self, rng=lambda: 0.0, identity=None, **cfg):
        self.clock = Clock()
        self.config = make_config(**cfg)
        self.client = ScriptedGcClient(self.clock)
        verifyObject(IGcClient, self.client)
        self.redis_up = True
        self.registry = MeetingRegistry(self.config.max_meetings, self.config.max_participants,
                                        self.config.participant_estimate, self.clock)
        self.health = Health(lambda: self.redis_up, self.config.lag_threshold)
        self.metrics = Metrics()
        self.liaison = GcLiaison(self.config, self.client, self.registry, self.health,
                                 self.clock, self.metrics, rng=rng, identity=identity)

    def advance(self, seconds):
        """Advance to each due call in turn, exactly, then to the end."""
        clock = self.clock
        end = clock.seconds() + seconds
        while True:
            due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= end]
            if not due:
                break
            clock.advance(max(0.0, min(due) - clock.seconds()))
        clock.advance(max(0.0, end - clock.seconds()))


@pytest.fixture
def rig():
    r = Rig()
    yield r
    if r.liaison.running:
        r.liaison.stopService()


def unavailable(method="RegisterMC"):
    return gc_error(method, "UNAVAILABLE")


def test_backoff_sequence_cap_and_jitter_bounds():
    nominal = retry_policy(rng=lambda: 0.0)
    assert [nominal(i) for i in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    lowest = retry_policy(rng=lambda: 1.0)
    for i in range(10):
        assert nominal(i) * 0.75 == pytest.approx(lowest(i))
        assert lowest(i) <= nominal(i) <= 30
    spread = retry_policy()
    samples = [spread(3) for _ in range(500)]
    assert min(samples) >= 6.0 and max(samples) <= 8.0
    assert max(samples) - min(samples) >= 0.2 * 8 * 0.9


def test_registration_retries_with_capped_backoff(rig):
    rig.client.script("register", *[unavailable()] * 8)
    rig.liaison.startService()
    expected_gaps = [1, 2, 4, 8, 16, 30, 30, 30]
    rig.advance(sum(expected_gaps) + 0.5)
    times = rig.client.times("register")
    gaps = [round(b - a, 1) for a, b in zip(times, times[1:], strict=False)]
    assert gaps == expected_gaps
    assert rig.liaison.registered
    assert rig.metrics.registered._value.get() == 1


def test_registration_request_passes_gc_rules(rig):
    rig.liaison.startService()
    (req,) = rig.client.requests("register")
    assert req.id == "mc-test-1"
    assert req.region == "us-east-1"
    assert req.grpc_endpoint == "http://mc-test-1.example:50052"
    assert req.webtransport_endpoint == "https://mc-test-1.example:4433"
    assert (req.max_meetings, req.max_participants) == (1000, 10000)


def test_rejected_registration_logged_at_error_and_retried(rig):
    rig.client.script("register", pb.RegisterMCResponse(accepted=False, message="region full"))
    with capturedLogs() as events:
        rig.liaison.startService()
    assert not rig.liaison.registered
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert errors and errors[0]["gc_message"] == "region full"
    rig.advance(1.1)
    assert rig.liaison.registered


def test_invalid_argument_logged_loudly_and_retried_at_cap(rig):
    rig.client.script("register", gc_error("RegisterMC", "INVALID_ARGUMENT", "bad region"))
    with capturedLogs() as events:
        rig.liaison.startService()
    assert any(e["log_level"] == LogLevel.critical for e in events)
    rig.advance(29.0)
    assert len(rig.client.requests("register")) == 1
    rig.advance(1.1)
    assert len(rig.client.requests("register")) == 2
    assert rig.liaison.registered


def test_gc_intervals_honoured_and_first_fast_heartbeat_immediate():
    r = Rig()
    r.client.script("register", pb.RegisterMCResponse(
        accepted=True, fast_heartbeat_interval_ms=2000, comprehensive_heartbeat_interval_ms=5000))
    r.liaison.startService()
    assert r.client.times("fast_heartbeat") == [0]
    r.advance(10.05)
    assert r.client.times("fast_heartbeat") == pytest.approx([0, 2, 4, 6, 8, 10])
    assert r.client.times("comprehensive_heartbeat") == pytest.approx([5, 10])
    r.liaison.stopService()


def test_each_registration_tells_the_dictated_intervals_at_once():
    r = Rig()
    heard = []
    r.liaison.on_intervals(lambda: heard.append(
        (r.clock.seconds(), r.liaison.fast_interval, r.liaison.comprehensive_interval)))
    r.liaison.on_intervals(lambda: 1 / 0)  # a broken observer harms no other
    r.client.script("register", pb.RegisterMCResponse(
        accepted=True, fast_heartbeat_interval_ms=2000, comprehensive_heartbeat_interval_ms=4000),
        pb.RegisterMCResponse(accepted=True, fast_heartbeat_interval_ms=1000,
                              comprehensive_heartbeat_interval_ms=3000))
    r.client.script("fast_heartbeat", gc_error("FastHeartbeat", "NOT_FOUND"))
    r.liaison.startService()
    r.advance(0.5)
    assert heard == [(0, 2.0, 4.0), (0, 1.0, 3.0)], "and again on the re-registration"
    r.liaison.stopService()


def test_zero_interval_keeps_default():
    r = Rig()
    r.client.script("register", pb.RegisterMCResponse(accepted=True))
    r.liaison.startService()
    assert (r.liaison.fast_interval, r.liaison.comprehensive_interval) == (10.0, 30.0)
    r.advance(30.05)
    assert r.client.times("fast_heartbeat") == pytest.approx([0, 10, 20, 30])
    assert r.client.times("comprehensive_heartbeat") == pytest.approx([30])
    r.liaison.stopService()


def test_heartbeat_fields(rig):
    rig.liaison.startService()
    rig.health.cpu_percent, rig.health.memory_percent = 12.5, 40.0
    rig.advance(30.05)
    fast = rig.client.requests("fast_heartbeat")[0]
    assert fast.controller_id == "mc-test-1"
    assert fast.health == pb.HEALTHY
    assert fast.capacity == pb.ControllerCapacity(max_meetings=1000, max_participants=10000)
    comp = rig.client.requests("comprehensive_heartbeat")[0]
    assert comp.cpu_usage_percent == 12.5 and comp.memory_usage_percent == 40.0
    assert comp.HasField("capacity")


def test_slow_heartbeat_never_overlaps_and_missed_ticks_skipped(rig):
    rig.liaison.startService()
    rig.client.script("fast_heartbeat", "hold")
    rig.advance(10.05)
    assert len(rig.client.requests("fast_heartbeat")) == 2
    rig.advance(35)
    assert len(rig.client.requests("fast_heartbeat")) == 2
    _, held = rig.client.held[0]
    held.callback(pb.FastHeartbeatResponse(acknowledged=True))
    rig.advance(4.8)
    assert len(rig.client.times("fast_heartbeat")) == 2
    rig.advance(0.2)
    assert rig.client.times("fast_heartbeat") == pytest.approx([0, 10, 50])


def test_not_found_reregisters_and_resumes_with_new_intervals(rig):
    rig.liaison.startService()
    rig.client.script("fast_heartbeat", gc_error("FastHeartbeat", "NOT_FOUND"))
    rig.client.script("register", unavailable(), pb.RegisterMCResponse(
        accepted=True, fast_heartbeat_interval_ms=3000, comprehensive_heartbeat_interval_ms=6000))
    rig.advance(10.05)
    assert not rig.liaison.registered
    assert len(rig.client.requests("register")) == 2
    rig.advance(1.0)
    assert rig.liaison.registered and rig.liaison.fast_interval == 3.0
    t0 = rig.client.times("register")[-1]
    rig.advance(6.05)
    fast_after = [t for t in rig.client.times("fast_heartbeat") if t >= t0]
    assert fast_after == pytest.approx([t0, t0 + 3, t0 + 6])
    assert [t for t in rig.client.times("comprehensive_heartbeat") if t >= t0] == \
        pytest.approx([t0 + 6])


def test_other_heartbeat_errors_counted_and_rate_limited_in_logs(rig):
    rig.liaison.startService()
    rig.client.script("fast_heartbeat", *[unavailable("FastHeartbeat")] * 30)
    rig.client.script("comprehensive_heartbeat", *[unavailable("ComprehensiveHeartbeat")] * 30)
    with capturedLogs() as events:
        rig.advance(100.05)
    assert rig.liaison.registered
    assert rig.liaison.consecutive_failures == 10 + 3
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert 1 < len(warnings) <= 11
    rig.client.scripts["fast_heartbeat"].clear()
    rig.client.scripts["comprehensive_heartbeat"].clear()
    rig.advance(10.05)
    assert rig.liaison.consecutive_failures == 0
    assert rig.liaison.last_ack == pytest.approx(rig.clock.seconds(), abs=0.1)


def test_health_change_sends_fast_heartbeat_at_once_but_at_most_once_a_second(rig):
    rig.liaison.startService()
    rig.advance(5.0)
    rig.health.set_draining(True)
    assert rig.client.requests("fast_heartbeat")[-1].health == pb.DRAINING
    assert rig.client.times("fast_heartbeat") == pytest.approx([0, 5])
    rig.health.set_draining(False)
    rig.redis_up = False
    rig.health.check()
    assert len(rig.client.times("fast_heartbeat")) == 2
    rig.advance(1.05)
    assert rig.client.times("fast_heartbeat") == pytest.approx([0, 5, 6])
    assert rig.client.requests("fast_heartbeat")[-1].health == pb.UNHEALTHY
    rig.advance(9.0)
    assert rig.client.times("fast_heartbeat")[-1] == pytest.approx(6)
    rig.advance(1.05)
    assert rig.client.times("fast_heartbeat")[-1] == pytest.approx(16)
    assert DRAINING not in [r.health for r in rig.client.requests("fast_heartbeat")[2:]]


def test_becoming_full_sends_fast_heartbeat():
    r = Rig(max_meetings=1)
    r.liaison.startService()
    r.advance(3.0)
    res = r.registry.reserve("m1")
    r.registry.commit(res, 1, [])
    assert r.client.times("fast_heartbeat") == pytest.approx([0, 3])
    assert r.client.requests("fast_heartbeat")[-1].capacity.current_meetings == 1
    r.liaison.stopService()


def test_stop_cancels_inflight_and_retries(rig):
    rig.client.script("register", "hold")
    rig.liaison.startService()
    d = rig.liaison.stopService()
    results = []
    d.addCallback(results.append)
    assert results == [None]
    assert rig.clock.getDelayedCalls() == []
    assert not rig.liaison.registered


def test_draining_heartbeat_on_demand(rig):
    rig.liaison.startService()
    rig.health.draining = True
    d = rig.liaison.send_draining_heartbeat()
    assert isinstance(d, defer.Deferred) and d.called
    assert rig.client.requests("fast_heartbeat")[-1].health == pb.DRAINING


def test_draining_heartbeat_joins_the_nudge_in_flight(rig):
    rig.liaison.startService()
    rig.advance(5.0)
    rig.client.script("fast_heartbeat", "hold")
    rig.health.set_draining(True)
    d = rig.liaison.send_draining_heartbeat()
    assert not d.called
    assert len(rig.client.requests("fast_heartbeat")) == 2
    rig.client.held[0][1].callback(pb.FastHeartbeatResponse(acknowledged=True))
    assert d.called
    assert len(rig.client.requests("fast_heartbeat")) == 2


def test_draining_heartbeat_follows_a_healthy_one_in_flight(rig):
    rig.liaison.startService()
    rig.advance(5.0)
    rig.client.script("fast_heartbeat", "hold")
    rig.advance(5.0)  # the tick: a HEALTHY heartbeat, held by the GC
    rig.health.draining = True
    d = rig.liaison.send_draining_heartbeat()
    assert not d.called
    rig.client.held[0][1].callback(pb.FastHeartbeatResponse(acknowledged=True))
    assert d.called
    assert [r.health for r in rig.client.requests("fast_heartbeat")][-2:] == [
        pb.HEALTHY, pb.DRAINING]


def test_draining_heartbeat_replaces_a_rate_limited_nudge(rig):
    rig.liaison.startService()
    rig.advance(0.5)
    rig.health.set_draining(True)
    assert len(rig.client.requests("fast_heartbeat")) == 1
    rig.liaison.send_draining_heartbeat()
    rig.advance(2.0)
    assert [r.health for r in rig.client.requests("fast_heartbeat")] == [pb.HEALTHY, pb.DRAINING]


def test_capped_attempt_is_the_first_at_the_cap():
    nominal = retry_policy(rng=lambda: 0.0)
    assert nominal(CAPPED_ATTEMPT) == MAX_DELAY > nominal(CAPPED_ATTEMPT - 1)


def test_registration_waits_for_a_service_token_then_registers():
    identity = LateIdentity()
    verifyObject(IServiceIdentity, identity)
    rig = Rig(identity=identity)
    rig.liaison.startService()
    rig.advance(120)
    assert rig.client.calls == []
    assert rig.liaison.registration_state == WAITING_FOR_TOKEN and not rig.liaison.registered
    identity.arrive()
    assert rig.liaison.registration_state == REGISTERED
    assert len(rig.client.requests("register")) == 1
    rig.advance(10)
    assert rig.client.requests("fast_heartbeat")
    rig.liaison.stopService()


def test_stopping_while_waiting_for_a_token_leaves_nothing_behind():
    identity = LateIdentity()
    rig = Rig(identity=identity)
    rig.liaison.startService()
    rig.liaison.stopService()
    assert identity._waiters == [] and rig.clock.getDelayedCalls() == []
    identity.arrive()
    assert rig.client.calls == []


def test_registration_states_through_a_failure_and_a_forgetting(rig):
    rig.client.script("register", "hold")
    rig.liaison.startService()
    assert rig.liaison.registration_state == REGISTERING
    rig.client.held[0][1].errback(unavailable())
    assert rig.liaison.registration_state == BACKING_OFF
    rig.advance(1)
    assert rig.liaison.registration_state == REGISTERED
    rig.client.script("fast_heartbeat", gc_error("FastHeartbeat", "NOT_FOUND"))
    rig.advance(10)
    assert len(rig.client.requests("register")) == 3
    assert rig.liaison.registration_state == REGISTERED
