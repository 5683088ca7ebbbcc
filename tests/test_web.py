"""/healthz, /readyz and /metrics over real HTTP on the real reactor."""

import json
import re
import time
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, readBody

from mc.config import Address
from mc.meetings import MeetingRegistry
from mc.ops.health import Health
from mc.ops.metrics import Metrics
from mc.ops.web import LIVENESS_LAG_LIMIT, HealthHttpService
from tests.helpers import wait_until

MEETING_ID = "meeting-7f3a9c"

# readBody warns about the client side's transport proxy, not about our server.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using readBody with a transport:DeprecationWarning")


class Rig:
    """A started service over real Health/MeetingRegistry/Metrics and a
    liaison stand-in with the attributes the service reads."""

    def __init__(self, idle_timeout=30):
        self.redis_up = True
        self.health = Health(lambda: self.redis_up, lag_threshold=0.5)
        self.registry = MeetingRegistry(10, 100, 5, reactor)
        self.metrics = Metrics()
        self.liaison = SimpleNamespace(registered=True, last_ack=None, consecutive_failures=0)
        self.tokens = SimpleNamespace(ready=True, age=lambda: 1.0)
        self.webtransport = SimpleNamespace(running=True, sessions_current=0)
        self.service = HealthHttpService(Address("127.0.0.1", 0), self.health, self.registry,
                                         self.liaison, self.metrics, reactor,
                                         idle_timeout=idle_timeout, tokens=self.tokens,
                                         webtransport=self.webtransport)
        self.service.startService()

    async def request(self, path, method=b"GET"):
        url = f"http://127.0.0.1:{self.service.port}{path}".encode()
        response = await Agent(reactor).request(method, url)
        body = await readBody(response)
        return response, body


@pytest_twisted.async_yield_fixture
async def rig():
    r = Rig()
    yield r
    if r.service.running:
        await r.service.stopService()


@pytest_twisted.ensureDeferred
async def test_healthz_ok_even_with_redis_down_and_unregistered(rig):
    rig.redis_up = False
    rig.liaison.registered = False
    rig.health.set_draining(True)
    response, body = await rig.request("/healthz")
    assert (response.code, body) == (200, b"ok\n")


@pytest_twisted.ensureDeferred
async def test_healthz_fails_only_on_extreme_reactor_lag(rig):
    rig.health.reactor_lag = LIVENESS_LAG_LIMIT / 2
    assert (await rig.request("/healthz"))[0].code == 200
    rig.health.reactor_lag = LIVENESS_LAG_LIMIT + 1
    response, body = await rig.request("/healthz")
    assert response.code == 503
    assert b"reactor lag" in body


@pytest_twisted.ensureDeferred
async def test_readyz_ready_when_registered_redis_up_not_draining(rig):
    response, body = await rig.request("/readyz")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert json.loads(body) == {"ready": True, "gc": "registered"}


@pytest_twisted.ensureDeferred
async def test_readyz_ready_while_unregistered_with_the_detail(rig):
    """A GC outage must not make the fleet unready (rollouts and node drains
    would stall behind the PodDisruptionBudget): the detail says it."""
    rig.liaison.registered = False
    response, body = await rig.request("/readyz")
    assert (response.code, json.loads(body)) == (200, {"ready": True, "gc": "unregistered"})
    assert "mc_gc_registered 0.0" in (await rig.request("/metrics"))[1].decode()


@pytest.mark.parametrize("breakage, reason", [
    (lambda r: r.health.set_draining(True), "draining"),
    (lambda r: setattr(r, "redis_up", False), "redis unreachable"),
    (lambda r: setattr(r.tokens, "ready", False), "no JWKS"),
    (lambda r: setattr(r.webtransport, "running", False), "no certificate"),
])
@pytest_twisted.ensureDeferred
async def test_readyz_503_with_reason(rig, breakage, reason):
    breakage(rig)
    response, body = await rig.request("/readyz")
    assert response.code == 503
    assert body.count(b"\n") == 1 and body.endswith(b"\n")
    assert json.loads(body) == {"ready": False, "reason": reason, "gc": "registered"}


@pytest_twisted.ensureDeferred
async def test_metrics_exposition(rig):
    reservation = rig.registry.reserve(MEETING_ID)
    rig.registry.commit(reservation, 3, [])
    rig.registry.get(MEETING_ID).admit("user-1", "Ann", None, 0.0, lambda: "participant-1")
    rig.metrics.assignments.labels("ACCEPTED", "").inc()
    rig.metrics.assignment_duration.observe(0.003)
    rig.metrics.heartbeats.labels("fast", "ok", "v1").inc()
    rig.redis_up = False

    response, body = await rig.request("/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    text = body.decode()
    for name in ("mc_meetings_current", "mc_participants_current",
                 "mc_meeting_assignments_total", "mc_assignment_duration_seconds_bucket",
                 "mc_gc_heartbeats_total", "mc_gc_registered", "mc_fenced_out_total",
                 "mc_redis_up", "mc_reactor_lag_seconds"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    assert "mc_meetings_current 1.0" in text
    assert "mc_participants_current 1.0" in text
    assert "mc_meetings_max 10.0" in text
    assert "mc_redis_up 0.0" in text
    assert "mc_gc_registered 1.0" in text
    assert 'mc_health_status{status="UNHEALTHY"} 1.0' in text
    assert 'mc_health_status{status="HEALTHY"} 0.0' in text
    assert MEETING_ID not in text
    labels = re.findall(r'="([^"]*)"', text)
    assert labels and not any("meeting" in value for value in labels)
    assert "mc_gc_last_heartbeat_ack_age_seconds -1.0" in text
    assert "mc_gc_heartbeat_consecutive_failures 0.0" in text


@pytest_twisted.ensureDeferred
async def test_metrics_show_the_liaisons_heartbeat_state(rig):
    rig.liaison.last_ack = reactor.seconds() - 12.0
    rig.liaison.consecutive_failures = 3
    text = (await rig.request("/metrics"))[1].decode()
    age = float(re.search(r"^mc_gc_last_heartbeat_ack_age_seconds (\S+)$", text, re.M).group(1))
    assert 12.0 <= age < 20.0
    assert "mc_gc_heartbeat_consecutive_failures 3.0" in text


@pytest_twisted.ensureDeferred
async def test_unknown_paths_404_and_other_methods_405(rig):
    for path in ("/", "/nope", "/healthz/extra"):
        assert (await rig.request(path))[0].code == 404, path
    response, _ = await rig.request("/readyz", method=b"POST")
    assert response.code == 405
    assert set(response.headers.getRawHeaders(b"allow")[0].split(b", ")) == {b"GET", b"HEAD"}
    response, body = await rig.request("/healthz", method=b"HEAD")
    assert (response.code, body) == (200, b"")


class _Raw(Protocol):
    def __init__(self):
        self.closed = False

    def connectionLost(self, reason):
        self.closed = True


async def _connect_raw(port, data):
    raw = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Raw())
    raw.transport.write(data)
    return raw


@pytest_twisted.ensureDeferred
async def test_half_open_request_is_closed_after_idle_timeout():
    r = Rig(idle_timeout=0.5)
    try:
        started = time.monotonic()
        raw = await _connect_raw(r.service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        await wait_until(lambda: raw.closed, timeout=5, what="the server to close")
        assert time.monotonic() - started >= 0.4
    finally:
        await r.service.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_closes_open_connections_and_the_port():
    r = Rig()
    raw = await _connect_raw(r.service.port, b"GET /healthz HTTP/1.1\r\n")
    await wait_until(lambda: r.service._factory.protocols, timeout=5, what="the connection")
    await r.service.stopService()
    await wait_until(lambda: raw.closed, timeout=5, what="the server to close")
    with pytest.raises(Exception):  # noqa: B017 - refused, whatever the platform calls it
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", r.service.port), _Raw())


def test_port_in_use_raises_at_start(rig):
    other = HealthHttpService(Address("127.0.0.1", rig.service.port), rig.health, rig.registry,
                              rig.liaison, rig.metrics, reactor)
    with pytest.raises(CannotListenError):
        other.startService()
    assert not other.running
