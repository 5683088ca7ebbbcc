"""The heartbeats to the GC while registered: fast and comprehensive ones on
LoopingCalls at the intervals the GC dictated, a fast one nudged out early
when health or capacity changes (spaced, never overlapping), and the one
DRAINING heartbeat a drain waits for. Each reads one snapshot from the
meeting registry and the health object; a NOT_FOUND answer is told to
``on_not_found()`` (registration, ``mc.gc.registration``, starts again)."""

import contextvars

from twisted.internet import defer, task
from twisted.logger import Logger

from mc.errors import GcCallError
from mc.proto import gc_mc_pb2 as pb

MIN_NUDGE_SPACING = 1.0
FAST = "fast"
COMPREHENSIVE = "comprehensive"


class Heartbeats:
    """Both loops; ``start(fast, comprehensive)`` with the GC's intervals
    (seconds), ``stop()``. ``calls`` tracks what is in flight."""

    log = Logger()

    def __init__(self, config, client, registry, health, calls, clock, metrics, on_not_found):
        self._config = config
        self._client = client
        self._registry = registry
        self._health = health
        self._calls = calls
        self._clock = clock
        self._metrics = metrics
        self._on_not_found = on_not_found
        self.fast_interval = None
        self.last_ack = None
        self.consecutive_failures = 0
        self._fast = self._loop(self._fast_tick)
        self._comprehensive = self._loop(self._comprehensive_tick)
        self._fast_inflight = None
        self._fast_inflight_draining = False
        self._nudge_pending = None  # the context of a nudge held while one is in flight
        self._nudge_call = None
        self._last_fast_sent = None
        self._last_error_log = None
        self._log_failures = 0

    @property
    def running(self):
        return self._fast.running

    def _loop(self, fn):
        loop = task.LoopingCall(fn)
        loop.clock = self._clock
        return loop

    def start(self, fast_interval, comprehensive_interval):
        """Fresh loops each time: a stopped loop's call still in flight then
        settles on its own loop and cannot schedule a second tick on ours."""
        self.stop()
        self.fast_interval = fast_interval
        self._fast = self._loop(self._fast_tick)
        self._comprehensive = self._loop(self._comprehensive_tick)
        self._fast.start(fast_interval, now=True)
        self._comprehensive.start(comprehensive_interval, now=False)

    def stop(self):
        for loop in (self._fast, self._comprehensive):
            if loop.running:
                loop.stop()
        if self._nudge_call is not None and self._nudge_call.active():
            self._nudge_call.cancel()
        self._nudge_call = None

    # --- requests -----------------------------------------------------------

    def _capacity(self):
        snap = self._registry.snapshot()
        return pb.ControllerCapacity(
            max_meetings=snap.max_meetings, current_meetings=snap.meetings,
            max_participants=snap.max_participants, current_participants=snap.participants)

    def _health_value(self):
        return pb.HealthStatus.Value(self._health.status)

    def fast_request(self):
        return pb.FastHeartbeatRequest(controller_id=self._config.mc_id,
                                       capacity=self._capacity(), health=self._health_value())

    def comprehensive_request(self):
        h = self._health
        return pb.ComprehensiveHeartbeatRequest(
            controller_id=self._config.mc_id, capacity=self._capacity(),
            health=self._health_value(), cpu_usage_percent=h.cpu_percent,
            memory_usage_percent=h.memory_percent)

    # --- the loops ----------------------------------------------------------

    def _fast_tick(self):
        self._last_fast_sent = self._clock.seconds()
        request = self.fast_request()
        d = self._send(FAST, request)
        self._fast_inflight = d
        self._fast_inflight_draining = request.health == pb.DRAINING
        d.addBoth(self._fast_done)
        return d

    def _fast_done(self, _):
        self._fast_inflight = None
        if self._nudge_pending is not None:
            nudged_in, self._nudge_pending = self._nudge_pending, None
            self._clock.callLater(0, nudged_in.run, self.nudge)

    def _comprehensive_tick(self):
        return self._send(COMPREHENSIVE, self.comprehensive_request())

    def _send(self, kind, request):
        """Send one heartbeat; the Deferred never fails, since a LoopingCall
        stops for good on its first exception."""
        method = self._client.fast_heartbeat if kind == FAST else \
            self._client.comprehensive_heartbeat
        d = self._calls.track(method(request))
        d.addCallbacks(self._ok, self._failed, callbackArgs=(kind,), errbackArgs=(kind,))
        d.addErrback(lambda f: self.log.failure("unexpected error in {kind} heartbeat", f,
                                                kind=kind))
        return d

    def _ok(self, response, kind):
        self._metrics.heartbeats.labels(kind, "ok", self._client.dialect).inc()
        if self.consecutive_failures:
            self.log.info("GC heartbeats succeed again after {failures} failures",
                          failures=self.consecutive_failures)
        self.consecutive_failures = 0
        self._log_failures = 0
        self.last_ack = self._clock.seconds()

    def _failed(self, failure, kind):
        if failure.check(defer.CancelledError):
            return
        failure.trap(GcCallError)
        err = failure.value
        if err.code == "NOT_FOUND":
            self._metrics.heartbeats.labels(kind, "not_found", err.dialect or "none").inc()
            if self.running:
                self.stop()
                self._on_not_found()
            return
        self._metrics.heartbeats.labels(kind, "error", err.dialect or "none").inc()
        self.consecutive_failures += 1
        self._log_failures += 1
        now = self._clock.seconds()
        if (self._last_error_log is None or self.consecutive_failures == 1
                or now - self._last_error_log >= self.fast_interval):
            self.log.warn("{kind} heartbeat failed: {code} {details} ({failures} failures "
                          "since last report)", kind=kind, code=err.code, details=err.details,
                          failures=self._log_failures)
            self._last_error_log = now
            self._log_failures = 0

    # --- out of turn --------------------------------------------------------

    def nudge(self):
        """Send a fast heartbeat now rather than at the next tick (health or
        capacity changed), at most one per ``MIN_NUDGE_SPACING`` seconds and
        never overlapping one in flight."""
        if not self._fast.running or self._calls.stopped:
            return
        if self._nudge_call is not None and self._nudge_call.active():
            return
        # A nudge sent later runs in the context it was asked in: the heartbeat
        # an assignment (or a join) nudged carries its trace.
        if self._fast_inflight is not None:
            self._nudge_pending = contextvars.copy_context()
            return
        last = self._last_fast_sent
        since = float("inf") if last is None else self._clock.seconds() - last
        if since < MIN_NUDGE_SPACING:
            self._nudge_call = self._clock.callLater(MIN_NUDGE_SPACING - since,
                                                     contextvars.copy_context().run, self.nudge)
            return
        self._fast.stop()
        self._fast.start(self.fast_interval, now=True)

    def send_draining(self):
        """One fast heartbeat saying DRAINING, now; fires when it is answered
        or failed (never fails). A fast heartbeat in flight that already says
        DRAINING (the nudge of the health change) counts, so the GC hears it
        once; one sent before the drain is waited for, then this one follows."""
        if self._nudge_call is not None and self._nudge_call.active():
            self._nudge_call.cancel()
        if self._fast_inflight is None:
            return self._send(FAST, self.fast_request())
        done = defer.Deferred()
        already = self._fast_inflight_draining

        def after(result):
            if already:
                done.callback(None)
            else:
                d = self._send(FAST, self.fast_request())
                d.addBoth(lambda _: done.callback(None))
            return result

        self._fast_inflight.addBoth(after)
        return done
