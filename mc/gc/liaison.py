"""The MC's side of the conversation with the GC: registration with backoff,
fast and comprehensive heartbeats on LoopingCalls, re-registration on
NOT_FOUND, and the state readiness and metrics read.

Every heartbeat reads one snapshot from the meeting registry and the health
object; the liaison keeps no counters of its own.
"""

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from mc.backoff import CAPPED_ATTEMPT, MAX_DELAY, retry_policy
from mc.errors import GcCallError
from mc.proto import gc_mc_pb2 as pb

DEFAULT_FAST_INTERVAL = 10.0
DEFAULT_COMPREHENSIVE_INTERVAL = 30.0
MIN_NUDGE_SPACING = 1.0


def _interval(ms, default):
    """The GC's interval in seconds; 0 keeps our default."""
    return ms / 1000.0 if ms else default


class GcLiaison(Service):
    name = "gc-liaison"
    log = Logger()

    def __init__(self, config, client, registry, health, clock, metrics, rng=None,
                 identity=None):
        self._config = config
        self._client = client
        self._identity = identity
        self._registry = registry
        self._health = health
        self._clock = clock
        self._metrics = metrics
        self._delay = retry_policy(rng=rng) if rng else retry_policy()
        self.registered = False
        self.last_ack = None
        self.consecutive_failures = 0
        self.fast_interval = DEFAULT_FAST_INTERVAL
        self.comprehensive_interval = DEFAULT_COMPREHENSIVE_INTERVAL
        self._attempt = 0
        self._retry_call = None
        self._nudge_call = None
        self._fast = self._loop(self._fast_tick)
        self._comprehensive = self._loop(self._comprehensive_tick)
        self._fast_inflight = None
        self._fast_inflight_draining = False
        self._nudge_pending = False
        self._last_fast_sent = None
        self._inflight = set()
        self._last_error_log = None
        self._log_failures = 0
        self._interval_observers = []
        health.on_change(lambda status: self.nudge())
        registry.on_capacity_change(lambda full: self.nudge())

    def on_intervals(self, observer):
        """Call ``observer()`` each time the GC dictates the heartbeat
        intervals (every accepted registration), so periodic work tied to them
        is rescheduled at once rather than one old interval later."""
        self._interval_observers.append(observer)

    def _loop(self, fn):
        loop = task.LoopingCall(fn)
        loop.clock = self._clock
        return loop

    # --- life cycle -------------------------------------------------------

    def startService(self):
        super().startService()
        self._register()

    @defer.inlineCallbacks
    def stopService(self):
        """Stop retrying and both loops; cancel and await calls in flight."""
        super().stopService()
        for call in (self._retry_call, self._nudge_call):
            if call is not None and call.active():
                call.cancel()
        self._stop_loops()
        for d in list(self._inflight):
            d.cancel()
        yield defer.DeferredList(list(self._inflight), consumeErrors=True)
        self._set_registered(False)

    def _track(self, d):
        """Remember a call in flight until it settles, so stop can await it."""
        self._inflight.add(d)
        d.addBoth(self._untrack, d)
        return d

    def _untrack(self, result, d):
        self._inflight.discard(d)
        return result

    # --- registration -----------------------------------------------------

    def registration_request(self):
        snap = self._registry.snapshot()
        c = self._config
        return pb.RegisterMCRequest(
            id=c.mc_id, region=c.region, grpc_endpoint=c.grpc_advertise,
            webtransport_endpoint=c.webtransport_advertise,
            max_meetings=snap.max_meetings, max_participants=snap.max_participants)

    def _register(self):
        self._retry_call = None
        if not self.running:
            return
        if self._identity is not None and not self._identity.ready:
            self.log.info("registration with the GC waits for a service token")
            waiting = self._track(self._identity.when_ready())
            waiting.addCallback(lambda _: self._register())
            waiting.addErrback(lambda f: f.trap(defer.CancelledError))
            return
        d = self._track(self._client.register(self.registration_request()))
        d.addCallbacks(self._registered, self._registration_failed)
        d.addErrback(self._bug, "registration")

    def _registered(self, response):
        if not self.running:
            return
        if not response.accepted:
            self._metrics.registrations.labels("rejected", self._client.dialect).inc()
            self.log.error("GC did not accept registration of {mc_id}: {gc_message}",
                           mc_id=self._config.mc_id, gc_message=response.message)
            self._retry_later()
            return
        self._metrics.registrations.labels("accepted", self._client.dialect).inc()
        self._attempt = 0
        self.fast_interval = _interval(response.fast_heartbeat_interval_ms,
                                       DEFAULT_FAST_INTERVAL)
        self.comprehensive_interval = _interval(response.comprehensive_heartbeat_interval_ms,
                                                DEFAULT_COMPREHENSIVE_INTERVAL)
        self._set_registered(True)
        self.log.info("registered with GC as {mc_id}; heartbeats every {fast}s/{comprehensive}s",
                      mc_id=self._config.mc_id, fast=self.fast_interval,
                      comprehensive=self.comprehensive_interval)
        for observer in list(self._interval_observers):
            try:
                observer()
            except Exception:
                self.log.failure("interval observer failed")
        self._start_loops()

    def _registration_failed(self, failure):
        if failure.check(defer.CancelledError) or not self.running:
            return
        failure.trap(GcCallError)
        err = failure.value
        self._metrics.registrations.labels("error", err.dialect or "none").inc()
        if err.code == "INVALID_ARGUMENT":
            self.log.critical(
                "GC refused registration of {mc_id} as invalid ({details}): fix the "
                "configuration; retrying every {cap:g}s or so", mc_id=self._config.mc_id,
                details=err.details, cap=MAX_DELAY)
            self._attempt = max(self._attempt, CAPPED_ATTEMPT)
        else:
            self.log.warn("registration of {mc_id} failed: {code} {details}",
                          mc_id=self._config.mc_id, code=err.code, details=err.details)
        self._retry_later()

    def _retry_later(self):
        delay = self._delay(self._attempt)
        self._attempt += 1
        self.log.debug("registering again in {delay:.2f}s", delay=delay)
        self._retry_call = self._clock.callLater(delay, self._register)

    def _set_registered(self, registered):
        self.registered = registered
        self._metrics.registered.set(1 if registered else 0)

    # --- heartbeats ---------------------------------------------------------

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

    def _fast_tick(self):
        self._last_fast_sent = self._clock.seconds()
        request = self.fast_request()
        d = self._heartbeat("fast", self._client.fast_heartbeat, request)
        self._fast_inflight = d
        self._fast_inflight_draining = request.health == pb.DRAINING
        d.addBoth(self._fast_done)
        return d

    def _fast_done(self, _):
        self._fast_inflight = None
        if self._nudge_pending:
            self._nudge_pending = False
            self._clock.callLater(0, self.nudge)

    def _comprehensive_tick(self):
        return self._heartbeat("comprehensive", self._client.comprehensive_heartbeat,
                               self.comprehensive_request())

    def _heartbeat(self, kind, method, request):
        """Send one heartbeat; the Deferred never fails, since a LoopingCall
        stops for good on its first exception."""
        d = self._track(method(request))
        d.addCallbacks(self._heartbeat_ok, self._heartbeat_failed,
                       callbackArgs=(kind,), errbackArgs=(kind,))
        d.addErrback(self._bug, kind + " heartbeat")
        return d

    def _heartbeat_ok(self, response, kind):
        self._metrics.heartbeats.labels(kind, "ok", self._client.dialect).inc()
        if self.consecutive_failures:
            self.log.info("GC heartbeats succeed again after {failures} failures",
                          failures=self.consecutive_failures)
        self.consecutive_failures = 0
        self._log_failures = 0
        self.last_ack = self._clock.seconds()

    def _heartbeat_failed(self, failure, kind):
        if failure.check(defer.CancelledError):
            return
        failure.trap(GcCallError)
        err = failure.value
        if err.code == "NOT_FOUND":
            self._metrics.heartbeats.labels(kind, "not_found", err.dialect or "none").inc()
            if self.registered:
                self.log.warn("GC does not know {mc_id} any more: registering again",
                              mc_id=self._config.mc_id)
                self._stop_loops()
                self._set_registered(False)
                self._attempt = 0
                self._clock.callLater(0, self._register)
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

    def _start_loops(self):
        """Fresh loops each time: a stopped loop's call still in flight then
        settles on its own loop and cannot schedule a second tick on ours."""
        self._fast = self._loop(self._fast_tick)
        self._comprehensive = self._loop(self._comprehensive_tick)
        self._fast.start(self.fast_interval, now=True)
        self._comprehensive.start(self.comprehensive_interval, now=False)

    def _stop_loops(self):
        for loop in (self._fast, self._comprehensive):
            if loop.running:
                loop.stop()

    def nudge(self):
        """Send a fast heartbeat now rather than at the next tick (health or
        capacity changed), at most one per ``MIN_NUDGE_SPACING`` seconds and
        never overlapping one in flight."""
        if not (self.running and self.registered and self._fast.running):
            return
        if self._nudge_call is not None and self._nudge_call.active():
            return
        if self._fast_inflight is not None:
            self._nudge_pending = True
            return
        last = self._last_fast_sent
        since = float("inf") if last is None else self._clock.seconds() - last
        if since < MIN_NUDGE_SPACING:
            self._nudge_call = self._clock.callLater(MIN_NUDGE_SPACING - since, self.nudge)
            return
        self._fast.stop()
        self._fast.start(self.fast_interval, now=True)

    def send_draining_heartbeat(self):
        """One fast heartbeat saying DRAINING, now; fires when it is answered
        or failed (never fails). A fast heartbeat in flight that already says
        DRAINING (the nudge of the health change) counts, so the GC hears it
        once; one sent before the drain is waited for, then this one follows."""
        if not self.registered:
            return defer.succeed(None)
        if self._nudge_call is not None and self._nudge_call.active():
            self._nudge_call.cancel()
        if self._fast_inflight is None:
            return self._heartbeat("fast", self._client.fast_heartbeat, self.fast_request())
        done = defer.Deferred()
        already = self._fast_inflight_draining

        def after(result):
            if already:
                done.callback(None)
            else:
                d = self._heartbeat("fast", self._client.fast_heartbeat, self.fast_request())
                d.addBoth(lambda _: done.callback(None))
            return result

        self._fast_inflight.addBoth(after)
        return done

    def _bug(self, failure, what):
        self.log.failure("unexpected error in {what}", failure=failure, what=what)
