"""Real processes on today's platform: ``twistd mc`` whose identity comes
from the AC double, against a v1 fake GC that checks every token as a v1 GC
does (and accepts no static one): registration, heartbeats, assignments on
both package paths and NotifyMeetingEnded in v1; the GC rolled back to the
legacy dialect and upgraded again on the same address while the MC runs; an
AC down at start; a token living 20 s renewed without a gap for over a
minute while the AC fails for 8 s."""

import json
import os
import signal
import time

import grpc
import pytest

from mc.proto import gc_mc_pb2 as pb
from mc.testing.ac import AcDouble
from mc.testing.daemon import McProcess, wait_for
from mc.testing.fakegc import FakeGc, assign_meeting

CLIENT_ID = "mc-platform-1"
CLIENT_SECRET = "client-secret-for-the-ac-R4"
MH = [("mh-1", "https://mh-1.example:4433", "http://mh-1.example:50060")]


@pytest.fixture
def ac():
    double = AcDouble(lifetime=300).serve()
    double.add_client(CLIENT_ID, CLIENT_SECRET)
    yield double
    double.stop()


@pytest.fixture
def v1_gc(ac):
    gc = FakeGc((), ac=ac, dialect="v1", issuer=ac.issuer, placeable=(pb.HEALTHY, pb.DEGRADED))
    gc.set_intervals(1000, 3000)
    gc.start()
    yield gc
    gc.stop()


@pytest.fixture
def platform_mc(tmp_path, redis, ac, v1_gc):
    """``platform_mc(env=...)``: a started MC with the platform's own settings
    (AC_ENDPOINT, MC_CLIENT_ID, a client secret file, AC_JWKS_URL,
    GC_GRPC_URL) and neither a static service token nor static GC tokens."""
    started = []

    def start(env=None):
        workdir = tmp_path / f"mc-{len(started)}"
        workdir.mkdir()
        secret = workdir / "client-secret"
        secret.write_text(CLIENT_SECRET + "\n")
        env = {"AC_ENDPOINT": ac.url, "MC_CLIENT_ID": CLIENT_ID,
               "MC_CLIENT_SECRET_FILE": str(secret), "MC_SHUTDOWN_GRACE_SECONDS": "1",
               "MC_GC_API": "auto", **(env or {})}
        mc = McProcess(workdir, v1_gc.url, redis.url, None, None, mc_id=CLIENT_ID, env=env,
                       jwks_url=ac.jwks_url)
        started.append(mc.start())
        return mc

    yield start
    for mc in started:
        mc.stop()


def readyz(mc):
    status, body = mc.http("/readyz")
    return status, json.loads(body) if status is not None else None


def metric_line(mc, prefix):
    status, body = mc.http("/metrics")
    return [line for line in body.splitlines() if line.startswith(prefix)] if status else []


def assign(mc, meeting_id, token, dialect):
    return assign_meeting(mc.grpc_url, meeting_id, MH, token, dialect=dialect, timeout=10)


def test_the_v1_flow_with_an_ac_token(platform_mc, ac, v1_gc):
    mc = platform_mc(env={"MC_MEETING_IDLE_SECONDS": "1"})
    wait_for(mc.ready, 30, what="registered in v1")
    v1_gc.wait_for(lambda: len(v1_gc.heartbeats("fast")) >= 2, timeout=10)
    ok = [r for r in v1_gc.requests() if r.status == "OK"]
    assert ok and {r.dialect for r in v1_gc.requests()} == {"v1"}
    assert v1_gc.requests()[0].method == "RegisterMC" and v1_gc.requests()[0].status == "OK"
    assert [client for client, _ in ac.issued()] == [CLIENT_ID]

    # The incoming-token table on both package paths, from the outside.
    gc_token = ac.mint("global-controller")
    assert assign(mc, "meeting-v1", gc_token, "v1").accepted
    assert assign(mc, "meeting-legacy", gc_token, "legacy").accepted
    for token, code in ((ac.mint("media-handler"), grpc.StatusCode.PERMISSION_DENIED),
                        (ac.mint("global-controller", scope="service.write.gc"),
                         grpc.StatusCode.PERMISSION_DENIED),
                        (ac.mint("global-controller", exp=1, iat=0),
                         grpc.StatusCode.UNAUTHENTICATED),
                        ("static-token", grpc.StatusCode.UNAUTHENTICATED)):
        with pytest.raises(grpc.RpcError) as info:
            assign(mc, "meeting-refused", token, "v1")
        assert info.value.code() == code

    # Both meetings go idle, end, and the GC hears of it in v1.
    v1_gc.wait_for(lambda: len(v1_gc.meeting_ends()) >= 2, timeout=20)
    ends = v1_gc.meeting_ends()
    assert {r.request.meeting_id for r in ends} == {"meeting-v1", "meeting-legacy"}
    assert {(r.dialect, r.status) for r in ends} == {("v1", "OK")}

    (expiry,) = metric_line(mc, "mc_service_token_expiry_seconds ")
    assert 250 < float(expiry.split()[1]) <= 300
    assert metric_line(mc, 'mc_service_token_refresh_total{outcome="ok"} 1.0')
    assert metric_line(mc, 'mc_service_token_checks_total{outcome="permission_denied",'
                           'service="MeetingControllerService"} 2.0')
    log = mc.log()
    assert gc_token not in log and CLIENT_SECRET not in log
    assert v1_gc.requests()[0].metadata["authorization"][7:] not in log


def ok_fast(gc):
    return [r for r in gc.heartbeats("fast") if r.status == "OK"]


def test_a_gc_rolled_back_and_upgraded_under_the_running_mc(platform_mc, v1_gc):
    mc = platform_mc()
    wait_for(mc.ready, 30, what="registered")
    # Rolled back: the GC restarts on the same address speaking legacy, and
    # has forgotten every MC.
    v1_gc.stop()
    v1_gc.set_dialect("legacy")
    v1_gc.forget_all()
    v1_gc.clear()
    v1_gc.start()
    v1_gc.wait_for(lambda: len(ok_fast(v1_gc)) >= 3, timeout=20)
    assert [r.dialect for r in v1_gc.registrations() if r.status == "OK"] == ["legacy"]
    assert {r.dialect for r in v1_gc.requests()} == {"legacy"}
    assert v1_gc.unserved("v1") >= 1
    # Upgraded again, while running: the calls already on their way find out
    # (a fast and a comprehensive heartbeat may be), the later ones follow.
    v1_gc.set_dialect("v1")
    v1_gc.clear()
    v1_gc.wait_for(lambda: len(ok_fast(v1_gc)) >= 3, timeout=15)
    assert {(r.dialect, r.status) for r in v1_gc.requests()} == {("v1", "OK")}
    assert 1 <= v1_gc.unserved("legacy") <= 2
    assert metric_line(mc, 'mc_gc_heartbeats_total{dialect="legacy",kind="fast",outcome="ok"}')
    assert readyz(mc)[1]["gc"] == "registered"


def test_an_ac_down_at_start_does_not_stop_the_mc(platform_mc, ac, v1_gc):
    ac.fail("500")
    mc = platform_mc()
    wait_for(lambda: mc.http("/readyz")[0] == 503, 30, what="/readyz answering")
    time.sleep(1.5)
    status, body = readyz(mc)
    assert (status, body["reason"], body["gc"]) == (503, "no service token", "unregistered")
    assert mc.alive() and v1_gc.requests() == []
    assert "registration with the GC waits for a service token" in mc.log()
    ac.recover()
    wait_for(mc.ready, 40, what="registered once a token came")
    assert metric_line(mc, 'mc_service_token_refresh_total{outcome="error"}')


def test_a_20s_token_is_renewed_without_a_gap_while_the_ac_fails_for_8s(
        platform_mc, ac, v1_gc):
    ac.lifetime = 20
    mc = platform_mc()
    wait_for(mc.ready, 30, what="registered")
    started = time.monotonic()
    issued = len(ac.issued())
    wait_for(lambda: len(ac.issued()) > issued, 15, what="a renewal")
    time.sleep(3)  # the next renewal, 10 s after this one, falls inside the failure
    ac.fail("500")
    time.sleep(8)
    ac.recover()
    wait_for(lambda: time.monotonic() - started > 62, 70, interval=1, what="a minute")
    fast = [r for r in v1_gc.heartbeats("fast") if r.monotonic >= started]
    assert {r.status for r in v1_gc.requests() if r.monotonic >= started} == {"OK"}
    gaps = [b.monotonic - a.monotonic for a, b in zip(fast, fast[1:], strict=False)]
    assert max(gaps) < 3.0, gaps  # 1 s heartbeats, none refused, none held back
    assert len(ac.issued()) >= 5
    assert metric_line(mc, 'mc_service_token_refresh_total{outcome="error"}')
    assert mc.alive()


@pytest.mark.parametrize("told_by", ["SIGHUP", "the file watcher"])
def test_a_client_secret_rotated_in_its_file_is_used_at_once(platform_mc, ac, told_by):
    ac.lifetime = 6
    mc = platform_mc(env={"MC_FILE_WATCH": "off" if told_by == "SIGHUP" else "poll"})
    wait_for(mc.ready, 30, what="registered")
    ac.set_secret(CLIENT_ID, "rotated-at-the-ac")
    wait_for(lambda: metric_line(mc, 'mc_service_token_refresh_total{outcome="rejected"}'), 15,
             what="the old secret refused")
    issued = len(ac.issued())
    with open(os.path.join(mc.workdir, "client-secret"), "w") as f:
        f.write("rotated-at-the-ac\n")
    if told_by == "SIGHUP":
        mc.signal(signal.SIGHUP)
    wait_for(lambda: len(ac.issued()) > issued, 10, what="a token for the new secret")
    assert mc.alive() and readyz(mc)[0] == 200
    assert "rotated-at-the-ac" not in mc.log()
