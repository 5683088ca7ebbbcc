"""``make demo``: the whole MC on this machine, end to end, in under a minute.

Starts a throwaway redis-server and a fake GC on loopback, runs ``twistd -n mc``
against them, has the GC assign meetings (one more than the MC can take),
shows what the GC saw and an excerpt of /metrics, then stops the MC with
SIGTERM and shows the clean shutdown. Leaves nothing running.
"""

import signal
import sys
import tempfile
import time

from google.protobuf import json_format

from mc.proto import gc_mc_pb2 as pb
from mc.testing.daemon import McProcess, wait_for
from mc.testing.fakegc import FakeGc, assign_meeting
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


def main():
    with tempfile.TemporaryDirectory(prefix="mc-demo-") as workdir:
        return run(workdir)


def run(workdir):
    redis = RedisProcess(dir=workdir)
    gc = FakeGc(SERVICE_TOKEN)
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
                            "MC_SHUTDOWN_GRACE_SECONDS": "2"}).start()
        say(f"  gRPC   {mc.grpc_target}   health http://127.0.0.1:{mc.http_port}")
        gc.wait_for(lambda: gc.registrations(), timeout=20)
        reg = gc.registrations()[0]
        say("  the GC got RegisterMC: " + json_format.MessageToJson(
            reg.request, indent=None, preserving_proto_field_name=True))
        auth = reg.metadata.get("authorization", "")
        say(f"  with metadata authorization: {auth[:7]}<{len(auth) - 7} bytes, not shown>")
        wait_for(mc.ready, 20, what="/readyz 200")
        say(f"  /readyz -> 200 {mc.http('/readyz')[1].strip()}")

        heading(f"the GC assigns {MAX_MEETINGS + 1} meetings to an MC that takes "
                f"{MAX_MEETINGS}")
        for i in range(1, MAX_MEETINGS + 2):
            meeting_id = f"meeting-{i}"
            r = assign_meeting(mc.grpc_target, meeting_id,
                               [("mh-a", "https://mh-a.example:4433", "MH_ROLE_PRIMARY"),
                                ("mh-b", "https://mh-b.example:4433", "MH_ROLE_BACKUP")],
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
                                "mc_gc_registered", "mc_redis_up", "mc_gc_heartbeats_total",
                                "mc_reactor_lag_seconds", "mc_assignment_duration_seconds_count")):
                say("  " + line)

        heading("SIGTERM: drain, one DRAINING heartbeat, wait for meetings (2 s), exit")
        seen = len(gc.heartbeats())
        mc.signal(signal.SIGTERM)
        started = time.monotonic()
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
        gc.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
