"""``make demo``: the whole MC on this machine, end to end, in about a minute.

Starts a throwaway redis-server, the Auth Controller double, a v1 fake GC
that checks every service token as the platform's GCs do, and two media
handler doubles, all on loopback; runs ``twistd -n mc`` with the platform's
own settings (AC_ENDPOINT, MC_CLIENT_ID, a client secret file, AC_JWKS_URL,
GC_GRPC_URL: no static token anywhere). It shows the MC's token coming from
the AC and its registration with the GC in v1; has the GC assign meetings
(one more than the MC can take); has two participants join a meeting over
WebTransport through the GC's join flow, the first carrying a browser's W3C
trace context: the meeting is registered with both MHs, carrying that trace
id, and the MC's log lines for the join carry it too; an MH reports a
participant's media connection (the gauge follows it through a leave);
shows what the GC saw and an excerpt of /metrics, then stops the MC with
SIGTERM: the participant left is redirected and the shutdown is clean.
Leaves nothing running.
"""

import signal
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import json_format

from mc.proto import gc_mc_pb2 as pb
from mc.testing.ac import AcDouble
from mc.testing.daemon import McProcess, wait_for
from mc.testing.fakegc import FakeGc, assign_meeting
from mc.testing.mh import FakeMh
from mc.testing.participant import LoopThread, SyncParticipant
from mc.testing.redisproc import RedisProcess

CLIENT_ID = "mc-demo-1"
CLIENT_SECRET = "demo-client-secret-7Q"
MAX_MEETINGS = 3
#: What a browser's tracer would send: a W3C traceparent of its own trace.
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
METRICS_SHOWN = ("mc_meetings_current", "mc_meeting_assignments_total", "mc_participants_current",
                 "mc_joins_total", "mc_gc_registered", "mc_redis_up", "mc_gc_heartbeats_total",
                 "mc_service_token", "mc_mh_registrations_total", "mc_mh_reports_total",
                 "mc_media_connections_current", "mc_assignment_duration_seconds_count")


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


def join(loop, gc, mhs, meeting_id, name, **trace):
    placed = gc.join(meeting_id, f"user-{name.lower()}",
                     mh_assignments=[mh.assignment() for mh in mhs])
    say(f"  {name}: the GC places {meeting_id} on {placed.mc_id} and gives a meeting token; "
        f"WebTransport to {placed.webtransport_endpoint}")
    if trace:
        say(f"  {name}'s JoinRequest carries trace_parent = {trace['trace_parent']}")
    p = SyncParticipant.join(loop, placed.webtransport_endpoint, meeting_id, placed.token, name,
                             **trace)
    for message in p.messages:
        show(name, message)
    return p


def show_registrations(mhs, meeting_id):
    for mh in mhs:
        mh.wait_for(lambda mh=mh: mh.registrations(meeting_id), timeout=15)
        record = mh.registrations(meeting_id)[0]
        body = json_format.MessageToJson(record.request, indent=None,
                                         preserving_proto_field_name=True)
        say(f"  {mh.mh_id} <- RegisterMeeting {body}")
        say(f"    traceparent {record.metadata.get('traceparent')}, authorization "
            f"Bearer <{len(record.metadata['authorization']) - 7} bytes, an AC token>")


def participants(loop, gc, mhs, mc, meeting_id):
    ann = join(loop, gc, mhs, meeting_id, "Ann", trace_parent=TRACEPARENT)
    say("  the first join registers the meeting with both media handlers (not waited for):")
    show_registrations(mhs, meeting_id)
    bob = join(loop, gc, mhs, meeting_id, "Bob")
    show("Ann", ann.expect("participant_joined"))
    say("  Bob mutes his microphone:")
    bob.mute(audio=True)
    show("Ann", ann.expect("participant_mute_update"))
    show("Bob", bob.expect("participant_mute_update"))
    gc.wait_for(lambda: any(h.request.capacity.current_participants == 2
                            for h in gc.heartbeats("fast")), timeout=10)
    say("  the GC's next heartbeats count them: current_participants = 2")

    heading("a media handler reports Bob's media connection")
    mh = mhs[0]
    ack = mh.notify_connected(mc.grpc_target, meeting_id, bob.participant_id)
    say(f"  {mh.mh_id} -> NotifyParticipantConnected (a media-handler token from the AC): "
        f"acknowledged={ack.acknowledged}")
    wait_for(lambda: mc.metric("mc_media_connections_current") == 1, 10, what="the gauge")
    say("  mc_media_connections_current 1.0")
    say("  Bob leaves (finishes his stream, closes the session):")
    bob.leave()
    show("Ann", ann.expect("participant_left"))
    wait_for(lambda: mc.metric("mc_media_connections_current") == 0, 10, what="the gauge")
    say("  mc_media_connections_current 0.0: his connections went with him")

    heading(f"the MC's log lines carrying Ann's trace id {TRACE_ID}")
    for line in mc.log().splitlines():
        if f"trace_id={TRACE_ID}" in line:
            say("    " + line[:220])
    return ann


def main():
    with tempfile.TemporaryDirectory(prefix="mc-demo-") as workdir:
        return run(workdir)


def run(workdir):
    redis = RedisProcess(dir=workdir)
    ac = AcDouble()
    ac.add_client(CLIENT_ID, CLIENT_SECRET)
    gc = FakeGc((), ac=ac, dialect="v1", issuer=ac.issuer)
    mhs = [FakeMh("mh-a", ac=ac), FakeMh("mh-b", ac=ac)]
    loop = LoopThread()
    mc = None
    try:
        heading("starting a throwaway redis-server, the AC, a v1 GC and two media handlers")
        redis.start()
        ac.serve()
        gc.set_intervals(2000, 6000)
        gc.start()
        for mh in mhs:
            mh.start()
        say(f"  redis  {redis.url}")
        say(f"  AC     {ac.url} (client credentials, JWKS at {ac.jwks_url})")
        say(f"  GC     {gc.url} (dark_tower.internal.v1 only; heartbeats every 2 s / 6 s)")
        for mh in mhs:
            say(f"  MH     {mh.mh_id}: gRPC {mh.grpc_url}, WebTransport {mh.webtransport_url}")

        heading("starting the MC: twistd -n mc, with AC_ENDPOINT and MC_CLIENT_ID")
        secret = Path(workdir) / "client-secret"
        secret.write_text(CLIENT_SECRET + "\n")
        mc = McProcess(workdir, gc.url, redis.url, None, None, mc_id=CLIENT_ID,
                       env={"AC_ENDPOINT": ac.url, "MC_CLIENT_ID": CLIENT_ID,
                            "MC_CLIENT_SECRET_FILE": str(secret),
                            "MC_MAX_MEETINGS": str(MAX_MEETINGS),
                            "MC_SHUTDOWN_GRACE_SECONDS": "2"},
                       jwks_url=ac.jwks_url).start()
        say(f"  gRPC   {mc.grpc_target}   health http://127.0.0.1:{mc.http_port}   "
            f"WebTransport {mc.wt_url} (UDP)")
        gc.wait_for(lambda: [r for r in gc.registrations() if r.status == "OK"], timeout=30)
        say(f"  the AC issued the MC's service token: {len(ac.issued())} client-credentials "
            f"grant for {ac.issued()[0][0]}")
        reg = [r for r in gc.registrations() if r.status == "OK"][0]
        say(f"  the GC got RegisterMC in {reg.dialect}: " + json_format.MessageToJson(
            reg.request, indent=None, preserving_proto_field_name=True))
        auth = reg.metadata.get("authorization", "")
        say(f"  with metadata authorization: {auth[:7]}<{len(auth) - 7} bytes, not shown>, "
            f"checked by the GC: {ac.check(auth, 'service.write.gc', 'meeting-controller')}")
        wait_for(mc.ready, 20, what="/readyz 200")
        say(f"  /readyz -> 200 {mc.http('/readyz')[1].strip()}")

        # The GC places meetings only on an MC whose last heartbeat said HEALTHY.
        gc.wait_for(lambda: any(h.request.health == pb.HEALTHY
                                for h in gc.heartbeats("fast")), timeout=20)

        heading("two participants join meeting-1 over WebTransport")
        ann = participants(loop, gc, mhs, mc, "meeting-1")

        heading(f"the GC assigns {MAX_MEETINGS} more meetings to an MC that takes "
                f"{MAX_MEETINGS} in all")
        for i in range(2, MAX_MEETINGS + 2):
            meeting_id = f"meeting-{i}"
            r = assign_meeting(mc.grpc_target, meeting_id, [mh.assignment() for mh in mhs],
                               ac.mint("global-controller"), dialect="v1")
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
        for record in gc.heartbeats()[-8:]:
            show_heartbeat(record)

        heading("an excerpt of /metrics")
        _, body = mc.http("/metrics")
        for line in body.splitlines():
            if "_created" not in line and line.startswith(METRICS_SHOWN):
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
        for mh in mhs:
            mh.stop()
        gc.stop()
        ac.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
