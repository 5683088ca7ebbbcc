"""GrpcGcClient against a real FakeGc over the network, on the real reactor."""

import threading

import pytest
import pytest_twisted
from fixtures_gc import (
    TOKEN,
    comprehensive_request,
    fast_request,
    gc_config,
    register_request,
    self_signed_cert,
    static_client,
)
from twisted.internet import defer, reactor, task
from zope.interface.verify import verifyObject

from mc.errors import GcCallError
from mc.interfaces import IGcClient
from mc.proto import gc_mc_pb2
from mc.testing.fakegc import FakeGc


@pytest.fixture
def fake():
    gc = FakeGc(TOKEN).start()
    yield gc
    gc.stop()


@pytest.fixture
def client(fake):
    c = static_client(gc_config(fake.url), deadline=5.0)
    yield c
    c.close()


async def call_error(d):
    with pytest.raises(GcCallError) as info:
        await d
    return info.value


def test_provides_the_interface_and_hides_the_token(client):
    assert verifyObject(IGcClient, client)
    assert TOKEN not in repr(client)


@pytest_twisted.ensureDeferred
async def test_register_and_heartbeats_arrive_exactly(fake, client):
    threads = []
    d = client.register(register_request())
    d.addCallback(lambda r: threads.append(threading.current_thread()) or r)
    response = await d
    assert threads == [threading.main_thread()]
    assert response.accepted
    assert (response.fast_heartbeat_interval_ms,
            response.comprehensive_heartbeat_interval_ms) == (10000, 30000)

    assert (await client.fast_heartbeat(fast_request())).acknowledged
    assert (await client.comprehensive_heartbeat(comprehensive_request())).acknowledged
    ended = gc_mc_pb2.NotifyMeetingEndedRequest(meeting_id="meeting-1", region="us-east-1")
    assert (await client.notify_meeting_ended(ended)).acknowledged

    records = fake.requests()
    assert [r.method for r in records] == [
        "RegisterMC", "FastHeartbeat", "ComprehensiveHeartbeat", "NotifyMeetingEnded"]
    assert [r.request for r in records] == [
        register_request(), fast_request(), comprehensive_request(), ended]
    assert records[2].request.cpu_usage_percent == 12.5
    assert records[2].request.health == gc_mc_pb2.DEGRADED
    for r in records:
        assert r.metadata["authorization"] == "Bearer " + TOKEN
        assert r.status == "OK"


@pytest_twisted.ensureDeferred
async def test_not_found_unavailable_invalid_map_to_codes(fake, client):
    error = await call_error(client.fast_heartbeat(fast_request()))
    assert (error.method, error.code) == ("FastHeartbeat", "NOT_FOUND")

    error = await call_error(client.register(register_request(id="bad id")))
    assert (error.method, error.code) == ("RegisterMC", "INVALID_ARGUMENT")

    fake.set_unavailable(True)
    error = await call_error(client.comprehensive_heartbeat(comprehensive_request()))
    assert (error.method, error.code) == ("ComprehensiveHeartbeat", "UNAVAILABLE")
    fake.set_unavailable(False)

    await client.register(register_request())
    fake.forget_all()
    error = await call_error(client.fast_heartbeat(fast_request()))
    assert error.code == "NOT_FOUND"


@pytest_twisted.ensureDeferred
async def test_stopped_gc_is_unavailable(fake):
    url = fake.url
    fake.stop()
    c = static_client(gc_config(url), deadline=5.0)
    try:
        error = await call_error(c.register(register_request()))
    finally:
        c.close()
    assert error.code == "UNAVAILABLE"


@pytest_twisted.ensureDeferred
async def test_wrong_token_is_unauthenticated_and_not_echoed(fake):
    c = static_client(gc_config(fake.url, token="not-the-token"))
    try:
        error = await call_error(c.register(register_request()))
    finally:
        c.close()
    assert error.code == "UNAUTHENTICATED"
    assert "not-the-token" not in str(error) and "not-the-token" not in repr(error)


@pytest_twisted.ensureDeferred
async def test_slow_gc_is_deadline_exceeded(fake):
    fake.set_delay(2)
    c = static_client(gc_config(fake.url), deadline=0.2)
    try:
        error = await call_error(c.register(register_request()))
    finally:
        c.close()
    assert (error.method, error.code) == ("RegisterMC", "DEADLINE_EXCEEDED")


@pytest_twisted.ensureDeferred
async def test_cancel_cancels_the_call(fake, client):
    fake.set_delay(5)
    d = client.register(register_request())
    while not fake.registrations():
        await task.deferLater(reactor, 0.02)
    d.cancel()
    with pytest.raises(defer.CancelledError):
        await d
    # The grpc future's done-callback after cancellation must not touch d again.
    await task.deferLater(reactor, 0.2)


@pytest_twisted.ensureDeferred
async def test_tls_with_ca_file(tmp_path):
    cert, key = self_signed_cert()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cert)
    with FakeGc(TOKEN, tls=(cert, key)) as gc:
        assert gc.url.startswith("https://")
        c = static_client(gc_config(gc.url, ca_file=ca_file), deadline=5.0)
        try:
            assert (await c.register(register_request())).accepted
        finally:
            c.close()
        # With the system roots the self-signed certificate is not trusted.
        c = static_client(gc_config(gc.url), deadline=5.0)
        try:
            error = await call_error(c.register(register_request()))
        finally:
            c.close()
        assert error.code == "UNAVAILABLE"
        assert [r.status for r in gc.registrations()] == ["OK"]
        assert gc.registrations()[0].metadata["authorization"] == "Bearer " + TOKEN
