"""Registration with the GC as named states, one place deciding the moves:

    STOPPED -> WAITING_FOR_TOKEN -> REGISTERING -> REGISTERED
                       ^                 |  ^          |
                       |                 v  |          | the GC forgot us (NOT_FOUND)
                       +------------ BACKING_OFF <-----+ (at once: REGISTERING)

``WAITING_FOR_TOKEN`` holds while the MC has no service token (an AC down
at start); ``BACKING_OFF`` waits the MC's backoff after a refusal or an
error (the cap at once for INVALID_ARGUMENT: the configuration is wrong).
Being registered is told to ``on_registered(response)``, losing it to
``on_lost()``; the heartbeats (``mc.gc.heartbeat``) live apart.
"""

from twisted.internet import defer
from twisted.logger import Logger

from mc.backoff import CAPPED_ATTEMPT, MAX_DELAY, retry_policy
from mc.errors import GcCallError
from mc.proto import gc_mc_pb2 as pb

STOPPED = "stopped"
WAITING_FOR_TOKEN = "waiting for a service token"
REGISTERING = "registering"
BACKING_OFF = "backing off"
REGISTERED = "registered"


class Registration:
    """The registration of this MC (``config``) through ``client``
    (IGcClient); ``identity`` (IServiceIdentity, or None: always ready),
    ``registry`` for the capacity, ``calls`` tracks what is in flight,
    ``clock`` for the backoff timer (``rng`` its jitter)."""

    log = Logger()

    def __init__(self, config, client, registry, identity, calls, clock, metrics,
                 on_registered, on_lost, rng=None):
        self._config = config
        self._client = client
        self._registry = registry
        self._identity = identity
        self._calls = calls
        self._clock = clock
        self._metrics = metrics
        self._on_registered = on_registered
        self._on_lost = on_lost
        self._delay = retry_policy(rng=rng) if rng else retry_policy()
        self._attempt = 0
        self._retry = None
        self.state = STOPPED

    @property
    def registered(self):
        return self.state == REGISTERED

    def request(self):
        snap = self._registry.snapshot()
        c = self._config
        return pb.RegisterMCRequest(
            id=c.mc_id, region=c.region, grpc_endpoint=c.grpc_advertise,
            webtransport_endpoint=c.webtransport_advertise,
            max_meetings=snap.max_meetings, max_participants=snap.max_participants)

    # --- the moves --------------------------------------------------------

    def start(self):
        self._attempt = 0
        self._register()

    def stop(self):
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._enter(STOPPED)

    def forgotten(self):
        """The GC answered a heartbeat NOT_FOUND: register again at once."""
        if self.state != REGISTERED:
            return
        self.log.warn("GC does not know {mc_id} any more: registering again",
                      mc_id=self._config.mc_id)
        self._attempt = 0
        self._enter(REGISTERING)
        self._clock.callLater(0, self._register)

    def _enter(self, state):
        """The one place the state changes; leaving REGISTERED is told."""
        previous, self.state = self.state, state
        if previous == REGISTERED and state != REGISTERED:
            self._metrics.registered.set(0)
            self._on_lost()
        elif state == REGISTERED:
            self._metrics.registered.set(1)

    def _register(self):
        self._retry = None
        if self._calls.stopped:
            return
        if self._identity is not None and not self._identity.ready:
            if self.state != WAITING_FOR_TOKEN:
                self.log.info("registration with the GC waits for a service token")
            self._enter(WAITING_FOR_TOKEN)
            waiting = self._calls.track(self._identity.when_ready())
            waiting.addCallback(lambda _: self._register())
            waiting.addErrback(lambda f: f.trap(defer.CancelledError))
            return
        self._enter(REGISTERING)
        d = self._calls.track(self._client.register(self.request()))
        d.addCallbacks(self._answered, self._failed)
        d.addErrback(lambda f: self.log.failure("unexpected error in registration", f))

    def _answered(self, response):
        if self._calls.stopped:
            return
        if not response.accepted:
            self._metrics.registrations.labels("rejected", self._client.dialect).inc()
            self.log.error("GC did not accept registration of {mc_id}: {gc_message}",
                           mc_id=self._config.mc_id, gc_message=response.message)
            self._back_off()
            return
        self._metrics.registrations.labels("accepted", self._client.dialect).inc()
        self._attempt = 0
        self._enter(REGISTERED)
        self._on_registered(response)

    def _failed(self, failure):
        if failure.check(defer.CancelledError) or self._calls.stopped:
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
        self._back_off()

    def _back_off(self):
        delay = self._delay(self._attempt)
        self._attempt += 1
        self._enter(BACKING_OFF)
        self.log.debug("registering again in {delay:.2f}s", delay=delay)
        self._retry = self._clock.callLater(delay, self._register)
