"""The fake GC enforces the contract's auth and validation rules and its
scripting works, all over a real grpc connection."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from fixtures_gc import (
    OTHER_TOKEN,
    TOKEN,
    comprehensive_request,
    fast_request,
    register_request,
)

from mc.proto import gc_mc_legacy_pb2_grpc, gc_mc_pb2, gc_mc_pb2_grpc
from mc.testing import fakegc
from mc.testing.fakegc import FakeGc

ROOT = Path(__file__).resolve().parent.parent
BEARER = (("authorization", "Bearer " + TOKEN),)


@pytest.fixture
def fake():
    gc = FakeGc([TOKEN, OTHER_TOKEN]).start()
    yield gc
    gc.stop()


@pytest.fixture
def stub(fake):
    channel = grpc.insecure_channel(fake.target)
    yield gc_mc_legacy_pb2_grpc.GlobalControllerServiceStub(channel)
    channel.close()


def code_of(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=5, **kwargs)
    return info.value.code()


def test_register_accepts_with_default_intervals_and_is_an_upsert(fake, stub):
    for _ in range(2):
        response = stub.RegisterMC(register_request(), timeout=5, metadata=BEARER)
        assert response.accepted
        assert response.fast_heartbeat_interval_ms == 10000
        assert response.comprehensive_heartbeat_interval_ms == 30000
    assert list(fake.registered()) == ["mc-test-1"]
    assert [r.status for r in fake.registrations()] == ["OK", "OK"]


@pytest.mark.parametrize("authorization", [
    None,
    "",
    "Bearer ",
    "bearer " + TOKEN,
    "BEARER " + TOKEN,
    TOKEN,
    "Bearer  " + TOKEN,
    "Bearer wrong-token",
    "Bearer " + TOKEN + "x",
    "Bearer " + "a" * 8193,
    "Basic " + TOKEN,
])
def test_bad_authorization_is_unauthenticated(fake, stub, authorization):
    metadata = () if authorization is None else (("authorization", authorization),)
    assert code_of(stub.RegisterMC, register_request(), metadata=metadata) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert code_of(stub.NotifyMeetingEnded, gc_mc_pb2.NotifyMeetingEndedRequest(
        meeting_id="m1", region="r"), metadata=metadata) == grpc.StatusCode.UNAUTHENTICATED
    assert fake.registered() == {}


def test_any_configured_token_is_accepted_even_at_8192_bytes():
    long_token = "t" * 8192
    with FakeGc([long_token, OTHER_TOKEN]) as gc, grpc.insecure_channel(gc.target) as ch:
        stub = gc_mc_legacy_pb2_grpc.GlobalControllerServiceStub(ch)
        # grpc's default metadata limit refuses oversized headers at random: repeat.
        for token in [long_token] * 20 + [OTHER_TOKEN]:
            assert stub.RegisterMC(register_request(), timeout=5,
                                   metadata=(("authorization", "Bearer " + token),)).accepted


@pytest.mark.parametrize("overrides", [
    {"id": ""},
    {"id": "a" * 256},
    {"id": "has space"},
    {"id": "dot.ted"},
    {"id": "trailing-newline\n"},
    {"id": "ünïcode"},
    {"region": ""},
    {"region": "r" * 51},
    {"grpc_endpoint": ""},
    {"grpc_endpoint": "mc.example:50052"},
    {"grpc_endpoint": "grpc://mc.example:50052"},
    {"grpc_endpoint": "http://" + "h" * 249},
    {"webtransport_endpoint": "mc.example:4433"},
    {"webtransport_endpoint": "https://" + "h" * 248},
    {"max_meetings": 0},
    {"max_meetings": 2**31},
    {"max_participants": 0},
    {"max_participants": 2**32 - 1},
])
def test_register_validation(fake, stub, overrides):
    assert code_of(stub.RegisterMC, register_request(**overrides), metadata=BEARER) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert fake.registered() == {}
    assert fake.registrations()[0].status == "INVALID_ARGUMENT"


@pytest.mark.parametrize("overrides", [
    {"id": "a" * 255},
    {"region": "r" * 50},
    {"grpc_endpoint": "https://" + "h" * 247},
    {"webtransport_endpoint": ""},
    {"max_meetings": 2**31 - 1, "max_participants": 1},
])
def test_register_boundaries_are_accepted(stub, overrides):
    assert stub.RegisterMC(register_request(**overrides), timeout=5, metadata=BEARER).accepted


@pytest.mark.parametrize("make", [fast_request, comprehensive_request])
def test_heartbeat_rules(fake, stub, make):
    call = stub.FastHeartbeat if make is fast_request else stub.ComprehensiveHeartbeat
    assert code_of(call, make(), metadata=BEARER) == grpc.StatusCode.NOT_FOUND
    stub.RegisterMC(register_request(), timeout=5, metadata=BEARER)
    response = call(make(), timeout=5, metadata=BEARER)
    assert response.acknowledged
    assert abs(response.timestamp - time.time()) < 60
    assert code_of(call, make(controller_id="bad id"), metadata=BEARER) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(call, make(controller_id=""), metadata=BEARER) == \
        grpc.StatusCode.INVALID_ARGUMENT
    no_capacity = make()
    no_capacity.ClearField("capacity")
    assert code_of(call, no_capacity, metadata=BEARER) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(call, make(), metadata=()) == grpc.StatusCode.UNAUTHENTICATED
    kind = "fast" if make is fast_request else "comprehensive"
    assert [r.status for r in fake.heartbeats(kind)] == [
        "NOT_FOUND", "OK", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT",
        "UNAUTHENTICATED"]


def test_zero_capacity_is_present_not_missing(stub):
    stub.RegisterMC(register_request(), timeout=5, metadata=BEARER)
    request = fast_request(capacity=gc_mc_pb2.ControllerCapacity())
    assert stub.FastHeartbeat(request, timeout=5, metadata=BEARER).acknowledged


@pytest.mark.parametrize(("meeting_id", "region", "ok"), [
    ("meeting-1", "us-east-1", True),
    ("never-seen", "eu", True),
    ("", "us-east-1", False),
    ("bad/id", "us-east-1", False),
    ("m" * 256, "us-east-1", False),
    ("meeting-1", "", False),
    ("meeting-1", "r" * 51, False),
])
def test_notify_meeting_ended_rules(stub, meeting_id, region, ok):
    request = gc_mc_pb2.NotifyMeetingEndedRequest(meeting_id=meeting_id, region=region)
    if ok:
        assert stub.NotifyMeetingEnded(request, timeout=5, metadata=BEARER).acknowledged
    else:
        assert code_of(stub.NotifyMeetingEnded, request, metadata=BEARER) == \
            grpc.StatusCode.INVALID_ARGUMENT


def test_records_request_metadata_and_times(fake, stub):
    before_m, before_w = time.monotonic(), time.time()
    stub.RegisterMC(register_request(), timeout=5, metadata=BEARER)
    (record,) = fake.requests()
    assert record.method == "RegisterMC"
    assert record.request == register_request()
    assert record.metadata["authorization"] == "Bearer " + TOKEN
    assert before_m <= record.monotonic <= time.monotonic()
    assert before_w - 1 <= record.wall <= time.time() + 1
    assert TOKEN not in repr(record)
    assert fake.requests("FastHeartbeat") == []
    fake.clear()
    assert fake.requests() == []


def test_scripting_reject_fail_forget_unavailable_intervals(fake, stub):
    fake.reject_registrations("region full")
    response = stub.RegisterMC(register_request(), timeout=5, metadata=BEARER)
    assert (response.accepted, response.message) == (False, "region full")
    assert fake.registered() == {}
    fake.accept_registrations()
    fake.set_intervals(1500, 4500)
    response = stub.RegisterMC(register_request(), timeout=5, metadata=BEARER)
    assert (response.fast_heartbeat_interval_ms,
            response.comprehensive_heartbeat_interval_ms) == (1500, 4500)

    fake.fail_heartbeats(2)
    fake.fail_heartbeats(1, "UNAVAILABLE")
    codes = [code_of(stub.FastHeartbeat, fast_request(), metadata=BEARER),
             code_of(stub.ComprehensiveHeartbeat, comprehensive_request(), metadata=BEARER),
             code_of(stub.FastHeartbeat, fast_request(), metadata=BEARER)]
    assert codes == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                     grpc.StatusCode.UNAVAILABLE]
    assert stub.FastHeartbeat(fast_request(), timeout=5, metadata=BEARER).acknowledged

    fake.forget("mc-test-1")
    assert code_of(stub.FastHeartbeat, fast_request(), metadata=BEARER) == \
        grpc.StatusCode.NOT_FOUND
    stub.RegisterMC(register_request(), timeout=5, metadata=BEARER)
    stub.RegisterMC(register_request(id="mc-test-2"), timeout=5, metadata=BEARER)
    fake.forget_all()
    assert code_of(stub.FastHeartbeat, fast_request("mc-test-2"), metadata=BEARER) == \
        grpc.StatusCode.NOT_FOUND

    fake.set_unavailable(True)
    assert code_of(stub.RegisterMC, register_request(), metadata=BEARER) == \
        grpc.StatusCode.UNAVAILABLE
    assert code_of(stub.RegisterMC, register_request(), metadata=()) == \
        grpc.StatusCode.UNAVAILABLE
    fake.set_unavailable(False)
    assert stub.RegisterMC(register_request(), timeout=5, metadata=BEARER).accepted


def test_delay_holds_answers_and_stop_cuts_it_short(fake, stub):
    fake.set_delay(0.3)
    started = time.monotonic()
    assert stub.RegisterMC(register_request(), timeout=5, metadata=BEARER).accepted
    assert time.monotonic() - started >= 0.3

    fake.set_delay(60)
    future = stub.RegisterMC.future(register_request(), timeout=30, metadata=BEARER)
    fake.wait_for(lambda: len(fake.registrations()) == 2, timeout=5)
    started = time.monotonic()
    fake.stop(grace=0.5)
    assert time.monotonic() - started < 5
    # Answered inside the grace period, or cut off: either way, not left hanging.
    future.exception(timeout=5)
    assert future.done()


def test_restart_on_the_same_port_keeps_the_url(fake):
    url = fake.url
    fake.stop()
    fake.forget_all()
    fake.start()
    assert fake.url == url
    with grpc.insecure_channel(fake.target) as channel:
        stub = gc_mc_legacy_pb2_grpc.GlobalControllerServiceStub(channel)
        assert stub.RegisterMC(register_request(), timeout=5, metadata=BEARER).accepted


def test_second_server_on_a_taken_port_fails(fake):
    with pytest.raises(OSError):
        FakeGc(TOKEN, port=fake.port).start()


def test_wait_for_times_out_and_sees_requests_from_other_threads(fake, stub):
    with pytest.raises(TimeoutError):
        fake.wait_for(lambda: fake.registrations(), timeout=0.1)
    thread = threading.Thread(
        target=lambda: stub.RegisterMC(register_request(), timeout=5, metadata=BEARER))
    thread.start()
    (record,) = fake.wait_for(lambda: fake.registrations(), timeout=5)
    thread.join()
    assert record.status == "OK"


def test_tls(tmp_path):
    from fixtures_gc import self_signed_cert

    cert, key = self_signed_cert()
    with FakeGc(TOKEN, tls=(cert, key)) as gc:
        assert gc.url.startswith("https://127.0.0.1:")
        creds = grpc.ssl_channel_credentials(root_certificates=cert)
        with grpc.secure_channel(gc.target, creds) as channel:
            stub = gc_mc_legacy_pb2_grpc.GlobalControllerServiceStub(channel)
            assert stub.RegisterMC(register_request(), timeout=5, metadata=BEARER).accepted


class _FakeMc(gc_mc_legacy_pb2_grpc.MeetingControllerServiceServicer):
    def __init__(self):
        self.calls = []

    def AssignMeetingWithMh(self, request, context):
        self.calls.append((request, dict(context.invocation_metadata())))
        return gc_mc_pb2.AssignMeetingWithMhResponse(
            accepted=False, rejection_reason=gc_mc_pb2.REJECTION_REASON_DRAINING)


def test_assign_meeting_client_side():
    from concurrent.futures import ThreadPoolExecutor

    mc = _FakeMc()
    server = grpc.server(ThreadPoolExecutor(2))
    gc_mc_legacy_pb2_grpc.add_MeetingControllerServiceServicer_to_server(mc, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        response = fakegc.assign_meeting(
            f"http://127.0.0.1:{port}", "meeting-9",
            [("mh-1", "https://mh1:4433", ""),
             {"mh_id": "mh-2", "webtransport_endpoint": "https://mh2:4433",
              "grpc_endpoint": "http://mh2:50052"}],
            TOKEN, timeout=5)
        assert response.rejection_reason == gc_mc_pb2.REJECTION_REASON_DRAINING
        fakegc.assign_meeting(f"127.0.0.1:{port}", "meeting-10", [], None,
                              authorization="bearer x", timeout=5)
        fakegc.assign_meeting(f"127.0.0.1:{port}", "meeting-11", [], None, timeout=5)
    finally:
        server.stop(None)
    (request, metadata), (_, malformed), (_, missing) = mc.calls
    assert request.meeting_id == "meeting-9"
    assert request.requesting_gc_id == "fake-gc"
    assert [(a.mh_id, a.webtransport_endpoint, a.grpc_endpoint)
            for a in request.mh_assignments] == [
        ("mh-1", "https://mh1:4433", ""), ("mh-2", "https://mh2:4433", "http://mh2:50052")]
    assert metadata["authorization"] == "Bearer " + TOKEN
    assert malformed["authorization"] == "bearer x"
    assert "authorization" not in missing


@pytest.mark.parametrize("dialect", ["legacy", "v1"])
def test_command_line_prints_one_json_line_per_request(tmp_path, dialect):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{TOKEN}\n{OTHER_TOKEN}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mc.testing.fakegc", "--listen", "127.0.0.1:0",
         "--token-file", str(token_file), "--dialect", dialect],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        banner = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in banner
        target = banner.rsplit("http://", 1)[1].strip()
        with grpc.insecure_channel(target) as channel:
            module = gc_mc_legacy_pb2_grpc if dialect == "legacy" else gc_mc_pb2_grpc
            stub = module.GlobalControllerServiceStub(channel)
            stub.RegisterMC(register_request(), timeout=5, metadata=BEARER)
            code_of(stub.FastHeartbeat, fast_request("other"), metadata=BEARER)
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lines[0]["method"] == "RegisterMC"
    assert lines[0]["status"] == "OK" and lines[0]["dialect"] == dialect
    assert lines[0]["fields"]["id"] == "mc-test-1"
    assert lines[0]["fields"]["max_participants"] == 100
    assert lines[1]["method"] == "FastHeartbeat"
    assert lines[1]["status"] == "NOT_FOUND"
    assert lines[1]["fields"]["capacity"]["current_participants"] == 7
