"""Hostile input against the daemon under twistd: random and malformed
AssignMeetingWithMh requests, raw bytes, oversized messages, floods of bad
tokens and half-open HTTP connections. Each is refused with the right status,
writes nothing to Redis and leaves memory flat, with the gRPC server in
plaintext and over TLS."""

import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mc.assignment import InvalidAssignment, validate_assignment
from mc.proto import gc_mc_pb2 as pb
from mc.proto import gc_mc_pb2_grpc
from mc.redis.keys import meetings_index_key
from mc.testing.certs import write_self_signed
from mc.testing.daemon import wait_for
from tests.conftest import E2E_GC_TOKEN

METHOD = "/dark_tower.internal.MeetingControllerService/AssignMeetingWithMh"
AUTH = (("authorization", "Bearer " + E2E_GC_TOKEN),)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
ids = st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True), text)
endpoints = st.one_of(st.sampled_from(["https://mh.example:4433", "http://10.0.0.1/wt",
                                       "ftp://mh.example", "https://", "https://u:p@h:1",
                                       "https://h:99999", ""]), text)
assignments = st.lists(st.tuples(ids, endpoints, endpoints), max_size=20)


@pytest.fixture(params=["plaintext", "tls"])
def mc(request, mc_procs, tmp_path):
    env = {"MC_HTTP_IDLE_SECONDS": "0.5"}
    if request.param == "tls":
        cert = write_self_signed(tmp_path, name="grpc")
        env.update(MC_GRPC_TLS_CERT_PATH=cert.cert_path, MC_GRPC_TLS_KEY_PATH=cert.key_path)
    proc = mc_procs(env=env)
    wait_for(proc.ready, 20, what="MC ready")
    return proc


def open_channel(mc):
    """A channel to the MC's gRPC server, over TLS when it serves TLS (its
    self-signed certificate is the client's CA)."""
    cert = mc.env.get("MC_GRPC_TLS_CERT_PATH")
    if cert is None:
        return grpc.insecure_channel(mc.grpc_target)
    with open(cert, "rb") as f:
        return grpc.secure_channel(mc.grpc_target, grpc.ssl_channel_credentials(f.read()))


@pytest.fixture
def channel(mc):
    with open_channel(mc) as ch:
        yield ch


def meeting_keys(redis):
    return set(redis.command("KEYS", "meeting:*"))


def written_for(meeting_ids):
    return {f"meeting:{m}:{k}" for m in meeting_ids for k in ("generation", "mh", "state")}


def valid(meeting_id, mh):
    try:
        validate_assignment(meeting_id, tuple(mh))
    except InvalidAssignment:
        return False
    return True


def test_random_requests_get_the_right_status_and_write_only_when_accepted(
        mc, channel, redis):
    stub = gc_mc_pb2_grpc.MeetingControllerServiceStub(channel)
    accepted = set()

    @FUZZ
    @given(ids, assignments)
    def call(meeting_id, mh):
        request = pb.AssignMeetingWithMhRequest(
            meeting_id=meeting_id, requesting_gc_id="fuzz", mh_assignments=[
                pb.MhAssignment(mh_id=i, webtransport_endpoint=e, grpc_endpoint=g)
                for i, e, g in mh])
        if valid(meeting_id, mh):
            assert stub.AssignMeetingWithMh(request, timeout=5, metadata=AUTH).accepted
            accepted.add(meeting_id)
        else:
            with pytest.raises(grpc.RpcError) as info:
                stub.AssignMeetingWithMh(request, timeout=5, metadata=AUTH)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert meeting_keys(redis) == written_for(accepted)

    call()
    assert set(redis.command("SMEMBERS", meetings_index_key(mc.mc_id))) == accepted


def test_raw_bytes_on_the_method_path(mc, channel, redis):
    raw = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    accepted = set()

    @FUZZ
    @given(st.binary(max_size=2048))
    def call(payload):
        try:
            reply = pb.AssignMeetingWithMhResponse.FromString(
                raw(payload, timeout=5, metadata=AUTH))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:  # the bytes happened to be a valid request
            assert reply.accepted
            accepted.add(pb.AssignMeetingWithMhRequest.FromString(payload).meeting_id)
        assert meeting_keys(redis) == written_for(accepted)

    call()
    assert mc.alive()


@pytest.mark.parametrize("size, code", [
    (70 * 1024, grpc.StatusCode.INVALID_ARGUMENT),  # above the MC's 64 KiB limit
    (300 * 1024, grpc.StatusCode.RESOURCE_EXHAUSTED),  # above grpc's transport limit
])
def test_oversized_requests_are_refused(mc, channel, redis, size, code):
    stub = gc_mc_pb2_grpc.MeetingControllerServiceStub(channel)
    request = pb.AssignMeetingWithMhRequest(
        meeting_id="big", requesting_gc_id="x" * size, mh_assignments=[
            pb.MhAssignment(mh_id="mh-1", webtransport_endpoint="https://mh.example:4433")])
    with pytest.raises(grpc.RpcError) as info:
        stub.AssignMeetingWithMh(request, timeout=5, metadata=AUTH)
    assert info.value.code() == code
    assert meeting_keys(redis) == set()
    assert mc.alive()


BAD_AUTH = [(), (("authorization", "Bearer wrong-token"),), (("authorization", "Bearer "),),
            (("authorization", "bearer " + E2E_GC_TOKEN),), (("authorization", E2E_GC_TOKEN),),
            (("authorization", "Bearer " + "x" * 9000),),
            (("authorization", "Bearer " + E2E_GC_TOKEN), ("authorization", "Bearer x"))]


def test_thousands_of_bad_tokens_are_refused_with_memory_flat(mc, redis):
    request = pb.AssignMeetingWithMhRequest(meeting_id="m-1", mh_assignments=[
        pb.MhAssignment(mh_id="mh-1", webtransport_endpoint="https://mh.example:4433")])

    def flood(calls):
        codes = set()
        with open_channel(mc) as ch:
            stub = gc_mc_pb2_grpc.MeetingControllerServiceStub(ch)
            for i in range(calls):
                try:
                    stub.AssignMeetingWithMh(request, timeout=5,
                                             metadata=BAD_AUTH[i % len(BAD_AUTH)])
                except grpc.RpcError as e:
                    codes.add(e.code())
                else:
                    codes.add("accepted")
        return codes

    proc = psutil.Process(mc.pid)
    with ThreadPoolExecutor(4) as pool:
        codes = set().union(*pool.map(flood, [150] * 4))
        threads, rss = proc.num_threads(), proc.memory_info().rss
        codes |= set().union(*pool.map(flood, [600] * 4))
    assert codes == {grpc.StatusCode.UNAUTHENTICATED}
    assert proc.num_threads() <= threads + 2
    assert proc.memory_info().rss <= rss + 8 * 2**20
    assert redis.command("KEYS", "meeting:*") == [], "nothing but the MC's own marker"
    assert 1 <= mc.log().count("refused a call to") <= 2, "warnings are rate-limited"


def test_slow_and_half_open_http_connections_time_out(mc):
    started = time.monotonic()
    held = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", mc.http_port), timeout=5)
        if i % 2:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: mc\r\n")  # never finished
        held.append(s)
    assert mc.http("/healthz")[0] == 200, "a slowloris does not block the port"
    for s in held:
        with s, contextlib.suppress(ConnectionResetError):
            assert s.recv(1024) == b""  # closed by the server
    assert time.monotonic() - started < 5
