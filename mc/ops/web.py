"""``/healthz``, ``/readyz`` and ``/metrics`` over twisted.web, for the
orchestrator's probes and for Prometheus.

Liveness and readiness answer different questions on purpose: liveness
("restart me?") looks only at this process, readiness ("can I serve what is
routed to me?") looks at what this MC needs to serve: Redis answering, not
draining, the JWKS and the WebTransport certificate loaded. A liveness probe
that failed on a Redis outage would get every MC of the fleet restarted at
once. Registration with the GC is reported (``"gc"``) but does not fail
readiness: the GC routes by heartbeats, not by readiness, and a GC outage
that made every pod unready would block rollouts and node drains behind the
PodDisruptionBudget while changing nothing for the participants already here.
"""

import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Site

from mc.ops.health import DEGRADED, DRAINING, HEALTHY, UNHEALTHY

LIVENESS_LAG_LIMIT = 10.0
STATUSES = (HEALTHY, DEGRADED, UNHEALTHY, DRAINING)


def not_ready_reason(health, tokens=None, webtransport=None, identity=None):
    """Why this MC cannot serve what is routed to it now, or None when it
    can. Without a JWKS no participant can join; without a service token
    (the Auth Controller's) the MC can neither register with the GC nor tell
    the media handlers; without its certificate loaded the WebTransport port
    is not serving."""
    if health.draining:
        return "draining"
    if not health.redis_up:
        return "redis unreachable"
    if not health.hosting:
        return "ownership unconfirmed"
    if tokens is not None and not tokens.ready:
        return "no JWKS"
    if identity is not None and not identity.ready:
        return "no service token"
    if webtransport is not None and not webtransport.running:
        return "no certificate"
    return None


def readiness(health, liaison, tokens=None, webtransport=None, identity=None):
    """``/readyz``'s JSON body: ``ready``, the ``reason`` when not, and
    ``gc`` (``registered`` / ``unregistered``), a detail that never fails it."""
    reason = not_ready_reason(health, tokens, webtransport, identity)
    body = {"ready": reason is None}
    if reason is not None:
        body["reason"] = reason
    body["gc"] = "registered" if liaison.registered else "unregistered"
    return body


def refresh_gauges(metrics, health, registry, liaison, clock, tokens=None, webtransport=None):
    """Set the gauges that mirror state owned elsewhere, so a scrape reads
    the same values the next heartbeat would send."""
    snap = registry.snapshot()
    metrics.meetings_current.set(snap.meetings)
    metrics.participants_current.set(snap.participants)
    metrics.max_meetings.set(snap.max_meetings)
    metrics.max_participants.set(snap.max_participants)
    metrics.redis_up.set(1 if health.redis_up else 0)
    metrics.registered.set(1 if liaison.registered else 0)
    metrics.draining.set(1 if health.draining else 0)
    metrics.heartbeat_failures.set(liaison.consecutive_failures)
    last_ack = liaison.last_ack
    metrics.last_ack_age.set(-1 if last_ack is None else max(0.0, clock.seconds() - last_ack))
    current = health.status
    for status in STATUSES:
        metrics.health.labels(status).set(1 if status == current else 0)
    if tokens is not None:
        age = tokens.age()
        metrics.jwks_age.set(-1 if age is None else age)
    if webtransport is not None:
        metrics.webtransport_sessions.set(webtransport.sessions_current)


def _text(request, code, body, content_type=b"text/plain; charset=utf-8"):
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    return body


class _Endpoint(Resource):
    """A leaf answering GET and HEAD only; a path below it is a 404."""

    allowedMethods = (b"GET", b"HEAD")

    def getChild(self, path, request):
        return notFound()

    def render(self, request):
        """A 405 naming the allowed methods, rendered here because
        twisted.web's own 405 page goes through a deprecated class."""
        if request.method not in self.allowedMethods:
            request.setHeader(b"allow", b", ".join(self.allowedMethods))
            return _text(request, 405, b"method not allowed\n")
        return super().render(request)


class Liveness(_Endpoint):
    """Answering at all proves the reactor runs. A reactor that answers but
    lags more than LIVENESS_LAG_LIMIT seconds between ticks is stuck in
    blocking work: it misses heartbeats and assignment deadlines either way,
    and only a restart cures it. The limit is far above the DEGRADED
    threshold so that load alone never gets an MC killed."""

    log = Logger()

    def __init__(self, health):
        super().__init__()
        self._health = health

    def render_GET(self, request):
        lag = self._health.reactor_lag
        if lag > LIVENESS_LAG_LIMIT:
            self.log.warn("liveness failing: reactor lag {lag:.1f}s", lag=lag)
            return _text(request, 503, f"reactor lag {lag:.1f}s\n".encode())
        return _text(request, 200, b"ok\n")


class Readiness(_Endpoint):
    def __init__(self, health, liaison, tokens=None, webtransport=None, identity=None):
        super().__init__()
        self._args = (health, liaison, tokens, webtransport, identity)

    def render_GET(self, request):
        body = readiness(*self._args)
        return _text(request, 200 if body["ready"] else 503,
                     json.dumps(body).encode() + b"\n", b"application/json")


class MetricsPage(_Endpoint):
    def __init__(self, metrics, health, registry, liaison, clock, tokens=None, webtransport=None):
        super().__init__()
        self._args = (metrics, health, registry, liaison, clock, tokens, webtransport)

    def render_GET(self, request):
        refresh_gauges(*self._args)
        return _text(request, 200, generate_latest(self._args[0].registry),
                     CONTENT_TYPE_LATEST.encode())


class _Root(Resource):
    def getChild(self, path, request):
        return notFound()


class _QuietSite(Site):
    """A Site that writes no access log: probes and scrapes arrive every few
    seconds from every prober, a line for each would bury the MC's own events
    and cost I/O, and a failing probe is visible at the prober anyway."""

    noisy = False

    def log(self, request):
        """No access log; see the class docstring."""


class HealthHttpService(Service):
    """Serves the probes and metrics on ``listen_address``; ``port`` is the
    bound port once started (useful when configured as 0). ``tokens`` (the
    meeting-token verifier), ``webtransport`` (the participants' service) and
    ``identity`` (the MC's service token) add their readiness and gauges
    when given."""

    name = "http"
    log = Logger()

    def __init__(self, listen_address, health, registry, liaison, metrics, reactor,
                 idle_timeout=30, tokens=None, webtransport=None, identity=None):
        self._address = listen_address
        self._reactor = reactor
        root = _Root()
        root.putChild(b"healthz", Liveness(health))
        root.putChild(b"readyz", Readiness(health, liaison, tokens, webtransport, identity))
        root.putChild(b"metrics", MetricsPage(metrics, health, registry, liaison, reactor, tokens,
                                              webtransport))
        self.site = _QuietSite(root, timeout=idle_timeout, reactor=reactor)
        # The wrapper tracks open connections, so stopService can close them.
        self._factory = WrappingFactory(self.site)
        self._factory.noisy = False
        self.port = None
        self._listening = None

    def startService(self):
        """Listen synchronously: a port already taken raises here, so twistd
        exits non-zero instead of running an MC no probe can reach."""
        self._listening = self._reactor.listenTCP(
            self._address.port, self._factory, interface=self._address.host)
        self.port = self._listening.getHost().port
        super().startService()
        self.log.info("HTTP probes and metrics on {host}:{port}",
                      host=self._address.host, port=self.port)

    def stopService(self):
        """Stop listening and abort open connections (an idle keep-alive
        connection would otherwise outlive the service)."""
        super().stopService()
        listening, self._listening = self._listening, None
        d = defer.maybeDeferred(listening.stopListening)
        for protocol in list(self._factory.protocols):
            protocol.transport.abortConnection()
        return d
