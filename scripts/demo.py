"""``make demo``: the whole MC on this machine, end to end, in under a minute.

Starts a throwaway redis-server and a fake GC on loopback, runs ``twistd -n mc``
against them, has the GC assign meetings (one more than the MC can take), has
two participants join a meeting over WebTransport through the GC's join flow
(the roster, a mute, a leave), shows what the GC saw and an excerpt of
/metrics, then stops the MC with SIGTERM: the participant left is redirected
and the shutdown is clean. Leaves nothing running.
"""

import signal
import sys
import tempfile
import time

from google.protobuf import json_format

from mc.proto import gc_mc_pb2 as pb
from mc.testing.daemon import McProcess, wait_for
from mc.testing.fakegc import FakeGc, assign_meeting
from mc.testing.participant import LoopThread, SyncParticipant
from mc.testing.redisproc import RedisProcess

SERVICE_TOKEN = "demo-service-token"
GC_TOKEN = "demo-gc-token"
MAX_MEETINGS = 3


def say(text=""):
    print(text, flush=True)


def heading(text):
    say()
    say(f"== {text}")


def show_heartbeat(record):
    req = record.request
    kind = "fast" if record.method.endswith("FastHeartbeat") else "comprehensive"
    cap = req.capacity
    extra = ""
    if kind == "comprehensive":
        extra = f" cpu={req.cpu_usage_percent:.1f}% mem={req.memory_usage_percent:.1f}%"
    say(f"  {kind:<13} health={pb.HealthStatus.Name(req.health):<9} meetings="
        f"{cap.current_meetings}/{cap.max_meetings} participants="
        f"{cap.current_participants}/{cap.max_participants}{extra}")


def show(who, message):
    kind = message.WhichOneof("message")
    body = json_format.MessageToJson(getattr(message, kind), indent=None,
                                     preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    say(f"  {who} <- {kind} {body}")


def join(loop, gc, meeting_id, name):
    placed = gc.join(meeting_id, f"user-{name.lower()}")
    say(f"  {name}: the GC places {meeting_id} on {placed.mc_id} and gives a meeting token; "
        f"WebTransport to {placed.webtransport_endpoint}")
    p = SyncParticipant.join(loop, placed.webtransport_endpoint, meeting_id, placed.token, name)
    for message in p.messages:
        show(name, message)
    return p


def participants(loop, gc, meeting_id):
    ann = join(loop, gc, meeting_id, "Ann")
    bob = join(loop, gc, meeting_id, "Bob")
    show("Ann", ann.expect("participant_joined"))
    say("  Bob mutes his microphone:")
    bob.mute(audio=True)
    show("Ann", ann.expect("participant_mute_update"))
    show("Bob", bob.expect("participant_mute_update"))
    gc.wait_for(lambda: any(h.request.capacity.current_participants == 2
                            for h in gc.heartbeats("fast")), timeout=10)
    say("  the GC's next heartbeats count them: current_participants = 2")
    say("  Bob leaves (finishes his stream, closes the session):")
    bob.leave()
    show("Ann", ann.expect("participant_left"))
    return ann


def main():
    with tempfile.TemporaryDirectory(prefix="mc-demo-") as workdir:
        return run(workdir)


def run(workdir):
    redis = RedisProcess(dir=workdir)
    gc = FakeGc(SERVICE_TOKEN, mc_token=GC_TOKEN)
    loop = LoopThread()
    mc = None
    try:
        heading("starting a throwaway redis-server and a fake GC")
        redis.start()
        gc.set_intervals(2000, 6000)
        gc.start()
        say(f"  redis  {redis.url}")
        say(f"  GC     {gc.url} (asks for heartbeats every 2 s / 6 s to keep the demo short)")

        heading("starting the MC: twistd -n mc")
        mc = McProcess(workdir, gc.url, redis.url, SERVICE_TOKEN, GC_TOKEN, mc_id="mc-demo-1",
                       env={"MC_MAX_MEETINGS": str(MAX_MEETINGS),
                            "MC_SHUTDOWN_GRACE_SECONDS": "2"}, jwks_url=gc.jwks_url).start()
        say(f"  gRPC   {mc.grpc_target}   health http://127.0.0.1:{mc.http_port}   "
            f"WebTransport {mc.wt_url} (UDP)")
        gc.wait_for(lambda: gc.registrations(), timeout=20)
        reg = gc.registrations()[0]
        say("  the GC got RegisterMC: " + json_format.MessageToJson(
            reg.request, indent=None, preserving_proto_field_name=True))
        auth = reg.metadata.get("authorization", "")
        say(f"  with metadata authorization: {auth[:7]}<{len(auth) - 7} bytes, not shown>")
        wait_for(mc.ready, 20, what="/readyz 200")
        say(f"  /readyz -> 200 {mc.http('/readyz')[1].strip()}")

        # The GC places meetings only on an MC whose last heartbeat said HEALTHY.
        gc.wait_for(lambda: any(h.request.health == pb.HEALTHY
                                for h in gc.heartbeats("fast")), timeout=20)

        heading("two participants join meeting-1 over WebTransport")
        ann = participants(loop, gc, "meeting-1")

        heading(f"the GC assigns {MAX_MEETINGS} more meetings to an MC that takes "
                f"{MAX_MEETINGS} in all")
        for i in range(2, MAX_MEETINGS + 2):
            meeting_id = f"meeting-{i}"
            r = assign_meeting(mc.grpc_target, meeting_id,
                               [("mh-a", "https://mh-a.example:4433", ""),
                                ("mh-b", "https://mh-b.example:4433", "")],
                               GC_TOKEN)
            verdict = ("accepted" if r.accepted else
                       "rejected: " + pb.RejectionReason.Name(r.rejection_reason))
            say(f"  AssignMeetingWithMh {meeting_id}: {verdict}")
            if r.accepted:
                say(f"    redis meeting:{meeting_id}:generation = "
                    f"{redis.command('GET', f'meeting:{meeting_id}:generation')}, "
                    f":mh = {redis.command('GET', f'meeting:{meeting_id}:mh')}")

        gc.wait_for(lambda: any(h.request.capacity.current_meetings == MAX_MEETINGS
                                for h in gc.heartbeats("fast")), timeout=10)
        gc.wait_for(lambda: gc.heartbeats("comprehensive"), timeout=15)
        heading("what the GC saw")
        for record in gc.heartbeats():
            show_heartbeat(record)

        heading("an excerpt of /metrics")
        _, body = mc.http("/metrics")
        for line in body.splitlines():
            if line.startswith(("mc_meetings_current", "mc_meeting_assignments_total",
                                "mc_participants_current", "mc_joins_total",
                                "mc_gc_registered", "mc_redis_up", "mc_gc_heartbeats_total",
                                "mc_reactor_lag_seconds", "mc_assignment_duration_seconds_count")):
                say("  " + line)

        heading("SIGTERM: drain, one DRAINING heartbeat, redirect the participants, exit")
        seen = len(gc.heartbeats())
        mc.signal(signal.SIGTERM)
        started = time.monotonic()
        show("Ann", ann.expect("redirect_to_mc", timeout=10))
        status = mc.wait(30)
        say(f"  exited with status {status} after {time.monotonic() - started:.1f}s")
        for record in gc.heartbeats()[seen:]:
            show_heartbeat(record)
        say("  the MC's log, last lines:")
        for line in mc.log().splitlines()[-6:]:
            say("    " + line)
        return 0 if status == 0 else 1
    except Exception as e:
        say(f"demo failed: {e}")
        if mc is not None:
            say(mc.output()[-4000:])
            say(mc.log()[-4000:])
        return 1
    finally:
        if mc is not None:
            mc.stop()
        loop.stop()
        gc.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
