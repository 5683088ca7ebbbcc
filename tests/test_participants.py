"""Participants in a real ``twistd mc``: placed by the fake GC's join flow,
joining over real QUIC on 127.0.0.1 with tokens from a real issuer, seeing
each other, muting, leaving, being refused, and counted in heartbeats."""

import base64
import struct

import pytest

from mc.proto import signaling_pb2 as pb
from mc.testing.daemon import wait_for
from mc.testing.issuer import SigningKey
from mc.testing.participant import LoopThread, SyncParticipant
from mc.testing.wtclient import connect

UNAUTHORIZED = ("UNAUTHORIZED", "invalid or expired token")


@pytest.fixture
def loop():
    thread = LoopThread()
    yield thread
    thread.stop()


def assignable(fake_gc, mc):
    """Wait until the fake GC would place meetings on ``mc``."""
    fake_gc.wait_for(lambda: any(h.request.controller_id == mc.mc_id
                                 and h.request.health in fake_gc.placeable
                                 for h in fake_gc.heartbeats("fast")), timeout=20)


def participants_heartbeat(fake_gc, n):
    fake_gc.wait_for(lambda: any(h.request.capacity.current_participants == n
                                 for h in fake_gc.heartbeats("fast")[-3:]), timeout=10)


def join(loop, fake_gc, meeting_id, name, sub=None, **claims):
    placed = fake_gc.join(meeting_id, sub or f"user-{name}", **claims)
    return SyncParticipant.join(loop, placed.webtransport_endpoint, meeting_id, placed.token,
                                name)


def error_of(p):
    [m] = [m for m in p.messages if m.HasField("error")]
    return pb.ErrorCode.Name(m.error.code), m.error.message


def test_join_roster_mute_leave_and_counts(mc_procs, fake_gc, loop, redis):
    mc = mc_procs(env={"MC_MEETING_IDLE_SECONDS": "3"})
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "e2e-m1", "Ann")
    r = ann.joined
    assert r is not None, ann.kinds()
    assert r.participant_id and r.user_id == 1 and list(r.existing_participants) == []
    assert [s.media_handler_url for s in r.media_servers] == ["https://mh-1.example:4433"]
    assert redis.command("HGET", "meeting:e2e-m1:state", "mc_id") == mc.mc_id
    ann.mute(audio=True)
    assert ann.expect("participant_mute_update").participant_mute_update.audio_self_muted

    bob = join(loop, fake_gc, "e2e-m1", "Bob")
    assert fake_gc.placement("e2e-m1") == mc.mc_id
    rb = bob.joined
    assert rb.user_id == 2 and rb.participant_id != r.participant_id
    [other] = rb.existing_participants
    assert (other.participant_id, other.name) == (r.participant_id, "Ann") and other.joined_at
    update = bob.expect("participant_mute_update").participant_mute_update
    assert (update.participant_id, update.audio_self_muted) == (r.participant_id, True)
    joined = ann.expect("participant_joined").participant_joined.participant
    assert (joined.participant_id, joined.name) == (rb.participant_id, "Bob")
    participants_heartbeat(fake_gc, 2)
    assert mc.metric("mc_participants_current") == 2.0
    assert mc.metric('mc_joins_total{outcome="accepted"}') == 2.0
    assert mc.metric("mc_webtransport_sessions_current") == 2.0

    bob.mute(audio=False, video=True)
    for p in (ann, bob):
        u = p.expect("participant_mute_update").participant_mute_update
        assert (u.participant_id, u.video_self_muted) == (rb.participant_id, True)

    bob.leave()
    left = ann.expect("participant_left").participant_left
    assert (left.participant_id, left.reason) == (rb.participant_id, pb.VOLUNTARY)
    participants_heartbeat(fake_gc, 1)
    ann.leave()
    participants_heartbeat(fake_gc, 0)
    # Idle from the last leave, not from the assignment (already > 3 s ago).
    assert redis.command("EXISTS", "meeting:e2e-m1:state") == 1
    fake_gc.wait_for(lambda: [r for r in fake_gc.meeting_ends()
                              if r.request.meeting_id == "e2e-m1"], timeout=10)
    assert "Ann" not in mc.http("/metrics")[1]


def test_meeting_not_hosted_here_is_not_found(mc_procs, fake_gc, loop):
    mc = mc_procs()
    assignable(fake_gc, mc)
    token = fake_gc.issuer.mint("e2e-elsewhere", "user-1")
    url = mc.wt_url
    p = SyncParticipant.join(loop, url, "e2e-elsewhere", token, "Ann")
    assert p.joined is None and error_of(p)[0] == "NOT_FOUND"
    p.wait_closed()
    assert mc.metric('mc_joins_total{outcome="not_found"}') == 1.0


def _bad_tokens(issuer, meeting_id):
    public = issuer.current.public_pem()
    return {
        "expired": issuer.mint(meeting_id, "u", exp=1_000_000, iat=999_000),
        "iat in the future": issuer.mint(meeting_id, "u", iat=4_000_000_000,
                                         exp=4_000_000_300),
        "wrong meeting": issuer.mint("e2e-other", "u"),
        "wrong token_type": issuer.mint(meeting_id, "u", token_type="session"),
        "alg none": issuer.mint(meeting_id, "u", header={"alg": "none"}),
        "HS256 with the public key": issuer.mint(meeting_id, "u", key=public,
                                                 header={"alg": "HS256"}),
        "unknown kid": issuer.mint(meeting_id, "u", key=SigningKey()),
        "tampered signature": _tamper(issuer.mint(meeting_id, "u")),
        "oversized": issuer.mint(meeting_id, "u", pad="x" * 9000),
        "missing claim": issuer.mint(meeting_id, "u", drop=("jti",)),
    }


def _tamper(token):
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 1
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def test_every_bad_token_is_refused_and_nobody_counted(mc_procs, fake_gc, loop):
    mc = mc_procs()
    assignable(fake_gc, mc)
    placed = fake_gc.join("e2e-m2", "user-1")
    bad = _bad_tokens(fake_gc.issuer, "e2e-m2")
    for why, token in bad.items():
        p = SyncParticipant.join(loop, placed.webtransport_endpoint, "e2e-m2", token, "Eve")
        assert p.joined is None and error_of(p) == UNAUTHORIZED, why
        p.wait_closed()
    assert mc.metric('mc_joins_total{outcome="unauthorized"}') == len(bad)
    assert mc.metric("mc_participants_current") == 0.0
    log = mc.log()
    assert not any(token in log for token in bad.values())


def test_key_rotation_is_followed_without_a_restart(mc_procs, fake_gc, loop):
    mc = mc_procs()
    assignable(fake_gc, mc)
    assert join(loop, fake_gc, "e2e-m3", "Ann").joined is not None
    fake_gc.issuer.rotate()
    # An unknown kid refetches the JWKS at most once every 10 s: until then
    # the new key's tokens are refused, then followed without a restart.
    wait_for(lambda: join(loop, fake_gc, "e2e-m3", "Bob").joined is not None, 15,
             interval=1.0, what="a token of the rotated key accepted")
    assert mc.metric('mc_jwks_refresh_total{outcome="ok"}') == 2.0


def test_caps_per_meeting_and_per_mc(mc_procs, fake_gc, loop):
    mc = mc_procs(env={"MC_MAX_PARTICIPANTS_PER_MEETING": "2", "MC_MAX_PARTICIPANTS": "3",
                       "MC_PARTICIPANT_ESTIMATE": "0"})
    assignable(fake_gc, mc)
    join(loop, fake_gc, "e2e-a", "A1"), join(loop, fake_gc, "e2e-a", "A2")
    third = join(loop, fake_gc, "e2e-a", "A3")
    assert third.joined is None and error_of(third)[0] == "CAPACITY_EXCEEDED"
    assert join(loop, fake_gc, "e2e-b", "B1").joined is not None
    # Full: the GC places no new meeting here, so ask the MC directly.
    token = fake_gc.issuer.mint("e2e-b", "user-B2")
    b2 = SyncParticipant.join(loop, mc.wt_url, "e2e-b", token, "B2")
    assert b2.joined is None and error_of(b2)[0] == "CAPACITY_EXCEEDED"
    participants_heartbeat(fake_gc, 3)
    assert mc.metric('mc_joins_total{outcome="capacity"}') == 2.0


@pytest.mark.parametrize("raw", [
    struct.pack(">I", 0),
    struct.pack(">I", 65537),
    struct.pack(">I", 4) + b"\xff\xff\xff\xff",
])
def test_framing_errors_close_that_session_only(mc_procs, fake_gc, loop, raw):
    mc = mc_procs()
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "e2e-m4", "Ann")
    mallory = join(loop, fake_gc, "e2e-m4", "Mallory")
    mallory.send_raw(raw)
    mallory.wait_closed()
    assert error_of(mallory)[0] == "INVALID_REQUEST"
    assert ann.expect("participant_left").participant_left.reason == pb.KICKED
    ann.mute()
    assert ann.expect("participant_mute_update").participant_mute_update.audio_self_muted
    assert mc.metric("mc_participants_current") == 1.0


def test_first_frame_must_be_a_join(mc_procs, fake_gc, loop):
    mc = mc_procs()
    assignable(fake_gc, mc)

    async def mute_first():
        client = await connect("127.0.0.1", mc.wt_port)
        session = await client.open_session("/")
        stream = session.open_stream()
        payload = pb.ClientMessage(mute_request=pb.MuteRequest()).SerializeToString()
        stream.send(struct.pack(">I", len(payload)) + payload)
        data = await stream.wait_closed()
        await client.close()
        return data

    data = loop.run(mute_first)
    m = pb.ServerMessage()
    m.ParseFromString(data[4:])
    assert pb.ErrorCode.Name(m.error.code) == "INVALID_REQUEST"


def test_wrong_path_is_404_and_the_advertised_one_works(mc_procs, fake_gc, loop):
    mc = mc_procs(wt_path="/wt")
    assignable(fake_gc, mc)

    async def status(path):
        client = await connect("127.0.0.1", mc.wt_port)
        session = await client.open_session(path)
        await client.close()
        return session.status

    assert loop.run(status, "/") == 404
    assert loop.run(status, "/wt") == 200
    placed = fake_gc.join("e2e-m5", "user-1")
    assert placed.webtransport_endpoint.endswith("/wt")
    p = SyncParticipant.join(loop, placed.webtransport_endpoint, "e2e-m5", placed.token, "Ann")
    assert p.joined is not None


def test_without_a_jwks_joins_are_internal_errors_and_not_ready(mc_procs, fake_gc, loop):
    mc = mc_procs(jwks_url="http://127.0.0.1:9/nothing-here")
    wait_for(lambda: mc.http("/readyz")[1].find("no JWKS") >= 0, 20, what="/readyz no JWKS")
    token = fake_gc.issuer.mint("e2e-m6", "user-1")
    p = SyncParticipant.join(loop, mc.wt_url, "e2e-m6", token, "Ann")
    assert error_of(p)[0] == "INTERNAL_ERROR"
