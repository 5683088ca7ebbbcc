"""Real processes with the media handlers: ``twistd mc`` whose identity comes
from the AC double, a v1 fake GC and two MH doubles checking the MC's token.
RegisterMeeting at a meeting's first join only, with retries, carrying the
trace id a browser-like client sent; a re-registration after a client
reports an MH FAILED; MH reports followed by the gauge through a leave;
MediaCoordination calls with bad ids, for unknown meetings, from a GC's
token; an MH refusing or never answering holds no join up; a drain moves a
meeting to a second MC, which registers it with the MHs."""

import signal

import grpc
import pytest

from mc.proto import signaling_pb2 as spb
from mc.testing.daemon import wait_for
from mc.testing.fakegc import assign_meeting
from mc.testing.mh import FakeMh
from mc.testing.participant import SyncParticipant
from tests.test_platform_v1 import CLIENT_ID, ac, platform_mc, v1_gc  # noqa: F401 - fixtures

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
OTHER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
LEGACY_MH = [("mh-1", "https://mh-1.example:4433", "")]


@pytest.fixture
def mhs(ac):  # noqa: F811 - the fixture imported above
    doubles = [FakeMh("mh-a", ac=ac).start(), FakeMh("mh-b", ac=ac).start()]
    yield doubles
    for mh in doubles:
        mh.stop()


def placeable(mc, gc, mc_id=CLIENT_ID):
    """``mc`` registered, and its last heartbeat says it may host (the GC's
    join flow places meetings only there; a fresh MC is UNHEALTHY until
    Redis confirmed its lease)."""
    wait_for(mc.ready, 30, what=f"{mc_id} registered")

    def may_host():
        mine = [h for h in gc.heartbeats("fast")
                if h.request.controller_id == mc_id and h.status == "OK"]
        return mine and mine[-1].request.health in gc.placeable

    gc.wait_for(may_host, timeout=20)


def join(loop, gc, mhs, meeting_id, name, **kw):
    placed = gc.join(meeting_id, f"user-{name.lower()}",
                     mh_assignments=[mh.assignment() for mh in mhs])
    p = SyncParticipant.join(loop, placed.webtransport_endpoint, meeting_id, placed.token, name,
                             **kw)
    assert p.joined, p.messages
    return p, placed


def trace_id_of(record):
    return record.metadata["traceparent"].split("-")[1]


def metric(mc, line):
    status, body = mc.http("/metrics")
    return status == 200 and any(row.startswith(line) for row in body.splitlines())


def test_media_handlers_told_and_heard(platform_mc, ac, v1_gc, mhs, loop):  # noqa: F811
    mc = platform_mc()
    placeable(mc, v1_gc)
    mh_a, mh_b = mhs
    mh_a.fail(2)  # answered on the third attempt
    ann, _ = join(loop, v1_gc, mhs, "meeting-mh", "Ann", trace_parent=TRACEPARENT,
                  trace_state="vendor=browser")

    mh_b.wait_for(lambda: mh_b.registrations("meeting-mh"), timeout=10)
    mh_a.wait_for(lambda: len(mh_a.registrations("meeting-mh")) == 3, timeout=15)
    for record in mh_a.registrations() + mh_b.registrations():
        r = record.request
        assert (r.meeting_id, r.mc_id, r.mc_grpc_endpoint) == ("meeting-mh", CLIENT_ID,
                                                             mc.grpc_url)
        assert ac.check(record.metadata["authorization"], "service.write.mh",
                        "meeting-controller") == "ok"
        assert trace_id_of(record) == TRACE_ID
        assert record.metadata["traceparent"].split("-")[2] != "b7ad6b7169203331"
    assert [r.status for r in mh_a.registrations()] == ["UNAVAILABLE", "UNAVAILABLE", "OK"]
    gaps = [b.monotonic - a.monotonic for a, b in zip(mh_a.registrations(),
                                                      mh_a.registrations()[1:], strict=False)]
    assert 0.9 <= gaps[0] < 2.0 and 1.9 <= gaps[1] < 3.5, gaps
    assert f"[trace_id={TRACE_ID}]" in mc.log()

    bob, _ = join(loop, v1_gc, mhs, "meeting-mh", "Bob")
    wait_for(lambda: metric(mc, 'mc_mh_registrations_total{outcome="accepted",'
                                'trigger="first_join"} 2.0'), 10, what="both counted")
    assert len(mh_a.registrations()) == 3 and len(mh_b.registrations()) == 1

    # Ann's browser says mh-a failed: the meeting is registered with it again.
    ann.send(spb.ClientMessage(media_connection_update=spb.MediaConnectionUpdate(statuses=[
        spb.MhConnectionStatus(mh_url=mh_a.webtransport_url,
                               state=spb.CONNECTION_STATE_FAILED,
                               failure_reason="\u00e9" * 5000)]),
        trace_parent=f"00-{OTHER_TRACE_ID}-00f067aa0ba902b7-01"))
    mh_a.wait_for(lambda: len(mh_a.registrations()) == 4, timeout=10)
    assert trace_id_of(mh_a.registrations()[-1]) == OTHER_TRACE_ID
    assert len(mh_b.registrations()) == 1
    assert metric(mc, 'mc_client_media_statuses_total{state="failed"} 1.0')

    # The MHs report the participants' media connections; the gauge follows.
    for mh in mhs:
        assert mh.notify_connected(mc.grpc_target, "meeting-mh", ann.participant_id).acknowledged
    assert mh_a.notify_connected(mc.grpc_target, "meeting-mh", bob.participant_id).acknowledged
    assert mh_a.notify_connected(mc.grpc_target, "meeting-mh", bob.participant_id).acknowledged
    wait_for(lambda: mc.metric("mc_media_connections_current") == 3, 10, what="3 connections")
    assert mh_a.notify_disconnected(mc.grpc_target, "meeting-mh",
                                    bob.participant_id).acknowledged
    wait_for(lambda: mc.metric("mc_media_connections_current") == 2, 10, what="2 connections")
    ann.leave()
    wait_for(lambda: mc.metric("mc_media_connections_current") == 0, 10, what="Ann's gone")

    # Reports about anything else are acknowledged and kept nowhere.
    for meeting_id, participant_id in (("no-such-meeting", "p-1"), ("meeting-mh", "p-nobody"),
                                       ("meeting-mh", ann.participant_id)):
        assert mh_a.notify_connected(mc.grpc_target, meeting_id, participant_id).acknowledged
    assert metric(mc, 'mc_mh_reports_total{kind="connected",outcome="unknown_meeting"} 1.0')
    assert metric(mc, 'mc_mh_reports_total{kind="connected",outcome="unknown_participant"} 2.0')
    assert mc.metric("mc_media_connections_current") == 0

    # Bad ids, and callers that are no MH.
    for ids in (("", "p", "h"), ("m", "", "h"), ("m", "p", ""), ("m" * 257, "p", "h"),
                ("m", "\u00e9" * 129, "h")):
        with pytest.raises(grpc.RpcError) as e:
            mh_a.notify_connected(mc.grpc_target, ids[0], ids[1], handler_id=ids[2])
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                      "Invalid request")
    for token, code in ((ac.mint("global-controller"), grpc.StatusCode.PERMISSION_DENIED),
                        (ac.mint("meeting-controller"), grpc.StatusCode.PERMISSION_DENIED),
                        ("not-a-jwt", grpc.StatusCode.UNAUTHENTICATED)):
        with pytest.raises(grpc.RpcError) as e:
            mh_a.notify_disconnected(mc.grpc_target, "meeting-mh", bob.participant_id,
                                     token=token)
        assert e.value.code() == code
    assert mc.metric("mc_media_connections_current") == 0
    assert bob.joined and mc.ready()
    assert mh_a.registrations()[0].metadata["authorization"][7:] not in mc.log()


def test_an_mh_refusing_or_never_answering_holds_no_join_up(platform_mc, v1_gc, mhs, loop):  # noqa: F811
    mc = platform_mc()
    placeable(mc, v1_gc)
    mh_a, mh_b = mhs
    mh_a.refuse()
    mh_b.hang(60, n=3)
    ann, _ = join(loop, v1_gc, mhs, "meeting-slow-mh", "Ann")
    wait_for(lambda: metric(mc, 'mc_mh_registrations_total{outcome="refused",'
                                'trigger="first_join"} 1.0'), 10, what="the refusal counted")
    assert len(mh_a.registrations()) == 1, "a refusal is final"
    wait_for(lambda: metric(mc, 'mc_mh_register_attempts_total{result="deadline_exceeded"}'),
             20, what="the silent MH's first attempt given up after 10 s")
    assert "refused meeting meeting-slow-mh" in mc.log()
    bob, _ = join(loop, v1_gc, mhs, "meeting-slow-mh", "Bob")
    assert ann.expect("participant_joined").participant_joined.participant.name == "Bob"


def test_a_drained_meeting_is_registered_by_the_mc_it_moves_to(platform_mc, v1_gc, mhs, loop):  # noqa: F811
    mcs = {mc_id: platform_mc(env={"MC_ID": mc_id}) for mc_id in ("mc-first", "mc-second")}
    for mc_id, mc in mcs.items():
        placeable(mc, v1_gc, mc_id)
    ann, placed = join(loop, v1_gc, mhs, "meeting-moving", "Ann")
    old = mcs[placed.mc_id]
    new_id, new = next((i, mc) for i, mc in mcs.items() if mc is not old)
    for mh in mhs:
        mh.wait_for(lambda mh=mh: mh.registrations("meeting-moving"), timeout=10)
        assert mh.registrations()[0].request.mc_id == placed.mc_id

    old.signal(signal.SIGUSR2)  # drain: its people are sent back to the GC
    ann.expect("redirect_to_mc", timeout=15)
    wait_for(lambda: _rejoined(loop, v1_gc, mhs, new_id), 20, interval=0.5,
             what="the meeting placed on the other MC")
    for mh in mhs:
        mh.wait_for(lambda mh=mh: len(mh.registrations("meeting-moving")) == 2, timeout=10)
        r = mh.registrations()[-1].request
        assert (r.mc_id, r.mc_grpc_endpoint) == (new_id, new.grpc_url)


def _rejoined(loop, gc, mhs, new_id):
    """Ann joins again through the GC; True once it placed her on ``new_id``."""
    try:
        p, placed = join(loop, gc, mhs, "meeting-moving", "Ann")
    except Exception:  # a redirect, no MC yet, a refusal: try again
        return False
    if placed.mc_id != new_id:
        p.leave()
        return False
    return True


def test_an_assignments_traceparent_reaches_its_log_lines_and_the_heartbeat_it_nudges(
        platform_mc, ac, v1_gc):  # noqa: F811
    v1_gc.set_intervals(10000, 30000)  # the nudge, not the loop, sends the next heartbeat
    mc = platform_mc(env={"MC_MAX_MEETINGS": "1", "MC_LOG_LEVEL": "debug"})
    placeable(mc, v1_gc)
    token = ac.mint("global-controller")
    for bad in ("garbage", f"00-{TRACE_ID}-0000000000000000-01", "00-" + "z" * 52):
        with pytest.raises(grpc.RpcError) as e:  # refused as usual, the header ignored
            assign_meeting(mc.grpc_target, "meeting-bad!", LEGACY_MH, token, dialect="v1",
                           metadata=(("traceparent", bad),))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    seen = len(v1_gc.heartbeats("fast"))
    response = assign_meeting(mc.grpc_target, "meeting-traced", LEGACY_MH, token, dialect="v1",
                              metadata=(("traceparent", TRACEPARENT),
                                        ("tracestate", "gc=1")))
    assert response.accepted
    nudged = v1_gc.wait_for(lambda: [h for h in v1_gc.heartbeats("fast")[seen:]
                                     if "traceparent" in h.metadata], timeout=10)
    assert nudged[0].request.capacity.current_meetings == 1
    assert trace_id_of(nudged[0]) == TRACE_ID
    assert nudged[0].metadata["traceparent"].split("-")[2] != "b7ad6b7169203331"
    wait_for(lambda: "meeting-traced" in mc.log(), 10, what="the assignment logged")
    traced = [line for line in mc.log().splitlines() if "meeting-traced" in line]
    assert traced and all(f"[trace_id={TRACE_ID}]" in line for line in traced), traced
