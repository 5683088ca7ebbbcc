"""The service tokens of calls the MC receives, checked on every call by the
real gRPC server with the real JWKS cache fed by the AC double: the
incoming-token table on every path, and every bad token the issue names."""

import json
import time

import grpc
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.logger import globalLogPublisher

from mc.ac.service_tokens import (
    AUTHORIZED,
    GLOBAL_CONTROLLER,
    MEDIA_HANDLER,
    ServiceTokenCheck,
    service_of,
)
from mc.config import Secret
from mc.gc.auth import TokenCheck
from mc.gc.grpcserver import GrpcServerService
from mc.ops.metrics import Metrics
from mc.participants.tokens import TokenVerifier, parse_jwks
from mc.proto import gc_mc_pb2 as pb
from mc.testing.ac import AcDouble
from mc.testing.issuer import SigningKey
from tests.helpers import wait_until

V1_ASSIGN = "/dark_tower.internal.v1.MeetingControllerService/AssignMeetingWithMh"
LEGACY_ASSIGN = "/dark_tower.internal.MeetingControllerService/AssignMeetingWithMh"
MH_CONNECTED = "/dark_tower.internal.v1.MediaCoordinationService/NotifyParticipantConnected"
OTHER = "/dark_tower.internal.v1.GlobalControllerService/RegisterMC"
STATIC = "static-gc-token-K2"
REQUEST = pb.AssignMeetingWithMhRequest(meeting_id="m-1", mh_assignments=[
    pb.MhAssignment(mh_id="mh-1", webtransport_endpoint="https://mh.example:4433")])


class Accepting:
    def __init__(self):
        self.calls = []

    def assign(self, meeting_id, mh, gc_id):
        self.calls.append(meeting_id)
        return defer.succeed((True, None))


class Server:
    def __init__(self, ac):
        self.metrics = Metrics()
        self.keys = TokenVerifier(ac.jwks_url, None, 5.0, reactor, refetch_spacing=1.0)
        self.check = ServiceTokenCheck(
            self.keys, reactor, 5.0, static=TokenCheck((Secret(STATIC),)),
            on_outcome=lambda s, o: self.metrics.service_token_checks.labels(s, o).inc())
        self.assignment = Accepting()
        self.grpc = GrpcServerService("127.0.0.1:0", self.assignment, self.check, reactor,
                                      grace=0.5)
        self.channel = None

    async def start(self):
        self.keys.startService()
        await wait_until(lambda: self.keys.ready, 10, "the JWKS")
        self.grpc.startService()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc.port}")

    async def stop(self):
        self.channel.close()
        await self.grpc.stopService()
        self.keys.stopService()

    def thd_call(self, path, authorization):
        metadata = () if authorization is None else (("authorization", authorization),)
        call = self.channel.unary_unary(path)
        try:
            call(REQUEST.SerializeToString(), timeout=10, metadata=metadata)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    def call(self, path, authorization):
        return threads.deferToThread(self.thd_call, path, authorization)

    def count(self, service, outcome):
        return self.metrics.registry.get_sample_value(
            "mc_service_token_checks_total", {"service": service, "outcome": outcome}) or 0


@pytest.fixture
def ac():
    double = AcDouble().serve()
    yield double
    double.stop()


@pytest_twisted.async_yield_fixture
async def server(ac):
    s = Server(ac)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def log_events():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def bearer(token):
    return "Bearer " + token


def test_the_table_names_every_service_and_only_them():
    assert AUTHORIZED == {
        "dark_tower.internal.v1.MeetingControllerService": GLOBAL_CONTROLLER,
        "dark_tower.internal.MeetingControllerService": GLOBAL_CONTROLLER,
        "dark_tower.internal.v1.MediaCoordinationService": MEDIA_HANDLER,
    }
    assert service_of(V1_ASSIGN) == "dark_tower.internal.v1.MeetingControllerService"
    for bad in ("", "no-slash", "/Service", "/Service/", "/a/b/c", None):
        assert service_of(bad) is None


@pytest_twisted.ensureDeferred
async def test_the_incoming_token_table(server, ac):
    gc, mh, mc = (ac.mint(t) for t in (GLOBAL_CONTROLLER, MEDIA_HANDLER, "meeting-controller"))
    OK, DENIED, UNAUTH, UNIMPL = (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED)
    table = [
        (V1_ASSIGN, gc, OK), (LEGACY_ASSIGN, gc, OK),
        (V1_ASSIGN, mh, DENIED), (LEGACY_ASSIGN, mc, DENIED),
        # An MH's token passes to MediaCoordinationService (its servicer is not
        # on this server: UNIMPLEMENTED means the check let it through).
        (MH_CONNECTED, mh, UNIMPL), (MH_CONNECTED, gc, DENIED),
        (OTHER, gc, DENIED), ("/x.Y/Z", gc, DENIED),
        # The static GC tokens: MeetingControllerService only.
        (V1_ASSIGN, STATIC, OK), (LEGACY_ASSIGN, STATIC, OK), (MH_CONNECTED, STATIC, UNAUTH),
        (OTHER, STATIC, UNAUTH),
    ]
    for path, token, expected in table:
        code, details = await server.call(path, bearer(token))
        assert code == expected, (path, expected)
        if code == DENIED:
            assert details == "Access denied"
    assert len(server.assignment.calls) == 4
    assert server.count("MeetingControllerService", "ok") == 4
    assert server.count("MediaCoordinationService", "permission_denied") == 1
    assert server.count("other", "permission_denied") == 2


def bad_tokens(ac):
    issuer = ac.issuer
    gc = GLOBAL_CONTROLLER
    return {
        "alg none": ac.mint(gc, header={"alg": "none"}),
        "HS256 keyed with the public key": ac.mint(
            gc, key=issuer.current.public_pem(), header={"kid": issuer.current.kid}),
        "expired": ac.mint(gc, exp=1_000_000, iat=999_000),
        "iat in the future": ac.mint(gc, iat=4_000_000_000, exp=4_000_000_600),
        "no exp": ac.mint(gc, drop=("exp",)),
        "unknown key": ac.mint(gc, key=SigningKey()),
        "over 8 KiB": ac.mint(gc, padding="p" * 8200),
        "signature of another key": ac.mint(gc, key=SigningKey(), header={
            "kid": issuer.current.kid}),
        "not a JWT": "not.a.jwt",
        "empty": "",
    }


@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_unauthenticated_with_a_generic_message(server, ac, log_events):
    tokens = bad_tokens(ac)
    for why, token in tokens.items():
        code, details = await server.call(V1_ASSIGN, bearer(token))
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "Invalid token"), why
    for authorization in (None, "bearer " + ac.mint(GLOBAL_CONTROLLER),
                          ac.mint(GLOBAL_CONTROLLER)):
        code, _ = await server.call(LEGACY_ASSIGN, authorization)
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert server.assignment.calls == []
    text = "".join(repr(e) for e in log_events)
    for token in tokens.values():
        if token:
            assert token not in text
    # Still serving.
    assert (await server.call(V1_ASSIGN, bearer(ac.mint(GLOBAL_CONTROLLER))))[0] == \
        grpc.StatusCode.OK


@pytest_twisted.ensureDeferred
async def test_scope_and_service_type_are_permission_denied(server, ac):
    for token in (ac.mint(GLOBAL_CONTROLLER, scope="service.write.gc"),
                  ac.mint(GLOBAL_CONTROLLER, scope=""),
                  ac.mint(GLOBAL_CONTROLLER, scope=["service.write.mc"]),
                  ac.mint(GLOBAL_CONTROLLER, scope="service.write.mcx"),
                  ac.mint(MEDIA_HANDLER),
                  ac.mint(GLOBAL_CONTROLLER, drop=("service_type",))):
        assert await server.call(V1_ASSIGN, bearer(token)) == (
            grpc.StatusCode.PERMISSION_DENIED, "Access denied")


@pytest_twisted.ensureDeferred
async def test_a_rotated_key_is_fetched_once_for_its_kid(server, ac):
    await wait_until(lambda: server.keys.age() >= 1.0, 5, "the refetch spacing")
    before = ac.jwks_requests
    ac.issuer.rotate(keep_old=True)
    token = ac.mint(GLOBAL_CONTROLLER)
    assert (await server.call(V1_ASSIGN, bearer(token)))[0] == grpc.StatusCode.OK
    # An unknown kid within the refetch spacing is refused without another fetch.
    fetched = ac.jwks_requests
    assert fetched == before + 1
    code, _ = await server.call(V1_ASSIGN, bearer(ac.mint(GLOBAL_CONTROLLER, key=SigningKey())))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert ac.jwks_requests == fetched


@pytest_twisted.ensureDeferred
async def test_the_static_list_is_replaced_on_reload(server, ac):
    server.grpc.use_authorizer(server.check.with_static(TokenCheck((Secret("new-static"),))))
    assert (await server.call(V1_ASSIGN, bearer("new-static")))[0] == grpc.StatusCode.OK
    assert (await server.call(V1_ASSIGN, bearer(STATIC)))[0] == \
        grpc.StatusCode.UNAUTHENTICATED
    assert (await server.call(V1_ASSIGN, bearer(ac.mint(GLOBAL_CONTROLLER))))[0] == \
        grpc.StatusCode.OK


def parsed(jwks):
    return parse_jwks(json.dumps(jwks).encode())


class DictKeys:
    """The JWKS as a mapping the test changes (a key set without fetching)."""

    def __init__(self, ac):
        self.ac = ac
        self.reload()

    def reload(self):
        self.keys = parsed(self.ac.issuer.jwks())

    def key(self, kid):
        return self.keys.get(kid)

    def refetch(self):
        return defer.succeed(None)


class At:
    """A reactor's time and callFromThread, as a worker sees them."""

    def __init__(self, now):
        self.now = now

    def seconds(self):
        return self.now

    def callFromThread(self, f, *args):
        f(*args)


def test_a_verified_token_is_remembered_but_its_claims_and_key_checked_each_call(ac):
    keys = DictKeys(ac)
    clock = At(time.time())
    check = ServiceTokenCheck(keys, clock, 5.0)
    token = bearer(ac.mint(GLOBAL_CONTROLLER, exp=int(clock.now) + 60))
    assert check.thd_authorize(V1_ASSIGN, [token]) == "ok"
    assert check.thd_authorize(V1_ASSIGN, [token]) == "ok"
    assert check.thd_authorize(MH_CONNECTED, [token]) == "permission_denied"
    clock.now += 66  # expired past the skew: the remembered signature does not help
    assert check.thd_authorize(V1_ASSIGN, [token]) == "unauthenticated"
    clock.now -= 66
    ac.issuer.rotate()  # the signing key leaves the JWKS
    keys.reload()
    assert check.thd_authorize(V1_ASSIGN, [token]) == "unauthenticated"
    # A key replaced under the same kid ends the remembered verifications too.
    fresh = bearer(ac.mint(GLOBAL_CONTROLLER))
    assert check.thd_authorize(V1_ASSIGN, [fresh]) == "ok"
    kid = ac.issuer.current.kid
    keys.keys[kid] = parsed({"keys": [SigningKey(kid=kid).public_jwk()]})[kid]
    assert check.thd_authorize(V1_ASSIGN, [fresh]) == "unauthenticated"
