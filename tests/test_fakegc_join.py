"""The fake GC's join flow places meetings the way the deployed GC does (reuse
a healthy, fresh MC; otherwise the least loaded eligible one that accepts) and
hands out meeting tokens that verify against the JWKS it serves. The MCs here
are real grpc MeetingControllerService servers that register and heartbeat
through the fake's own grpc API."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from fixtures_gc import TOKEN
from twisted.internet import defer
from twisted.internet.task import Clock

from mc.participants.tokens import TokenVerifier
from mc.proto import gc_mc_legacy_pb2_grpc, gc_mc_pb2
from mc.testing.fakegc import FakeGc, NoMcAvailable

ROOT = Path(__file__).resolve().parent.parent
BEARER = (("authorization", "Bearer " + TOKEN),)
GC_TOKEN = "gc-to-mc-token-J4"


class FakeMc(gc_mc_legacy_pb2_grpc.MeetingControllerServiceServicer):
    """A MeetingControllerService that accepts (or rejects with ``reject``)
    every assignment and records it; it registers and heartbeats on demand."""

    def __init__(self, gc, mc_id):
        self.mc_id = mc_id
        self.reject = None
        self.calls = []
        self._gc = gc_mc_legacy_pb2_grpc.GlobalControllerServiceStub(
            grpc.insecure_channel(gc.target))
        self._server = grpc.server(ThreadPoolExecutor(4))
        gc_mc_legacy_pb2_grpc.add_MeetingControllerServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.grpc_endpoint = f"http://127.0.0.1:{port}"
        self.webtransport_endpoint = f"https://{mc_id}.example:4433"

    def AssignMeetingWithMh(self, request, context):
        self.calls.append((request, dict(context.invocation_metadata()).get("authorization")))
        if self.reject is not None:
            return gc_mc_pb2.AssignMeetingWithMhResponse(accepted=False,
                                                         rejection_reason=self.reject)
        return gc_mc_pb2.AssignMeetingWithMhResponse(accepted=True)

    def meetings(self):
        return [request.meeting_id for request, _ in self.calls]

    def register(self):
        assert self._gc.RegisterMC(gc_mc_pb2.RegisterMCRequest(
            id=self.mc_id, region="us-east-1", grpc_endpoint=self.grpc_endpoint,
            webtransport_endpoint=self.webtransport_endpoint, max_meetings=10,
            max_participants=100), timeout=5, metadata=BEARER).accepted
        return self

    def heartbeat(self, health=gc_mc_pb2.HEALTHY, current=0, max_meetings=10):
        self._gc.FastHeartbeat(gc_mc_pb2.FastHeartbeatRequest(
            controller_id=self.mc_id, health=health, capacity=gc_mc_pb2.ControllerCapacity(
                max_meetings=max_meetings, current_meetings=current, max_participants=100,
                current_participants=0)), timeout=5, metadata=BEARER)
        return self

    def stop(self):
        self._server.stop(None)


@pytest.fixture
def fake():
    gc = FakeGc(TOKEN, mc_token=GC_TOKEN, stale_after=5.0).start()
    yield gc
    gc.stop()


@pytest.fixture
def mcs(fake):
    """``mcs(mc_id)``: a registered FakeMc, stopped at teardown."""
    made = []

    def make(mc_id):
        mc = FakeMc(fake, mc_id).register()
        made.append(mc)
        return mc

    yield make
    for mc in made:
        mc.stop()


def verify(fake, token, meeting_id):
    """The token's claims as the MC's verifier sees them, with the JWKS
    fetched from the fake's HTTP URL."""
    with urllib.request.urlopen(fake.jwks_url, timeout=5) as response:
        jwks = response.read()
    clock = Clock()
    clock.advance(time.time())
    verifier = TokenVerifier(fake.jwks_url, None, 5, clock, fetch=lambda url: defer.succeed(jwks))
    verifier.startService()
    out = []
    verifier.verify(token, meeting_id).addBoth(out.append)
    verifier.stopService()
    (claims,) = out
    assert isinstance(claims, dict), claims
    return claims


def test_a_new_meeting_goes_to_the_least_loaded_healthy_mc_with_a_valid_token(fake, mcs):
    busy, idle = mcs("mc-busy").heartbeat(current=5), mcs("mc-idle").heartbeat(current=1)
    join = fake.join("meeting-1", "alice", role="host")
    assert (join.mc_id, join.webtransport_endpoint, join.assigned) == (
        "mc-idle", "https://mc-idle.example:4433", True)
    assert busy.calls == []
    ((request, authorization),) = idle.calls
    assert authorization == "Bearer " + GC_TOKEN
    assert request.meeting_id == "meeting-1"
    assert request.requesting_gc_id == "fake-gc"
    assert [(a.mh_id, a.webtransport_endpoint) for a in request.mh_assignments] == [
        ("mh-1", "https://mh-1.example:4433")]
    assert fake.placement("meeting-1") == "mc-idle"

    claims = verify(fake, join.token, "meeting-1")
    assert (claims["sub"], claims["meeting_id"], claims["role"]) == ("alice", "meeting-1", "host")
    assert join.token not in repr(join)


def test_mh_assignments_and_the_mc_token_are_passed_on(fake, mcs):
    mc = mcs("mc-1").heartbeat()
    fake.set_mc_token("rotated-gc-token")
    fake.join("meeting-1", "u", mh_assignments=[
        ("mh-a", "https://mh-a:4433", ""),
        ("mh-b", "https://mh-b:4433", "")])
    ((request, authorization),) = mc.calls
    assert authorization == "Bearer rotated-gc-token"
    assert [a.mh_id for a in request.mh_assignments] == ["mh-a", "mh-b"]


def test_a_healthy_fresh_mc_is_reused(fake, mcs):
    first, second = mcs("mc-1").heartbeat(), mcs("mc-2").heartbeat(current=3)
    a = fake.join("meeting-1", "alice")
    first.heartbeat(current=9)  # now the busier one: reuse does not care
    b = fake.join("meeting-1", "bob")
    assert (a.mc_id, a.assigned) == ("mc-1", True)
    assert (b.mc_id, b.assigned) == ("mc-1", False)
    assert first.meetings() == ["meeting-1"]
    assert second.calls == []
    assert a.token != b.token
    assert verify(fake, b.token, "meeting-1")["sub"] == "bob"


@pytest.mark.parametrize("health", [gc_mc_pb2.DRAINING, gc_mc_pb2.DEGRADED,
                                    gc_mc_pb2.UNHEALTHY, gc_mc_pb2.PENDING])
def test_an_mc_no_longer_healthy_loses_the_meeting_to_another(fake, mcs, health):
    first, second = mcs("mc-1").heartbeat(), mcs("mc-2").heartbeat(current=5)
    assert fake.join("meeting-1", "alice").mc_id == "mc-1"
    first.heartbeat(health=health)
    join = fake.join("meeting-1", "bob")
    assert (join.mc_id, join.assigned) == ("mc-2", True)
    assert first.meetings() == ["meeting-1"]
    assert second.meetings() == ["meeting-1"]
    assert fake.placement("meeting-1") == "mc-2"
    # Healthy again, the first MC is not handed the meeting back: mc-2 holds it.
    first.heartbeat()
    assert fake.join("meeting-1", "carol").mc_id == "mc-2"


def test_a_silent_mc_loses_the_meeting_and_is_never_picked(fake, mcs):
    first, second = mcs("mc-1").heartbeat(), mcs("mc-2").heartbeat(current=5)
    assert fake.join("meeting-1", "alice").mc_id == "mc-1"
    fake.stale_after = 0.3
    time.sleep(0.4)
    second.heartbeat(current=5)
    join = fake.join("meeting-1", "carol")
    assert (join.mc_id, join.assigned) == ("mc-2", True)
    assert fake.join("meeting-2", "dave").mc_id == "mc-2"  # mc-1 is silent: not a candidate
    assert first.meetings() == ["meeting-1"]


def test_an_mc_at_capacity_is_skipped(fake, mcs):
    full = mcs("mc-full").heartbeat(current=10, max_meetings=10)
    with pytest.raises(NoMcAvailable) as info:
        fake.join("meeting-1", "alice")
    assert info.value.tried == {}
    assert "none eligible" in str(info.value)
    roomy = mcs("mc-roomy").heartbeat(current=9, max_meetings=10)
    assert fake.join("meeting-1", "alice").mc_id == "mc-roomy"
    assert full.calls == []
    assert roomy.meetings() == ["meeting-1"]


def test_rejecting_and_unreachable_mcs_are_skipped_in_load_order(fake, mcs):
    rejecting = mcs("mc-a").heartbeat(current=0)
    rejecting.reject = gc_mc_pb2.REJECTION_REASON_AT_CAPACITY
    gone = mcs("mc-b").heartbeat(current=1)
    gone.stop()
    accepting = mcs("mc-c").heartbeat(current=2)
    join = fake.join("meeting-1", "alice")
    assert join.mc_id == "mc-c"
    assert rejecting.meetings() == ["meeting-1"]
    assert accepting.meetings() == ["meeting-1"]

    accepting.reject = gc_mc_pb2.REJECTION_REASON_DRAINING
    with pytest.raises(NoMcAvailable) as info:
        fake.join("meeting-2", "bob")
    assert info.value.tried == {"mc-a": "REJECTION_REASON_AT_CAPACITY",
                                "mc-b": "UNAVAILABLE", "mc-c": "REJECTION_REASON_DRAINING"}
    assert fake.placement("meeting-2") is None


def test_unregistered_or_never_heard_mcs_are_not_used(fake, mcs):
    mcs("mc-quiet")  # registered, no heartbeat yet: health unknown
    forgotten = mcs("mc-forgotten").heartbeat()
    fake.forget("mc-forgotten")
    with pytest.raises(NoMcAvailable):
        fake.join("meeting-1", "alice")
    assert forgotten.calls == []


def test_a_meeting_that_ended_is_placed_afresh(fake, mcs):
    first, second = mcs("mc-1").heartbeat(), mcs("mc-2").heartbeat(current=5)
    assert fake.join("meeting-1", "alice").mc_id == "mc-1"
    with grpc.insecure_channel(fake.target) as channel:
        gc_mc_legacy_pb2_grpc.GlobalControllerServiceStub(channel).NotifyMeetingEnded(
            gc_mc_pb2.NotifyMeetingEndedRequest(meeting_id="meeting-1", region="us-east-1"),
            timeout=5, metadata=BEARER)
    assert fake.placement("meeting-1") is None
    first.heartbeat(current=6)
    join = fake.join("meeting-1", "bob")
    assert (join.mc_id, join.assigned) == ("mc-2", True)
    assert first.meetings() == second.meetings() == ["meeting-1"]


def test_concurrent_joins_place_a_meeting_once(fake, mcs):
    first, second = mcs("mc-1").heartbeat(), mcs("mc-2").heartbeat()
    results = []
    threads = [threading.Thread(target=lambda n=n: results.append(fake.join("meeting-1", f"u{n}")))
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8
    assert len({r.mc_id for r in results}) == 1
    assert sum(r.assigned for r in results) == 1
    assert len(first.calls) + len(second.calls) == 1


def test_the_jwks_is_served_while_running_on_a_port_kept_across_restarts(fake):
    url = fake.jwks_url
    with urllib.request.urlopen(url, timeout=5) as response:
        assert json.load(response) == fake.issuer.jwks()
    fake.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
    fake.start()
    assert fake.jwks_url == url
    with urllib.request.urlopen(url, timeout=5) as response:
        assert [k["kid"] for k in json.load(response)["keys"]] == fake.issuer.kids()


def test_command_line_writes_the_jwks_file_and_prints_its_url(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN)
    jwks_file = tmp_path / "jwks.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mc.testing.fakegc", "--listen", "127.0.0.1:0",
         "--token-file", str(token_file), "--jwks-file", str(jwks_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert "listening on http://127.0.0.1:" in proc.stderr.readline()
        jwks_line = proc.stderr.readline()
        assert jwks_line.startswith("FakeGc JWKS at http://127.0.0.1:")
        with urllib.request.urlopen(jwks_line.split(" at ", 1)[1].strip(), timeout=5) as r:
            served = json.load(r)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    written = json.loads(jwks_file.read_text())
    assert written == served
    assert {k["alg"] for k in written["keys"]} == {"EdDSA", "ES256"}
    assert not any("d" in k for k in written["keys"])


def test_place_puts_a_meeting_on_the_mc_named_and_joins_reuse_it(fake, mcs):
    idle, busy = mcs("mc-idle").heartbeat(current=0), mcs("mc-busy").heartbeat(current=9)
    assert fake.place("meeting-1", "mc-busy") == ("mc-busy", "https://mc-busy.example:4433")
    join = fake.join("meeting-1", "alice")
    assert (join.mc_id, join.assigned) == ("mc-busy", False)
    assert busy.meetings() == ["meeting-1"] and idle.calls == []
    busy.reject = gc_mc_pb2.REJECTION_REASON_AT_CAPACITY
    with pytest.raises(NoMcAvailable):
        fake.place("meeting-2", "mc-busy")
    with pytest.raises(KeyError):
        fake.place("meeting-3", "mc-unknown")
