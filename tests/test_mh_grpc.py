"""The media-handler peer over real gRPC on 127.0.0.1: GrpcMhClient against the
FakeMh (accepted, refused, failing, never answering, nobody listening), the
registrar's retries end to end, and the MediaCoordinationService servicer
(ids checked, every valid report acknowledged, kept only for hosted
meetings and known participants, bounded per meeting, dropped on a leave or
the meeting's end)."""

import concurrent.futures

import grpc
import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from zope.interface.verify import verifyObject

from mc.errors import MhCallError
from mc.interfaces import IMhClient
from mc.meetings import MAX_MEDIA_CONNECTIONS_PER_MEETING, MeetingRegistry
from mc.mh.client import GrpcMhClient
from mc.mh.coordination import MediaCoordination
from mc.mh.registration import MeetingRegistrar
from mc.ops.metrics import Metrics
from mc.proto import media_pb2
from mc.testing.mh import FakeMh
from mc.testing.redisproc import free_port
from mc.tracing import Tracing
from tests.helpers import wait_until
from tests.test_mh_registration import Identity

REQUEST = media_pb2.RegisterMeetingRequest(meeting_id="m-1", mc_id="mc-1",
                                           mc_grpc_endpoint="http://127.0.0.1:50052")
METADATA = (("authorization", "Bearer svc-token-Z9"),)


@pytest.fixture
def mh():
    fake = FakeMh("mh-a").start()
    yield fake
    fake.stop()


@pytest.fixture
def client():
    c = GrpcMhClient(reactor, connect_timeout=1.0, deadline=1.0)
    yield c
    c.close()


def test_the_client_is_an_mh_client(client):
    verifyObject(IMhClient, client)


@pytest_twisted.ensureDeferred
async def test_register_meeting_is_recorded_with_its_metadata(mh, client):
    response = await client.register_meeting(mh.grpc_url, REQUEST, METADATA)
    assert response.accepted
    (record,) = mh.registrations()
    assert record.request == REQUEST
    assert record.metadata["authorization"] == "Bearer svc-token-Z9"


@pytest_twisted.ensureDeferred
async def test_refused_failing_and_silent_mhs(mh, client):
    mh.refuse()
    assert not (await client.register_meeting(mh.grpc_url, REQUEST, METADATA)).accepted
    mh.fail(code=grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(MhCallError) as e:
        await client.register_meeting(mh.grpc_url, REQUEST, METADATA)
    assert e.value.code == "PERMISSION_DENIED"
    mh.hang(5)
    with pytest.raises(MhCallError) as e:
        await client.register_meeting(mh.grpc_url, REQUEST, METADATA)
    assert e.value.code == "DEADLINE_EXCEEDED"


@pytest_twisted.ensureDeferred
async def test_nobody_listening_fails_within_the_connect_timeout(client):
    started = reactor.seconds()
    with pytest.raises(MhCallError) as e:
        await client.register_meeting(f"http://127.0.0.1:{free_port()}", REQUEST, METADATA)
    assert e.value.code == "UNAVAILABLE"
    assert reactor.seconds() - started < 3.0


@pytest_twisted.ensureDeferred
async def test_a_registration_rides_out_an_mh_failing_twice(mh):
    metrics = Metrics()
    registry = MeetingRegistry(10, 100, 0, reactor)
    meeting = registry.commit(registry.reserve("m-1"), 1, (mh.assignment(),))
    registrar = MeetingRegistrar(GrpcMhClient(reactor), Identity(), "mc-1",
                                 "http://127.0.0.1:50052", reactor, metrics, Tracing({}))
    registrar.startService()
    try:
        mh.fail(2)
        registrar.first_join(meeting)
        await wait_until(lambda: metrics.mh_registrations.labels(
            "first_join", "accepted")._value.get() == 1, timeout=10)
        times = [r.monotonic for r in mh.registrations()]
        assert len(times) == 3
        assert 0.9 <= times[1] - times[0] < 2.0 and 1.9 <= times[2] - times[1] < 3.5
    finally:
        registrar.stopService()


class Coordination:
    """The servicer on a real grpc server (the MC's server adds its token check)."""

    def __init__(self):
        self.metrics = Metrics()
        self.registry = MeetingRegistry(10, 5000, 0, reactor, max_participants_per_meeting=2000)
        self.servicer = MediaCoordination(self.registry, reactor, self.metrics)
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((self.servicer.handler(),))
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()
        self.mh = FakeMh("mh-a")

    def gauge(self):
        return self.metrics.registry.get_sample_value("mc_media_connections_current")

    def reports(self, kind, outcome):
        return self.metrics.mh_reports.labels(kind, outcome)._value.get()


@pytest.fixture
def coordination():
    c = Coordination()
    yield c
    c.server.stop(None)


def call(fn, *args, **kw):
    """A blocking gRPC call of a test double, off the reactor."""
    return threads.deferToThread(fn, *args, **kw)


def admit(meeting, n):
    return [meeting.admit(f"u{i}", f"n{i}", None, 0.0, lambda i=i: f"p-{i}") for i in range(n)]


@pytest.mark.parametrize("field, value", [
    ("meeting_id", ""), ("participant_id", ""), ("handler_id", ""),
    ("meeting_id", "m" * 257), ("participant_id", "\u00e9" * 129), ("handler_id", "h" * 10_000),
])
@pytest_twisted.ensureDeferred
async def test_empty_or_oversized_ids_are_invalid_argument(coordination, field, value):
    ids = {"meeting_id": "m-1", "participant_id": "p-0", "handler_id": "mh-a", field: value}
    for connected in (True, False):
        notify = coordination.mh.notify_connected if connected else \
            coordination.mh.notify_disconnected
        with pytest.raises(grpc.RpcError) as e:
            await call(notify, coordination.target, ids["meeting_id"], ids["participant_id"],
                       token="t", handler_id=ids["handler_id"])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == "Invalid request"
    assert coordination.reports("connected", "invalid") == 1


@pytest_twisted.ensureDeferred
async def test_bytes_that_are_no_request_are_invalid_argument(coordination):
    with grpc.insecure_channel(coordination.target) as channel:
        raw = channel.unary_unary(
            "/dark_tower.internal.v1.MediaCoordinationService/NotifyParticipantConnected")
        with pytest.raises(grpc.RpcError) as e:
            await call(raw, b"\xff\xff\xff", timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest_twisted.ensureDeferred
async def test_reports_about_unknown_meetings_or_people_are_acknowledged_and_kept_nowhere(
        coordination):
    meeting = coordination.registry.commit(coordination.registry.reserve("m-1"), 1, ())
    admit(meeting, 1)
    for meeting_id, participant_id in [("m-2", "p-0"), ("m-1", "p-9")] * 50:
        response = await call(coordination.mh.notify_connected, coordination.target,
                              meeting_id, participant_id, token="t")
        assert response.acknowledged
    await wait_until(lambda: coordination.reports("connected", "unknown_participant") == 50)
    assert coordination.reports("connected", "unknown_meeting") == 50
    assert coordination.gauge() == 0
    assert all(p.media_connections is None for p in meeting.participants)


@pytest_twisted.ensureDeferred
async def test_reports_follow_the_gauge_through_a_leave_and_the_meetings_end(coordination):
    registry = coordination.registry
    meeting = registry.commit(registry.reserve("m-1"), 1, ())
    ann, bob = admit(meeting, 2)
    mh = coordination.mh
    for participant, handler in [(ann, "mh-a"), (ann, "mh-b"), (bob, "mh-a"), (ann, "mh-a")]:
        r = await call(mh.notify_connected, coordination.target, "m-1",
                       participant.participant_id, token="t", handler_id=handler)
        assert r.acknowledged
    await wait_until(lambda: coordination.reports("connected", "duplicate") == 1)
    assert coordination.gauge() == 3
    await call(mh.notify_disconnected, coordination.target, "m-1", ann.participant_id,
               token="t", handler_id="mh-b")
    await wait_until(lambda: coordination.gauge() == 2)
    meeting.leave(ann, "VOLUNTARY", 1.0)
    assert coordination.gauge() == 1
    await call(mh.notify_disconnected, coordination.target, "m-1", ann.participant_id,
               token="t", handler_id="mh-a")
    await wait_until(lambda: coordination.reports("disconnected", "unknown_participant") == 1)
    registry.remove("m-1")
    assert coordination.gauge() == 0


def test_connections_are_bounded_per_meeting():
    registry = MeetingRegistry(10, 5000, 0, reactor, max_participants_per_meeting=2000)
    metrics = Metrics()
    servicer = MediaCoordination(registry, reactor, metrics)
    meeting = registry.commit(registry.reserve("m-1"), 1, ())
    people = admit(meeting, 1200)
    for p in people:
        servicer.connected("m-1", p.participant_id, "mh-a")
    assert meeting.media_connection_count == MAX_MEDIA_CONNECTIONS_PER_MEETING
    assert metrics.mh_reports.labels("connected", "full")._value.get() == 200
    servicer.disconnected("m-1", people[0].participant_id, "mh-a")
    servicer.connected("m-1", people[-1].participant_id, "mh-a")
    assert meeting.media_connection_count == MAX_MEDIA_CONNECTIONS_PER_MEETING
    assert metrics.registry.get_sample_value("mc_media_connections_current") == 1000
