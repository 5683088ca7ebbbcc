"""The whole daemon as operators run it: ``twistd --pidfile ... mc`` as a real
subprocess against a real redis-server and the fake GC."""

import json
import os
import signal

from mc.proto import gc_mc_pb2 as pb
from mc.testing.daemon import wait_for
from mc.testing.fakegc import assign_meeting
from mc.testing.participant import LoopThread, SyncParticipant
from tests.conftest import E2E_GC_TOKEN, E2E_SERVICE_TOKEN
from tests.test_participants import assignable

MH = [("mh-1", "https://mh-1.example:4433", "")]


def readyz(mc):
    status, body = mc.http("/readyz")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def fast_heartbeats(fake_gc, since=0):
    return [r.request for r in fake_gc.heartbeats("fast")[since:]]


def test_registers_heartbeats_assigns_drains_and_stops_cleanly(mc_procs, fake_gc, redis):
    fake_gc.set_unavailable(True)
    mc = mc_procs()
    # The GC down: ready all the same (this MC can serve what is routed to
    # it), the detail says it is not registered.
    wait_for(lambda: readyz(mc) == (200, {"ready": True, "gc": "unregistered"}), 20,
             what="/readyz 200, unregistered")
    assert mc.metric("mc_gc_registered") == 0.0
    assert mc.http("/healthz")[0] == 200
    assert os.path.exists(mc.pidfile)

    fake_gc.set_unavailable(False)
    fake_gc.wait_for(lambda: [r for r in fake_gc.registrations() if r.status == "OK"], timeout=20)
    reg = [r for r in fake_gc.registrations() if r.status == "OK"][0]
    assert reg.metadata["authorization"] == "Bearer " + E2E_SERVICE_TOKEN
    assert reg.request.id == mc.mc_id
    assert reg.request.grpc_endpoint == f"http://127.0.0.1:{mc.grpc_port}"
    fake_gc.wait_for(lambda: fast_heartbeats(fake_gc), timeout=10)
    # DEGRADED when the machine running the suite is busy (host CPU >= 90 %).
    assert fast_heartbeats(fake_gc)[0].health in (pb.HEALTHY, pb.DEGRADED)
    wait_for(mc.ready, 10, what="/readyz 200")

    r = assign_meeting(mc.grpc_target, "e2e-meeting-1", MH, E2E_GC_TOKEN)
    assert r.accepted
    generation = redis.command("GET", "meeting:e2e-meeting-1:generation")
    assert generation.isdigit()
    fake_gc.wait_for(
        lambda: any(h.capacity.current_meetings == 1 for h in fast_heartbeats(fake_gc)), 5)
    assert mc.metric("mc_meetings_current") == 1.0
    _, metrics = mc.http("/metrics")
    assert 'mc_meeting_assignments_total{rejection_reason="",status="accepted"} 1.0' in metrics
    assert "e2e-meeting-1" not in metrics

    seen = len(fake_gc.heartbeats("fast"))
    mc.signal(signal.SIGUSR2)
    wait_for(lambda: mc.http("/readyz")[0] == 503, 5, what="drain")
    assert json.loads(mc.http("/readyz")[1])["reason"] == "draining"
    fake_gc.wait_for(
        lambda: any(h.health == pb.DRAINING for h in fast_heartbeats(fake_gc, seen)), 5)
    r = assign_meeting(mc.grpc_target, "e2e-meeting-2", MH, E2E_GC_TOKEN)
    assert not r.accepted and r.rejection_reason == pb.REJECTION_REASON_DRAINING

    seen = len(fake_gc.heartbeats("fast"))
    mc.signal(signal.SIGUSR2)
    wait_for(mc.ready, 5, what="undrain")
    fake_gc.wait_for(lambda: any(h.health in (pb.HEALTHY, pb.DEGRADED)
                                 for h in fast_heartbeats(fake_gc, seen)), 5)

    seen = len(fake_gc.heartbeats("fast"))
    mc.signal(signal.SIGTERM)
    assert mc.wait(20) == 0
    assert not os.path.exists(mc.pidfile)
    assert fast_heartbeats(fake_gc, seen)[0].health == pb.DRAINING
    log = mc.log()
    assert "still hosted" in log and "e2e-meeting-1" in log
    assert redis.command("GET", "meeting:e2e-meeting-1:generation") == generation
    for secret in (E2E_SERVICE_TOKEN, E2E_GC_TOKEN):
        assert secret not in log and secret not in mc.output()


def test_daemonized_with_pidfile_and_json_logs(mc_procs, fake_gc):
    mc = mc_procs(daemonize=True, env={"MC_LOG_FORMAT": "json"})
    wait_for(lambda: os.path.exists(mc.pidfile), 20, what="pidfile")
    wait_for(mc.ready, 20, what="/readyz 200")
    mc.signal(signal.SIGTERM)
    mc.wait(20)
    assert not mc.alive()
    lines = [json.loads(line) for line in mc.log().splitlines()]
    assert any(e.get("mc_id") == mc.mc_id and "registered" in e["message"] for e in lines)
    assert all({"time", "level", "namespace", "message"} <= e.keys() for e in lines)
    assert E2E_SERVICE_TOKEN not in mc.log() and E2E_GC_TOKEN not in mc.log()


def test_second_sigterm_cuts_the_wait_short(mc_procs, fake_gc):
    """The wait is for participants to have their redirects: one whose
    network is gone holds it (up to 2 s, see webtransport.LINGER_MAX)."""
    mc = mc_procs(env={"MC_SHUTDOWN_GRACE_SECONDS": "600"})
    wait_for(mc.ready, 20, what="/readyz 200")
    assignable(fake_gc, mc)
    loop = LoopThread()
    try:
        placed = fake_gc.join("e2e-meeting-9", "user-1")
        p = SyncParticipant.join(loop, placed.webtransport_endpoint, "e2e-meeting-9",
                                 placed.token, "Ann")
        p.vanish()
        mc.signal(signal.SIGTERM)
        wait_for(lambda: "waiting up to 600s" in mc.log(), 10, what="graceful wait")
        mc.signal(signal.SIGTERM)
        assert mc.wait(20) == 0
        assert "second stop signal" in mc.log()
        assert not os.path.exists(mc.pidfile)
    finally:
        loop.stop()


def test_configuration_error_names_the_variable_and_hides_secrets(mc_procs):
    mc = mc_procs(env={"MC_MAX_PARTICIPANTS": "-5"})
    assert mc.wait(10) != 0
    out = mc.output()
    assert "MC_MAX_PARTICIPANTS: -5 is out of range" in out
    assert E2E_SERVICE_TOKEN not in out and E2E_GC_TOKEN not in out
