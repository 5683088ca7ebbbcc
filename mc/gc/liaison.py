"""The MC's side of the conversation with the GC, as one service: the
registration (``mc.gc.registration``, named states) and, while registered,
the heartbeats (``mc.gc.heartbeat``), apart from each other. This module
wires them, holds the intervals the GC dictated, and is what readiness,
metrics, the drain and the tree read."""

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mc.gc.heartbeat import Heartbeats
from mc.gc.registration import Registration

DEFAULT_FAST_INTERVAL = 10.0
DEFAULT_COMPREHENSIVE_INTERVAL = 30.0


def _interval(ms, default):
    """The GC's interval in seconds; 0 keeps our default."""
    return ms / 1000.0 if ms else default


class InFlight:
    """The calls to the GC in flight, so that stopping can cancel and await
    them; ``stopped`` tells late answers to change nothing."""

    def __init__(self):
        self._calls = set()
        self.stopped = True

    def track(self, d):
        self._calls.add(d)
        d.addBoth(self._untrack, d)
        return d

    def _untrack(self, result, d):
        self._calls.discard(d)
        return result

    def cancel_all(self):
        """Cancel every call; fires once all have settled."""
        calls = list(self._calls)
        for d in calls:
            d.cancel()
        return defer.DeferredList(calls, consumeErrors=True)


class GcLiaison(Service):
    """Registration and heartbeats with the GC. ``identity``
    (IServiceIdentity, or None) holds registration until a service token
    is there."""

    name = "gc-liaison"
    log = Logger()

    def __init__(self, config, client, registry, health, clock, metrics, rng=None,
                 identity=None):
        self._config = config
        self._calls = InFlight()
        self.fast_interval = DEFAULT_FAST_INTERVAL
        self.comprehensive_interval = DEFAULT_COMPREHENSIVE_INTERVAL
        self._interval_observers = []
        self._registration = Registration(config, client, registry, identity, self._calls,
                                          clock, metrics, self._registered, self._lost,
                                          rng=rng)
        self._heartbeats = Heartbeats(config, client, registry, health, self._calls, clock,
                                      metrics, self._registration.forgotten)
        health.on_change(lambda status: self.nudge())
        registry.on_capacity_change(lambda full: self.nudge())

    # --- what the rest of the MC reads --------------------------------------

    @property
    def registered(self):
        return self._registration.registered

    @property
    def registration_state(self):
        """The registration's state, one of ``mc.gc.registration``'s names."""
        return self._registration.state

    @property
    def last_ack(self):
        return self._heartbeats.last_ack

    @property
    def consecutive_failures(self):
        return self._heartbeats.consecutive_failures

    def on_intervals(self, observer):
        """Call ``observer()`` each time the GC dictates the heartbeat
        intervals (every accepted registration), so periodic work tied to them
        is rescheduled at once rather than one old interval later."""
        self._interval_observers.append(observer)

    def registration_request(self):
        return self._registration.request()

    def fast_request(self):
        return self._heartbeats.fast_request()

    def comprehensive_request(self):
        return self._heartbeats.comprehensive_request()

    def nudge(self):
        """A fast heartbeat now rather than at the next tick (health or
        capacity changed); see ``Heartbeats.nudge``."""
        self._heartbeats.nudge()

    def send_draining_heartbeat(self):
        """One fast heartbeat saying DRAINING (``Heartbeats.send_draining``);
        nothing to send when not registered."""
        if not self.registered:
            return defer.succeed(None)
        return self._heartbeats.send_draining()

    # --- life cycle -------------------------------------------------------

    def startService(self):
        super().startService()
        self._calls.stopped = False
        self._registration.start()

    @defer.inlineCallbacks
    def stopService(self):
        """Stop retrying and both loops; cancel and await calls in flight."""
        super().stopService()
        self._calls.stopped = True
        self._heartbeats.stop()
        yield self._calls.cancel_all()
        self._registration.stop()

    # --- between the two --------------------------------------------------

    def _registered(self, response):
        self.fast_interval = _interval(response.fast_heartbeat_interval_ms,
                                       DEFAULT_FAST_INTERVAL)
        self.comprehensive_interval = _interval(response.comprehensive_heartbeat_interval_ms,
                                                DEFAULT_COMPREHENSIVE_INTERVAL)
        self.log.info("registered with GC as {mc_id}; heartbeats every {fast}s/{comprehensive}s",
                      mc_id=self._config.mc_id, fast=self.fast_interval,
                      comprehensive=self.comprehensive_interval)
        for observer in list(self._interval_observers):
            try:
                observer()
            except Exception:
                self.log.failure("interval observer failed")
        self._heartbeats.start(self.fast_interval, self.comprehensive_interval)

    def _lost(self):
        self._heartbeats.stop()
