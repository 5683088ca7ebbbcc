"""Signalling on one session, Clock-driven over a recording transport: the
frame codec, join first within 10 s, the contract's checks in order, the
roster and mute fan-out, leaving, the grace, and every limit, each refusal an
ErrorMessage with the contract's code and nothing counted."""

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mc.binding import BindingKeys
from mc.interfaces import IParticipantSink, ISessionHandler, ISessionTransport, ITokenVerifier
from mc.joining import JoinService
from mc.meetings import MeetingRegistry
from mc.ops.health import Health
from mc.ops.metrics import Metrics
from mc.participants.session_state import InvalidMove, SessionLife, SessionState
from mc.participants.signaling import (
    MAX_FRAME_BYTES,
    FrameDecoder,
    FrameError,
    SignalingSession,
    encode_frame,
)
from mc.proto import signaling_pb2 as pb
from mc.testing.doubles import RecordingTransport, TableTokenVerifier

MH = (("mh-1", "https://mh-1.example:4433", ""),
      ("mh-2", "https://mh-2.example:4433", ""))


class Rig:
    def __init__(self, max_participants=100, per_meeting=1000, grace=30.0):
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = MeetingRegistry(10, max_participants, 0, self.clock,
                                        max_participants_per_meeting=per_meeting)
        self.health = Health(lambda: True, 1.0)
        self.tokens = TableTokenVerifier()
        self.metrics = Metrics()
        self.binding = BindingKeys(b"s" * 32)
        self.joins = JoinService(self.registry, self.health, self.tokens, self.clock,
                                 self.metrics, grace, self.binding)
        self.meeting = self.registry.commit(self.registry.reserve("m-1"), 1, MH)
        self.full_flips = []
        self.registry.on_capacity_change(self.full_flips.append)

    def session(self, open_stream=True):
        s = SignalingSession(self.joins, self.clock, ("127.0.0.1", 1), now=self.clock.seconds)
        t = RecordingTransport(s)
        s.session_opened(t)
        if open_stream:
            t.open_stream()
        return s, t

    def join(self, name="Ann", sub=None, meeting_id="m-1", token=None):
        s, t = self.session()
        token = token or f"tok-{name}"
        self.tokens.add(token, meeting_id, sub or f"user-{name}")
        send(s, pb.ClientMessage(join_request=pb.JoinRequest(
            meeting_id=meeting_id, join_token=token, participant_name=name)))
        return s, t

    def joins_total(self, outcome):
        return self.metrics.joins.labels(outcome)._value.get()


def send(session, message):
    session.data_received(encode_frame(message))


def received(transport):
    """Every ServerMessage written, decoded from the frames."""
    data = b"".join(transport.written)
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        msg = pb.ServerMessage()
        msg.ParseFromString(data[4:4 + n])
        out.append(msg)
        data = data[4 + n:]
    return out


def kinds(transport):
    return [m.WhichOneof("message") for m in received(transport)]


def error_of(transport):
    [err] = [m.error for m in received(transport) if m.HasField("error")]
    return pb.ErrorCode.Name(err.code), err.message


def test_seams_are_implemented():
    rig = Rig()
    s, t = rig.session()
    assert verifyObject(ISessionHandler, s) and verifyObject(IParticipantSink, s)
    assert verifyObject(ISessionTransport, t)
    assert verifyObject(ITokenVerifier, rig.tokens)


# --- frames -----------------------------------------------------------------

def test_decoder_splits_and_joins_frames_in_any_chunking():
    frames = [b"a", b"bc" * 100, b"x" * MAX_FRAME_BYTES]
    stream = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    for step in (1, 3, 4096, len(stream)):
        d = FrameDecoder()
        out = []
        for i in range(0, len(stream), step):
            out += d.feed(stream[i:i + step])
        assert out == frames and not d.partial


@pytest.mark.parametrize("length", [0, MAX_FRAME_BYTES + 1, 2**32 - 1])
def test_decoder_refuses_zero_and_oversized_lengths_before_the_body(length):
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", length))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_frame_error(data):
    with contextlib.suppress(FrameError):
        FrameDecoder().feed(data)


# --- joining ----------------------------------------------------------------

def test_join_accepted_with_every_field_then_roster_and_mutes():
    rig = Rig()
    ann, ta = rig.join("Ann")
    rig.clock.advance(1)
    send(ann, pb.ClientMessage(mute_request=pb.MuteRequest(audio_muted=True)))
    bob, tb = rig.join("  Bob  ")
    [resp] = [m.join_response for m in received(ta) if m.HasField("join_response")]
    assert resp.user_id == 1 and resp.participant_id.startswith("p-")
    assert list(resp.existing_participants) == []
    assert [s.media_handler_url for s in resp.media_servers] == [
        "https://mh-1.example:4433", "https://mh-2.example:4433"]
    msgs = received(tb)
    assert [m.WhichOneof("message") for m in msgs] == ["join_response", "participant_mute_update"]
    r = msgs[0].join_response
    assert r.user_id == 2 and r.participant_id != resp.participant_id
    [other] = r.existing_participants
    assert (other.participant_id, other.name, other.joined_at) == (
        resp.participant_id, "Ann", 1000_000)
    assert msgs[1].participant_mute_update.participant_id == resp.participant_id
    assert msgs[1].participant_mute_update.audio_self_muted
    joined = received(ta)[-1].participant_joined.participant
    assert (joined.participant_id, joined.name) == (r.participant_id, "Bob")
    assert rig.registry.snapshot().participants == 2 and rig.joins_total("accepted") == 2
    assert rig.meeting.idle_since is None


def test_mute_reaches_everyone_including_the_sender():
    rig = Rig()
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    send(bob, pb.ClientMessage(mute_request=pb.MuteRequest(audio_muted=True, video_muted=True)))
    for t in (ta, tb):
        u = received(t)[-1].participant_mute_update
        assert (u.audio_self_muted, u.video_self_muted) == (True, True)
        assert u.participant_id == bob.participant.participant_id


def test_leave_by_fin_tells_the_others_voluntary_and_frees_the_place():
    rig = Rig()
    ann, ta = rig.join("Ann")
    rig.meeting.idle_since = None
    bob, tb = rig.join("Bob")
    rig.clock.advance(7)
    bob.stream_ended()
    assert tb.finished
    left = received(ta)[-1].participant_left
    assert left.reason == pb.VOLUNTARY
    assert rig.registry.snapshot().participants == 1
    ann.session_closed(True)
    assert rig.registry.snapshot().participants == 0 and rig.meeting.idle_since == 1007


def test_lost_connection_holds_the_place_for_the_grace_then_timeout():
    rig = Rig(grace=30)
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    tb.abort()
    rig.clock.advance(29.9)
    assert rig.registry.snapshot().participants == 2 and kinds(ta)[-1] == "participant_joined"
    rig.clock.advance(0.2)
    assert received(ta)[-1].participant_left.reason == pb.TIMEOUT
    assert rig.registry.snapshot().participants == 1 and rig.joins.in_grace == 0


@pytest.mark.parametrize("case,code,outcome", [
    ("bad token", "UNAUTHORIZED", "unauthorized"),
    ("wrong meeting in token", "UNAUTHORIZED", "unauthorized"),
    ("no jwks", "INTERNAL_ERROR", "error"),
    ("unknown meeting", "NOT_FOUND", "not_found"),
    ("empty name", "INVALID_REQUEST", "invalid"),
    ("long name", "INVALID_REQUEST", "invalid"),
])
def test_refused_joins_close_and_count_nobody(case, code, outcome):
    rig = Rig()
    s, t = rig.session()
    token, meeting_id, name = "tok", "m-1", "Ann"
    rig.tokens.add("tok", "m-1", "user-1")
    if case == "bad token":
        token = "forged"
    elif case == "wrong meeting in token":
        rig.tokens.add("tok", "m-2", "user-1")
    elif case == "no jwks":
        rig.tokens.ready = False
    elif case == "unknown meeting":
        rig.tokens.add("tok", "m-9", "user-1")
        meeting_id = "m-9"
    elif case == "empty name":
        name = "   "
    elif case == "long name":
        name = "é" * 129
    send(s, pb.ClientMessage(join_request=pb.JoinRequest(
        meeting_id=meeting_id, join_token=token, participant_name=name)))
    assert error_of(t)[0] == code and t.finished
    if code == "UNAUTHORIZED":
        assert error_of(t)[1] == "invalid or expired token"
    assert rig.registry.snapshot().participants == 0 and rig.joins_total(outcome) == 1
    assert rig.joins_total("accepted") == 0


def test_capacity_per_meeting_and_per_mc_then_room_again_with_full_flips():
    rig = Rig(max_participants=3, per_meeting=2)
    rig.join("A"), rig.join("B")
    _, t = rig.join("C")
    assert error_of(t)[0] == "CAPACITY_EXCEEDED" and t.finished
    other = rig.registry.commit(rig.registry.reserve("m-2"), 1, MH)
    assert other is rig.registry.get("m-2")
    rig.join("D", meeting_id="m-2")
    _, t = rig.join("E", meeting_id="m-2")
    assert error_of(t)[0] == "CAPACITY_EXCEEDED"
    assert rig.full_flips == [True]
    assert rig.registry.snapshot().participants == 3 and rig.joins_total("capacity") == 2


def test_joins_while_draining_are_redirected():
    rig = Rig()
    rig.health.set_draining(True)
    _, t = rig.join("Ann")
    [m] = received(t)
    assert (m.redirect_to_mc.new_mc_endpoint, m.redirect_to_mc.meeting_id,
            m.redirect_to_mc.reason) == ("", "m-1", "draining")
    assert t.finished and rig.joins_total("redirected") == 1


def test_drain_redirects_everyone_and_they_leave():
    rig = Rig()
    (_, ta), (_, tb) = rig.join("Ann"), rig.join("Bob")
    assert rig.joins.redirect_everyone() == 2
    for t in (ta, tb):
        assert received(t)[-1].redirect_to_mc.reason == "draining" and t.finished
    assert rig.registry.snapshot().participants == 0 and rig.joins.connected() == 0


# --- limits -------------------------------------------------------------------

def test_first_message_must_be_a_join_request():
    rig = Rig()
    s, t = rig.session()
    send(s, pb.ClientMessage(mute_request=pb.MuteRequest()))
    assert error_of(t) == ("INVALID_REQUEST", "the first message must be a JoinRequest")
    assert t.finished


def test_no_join_within_10s_closes_with_an_error_when_the_stream_is_open():
    rig = Rig()
    s, t = rig.session()
    s.data_received(b"\x00\x00")  # part of a frame
    rig.clock.advance(9.9)
    assert not t.finished
    rig.clock.advance(0.2)
    assert error_of(t)[0] == "INVALID_REQUEST" and t.finished


def test_no_stream_within_10s_closes_without_a_message():
    rig = Rig()
    s, t = rig.session(open_stream=False)
    rig.clock.advance(10.1)
    assert t.finished and t.written == []


@pytest.mark.parametrize("data", [
    struct.pack(">I", 0),
    struct.pack(">I", MAX_FRAME_BYTES + 1),
    struct.pack(">I", 3) + b"\xff\xff\xff",
])
def test_framing_errors_close_only_that_session(data):
    rig = Rig()
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    bob.data_received(data)
    assert error_of(tb)[0] == "INVALID_REQUEST" and tb.finished
    assert received(ta)[-1].participant_left.reason == pb.KICKED
    assert not ta.finished and rig.registry.snapshot().participants == 1


def test_unsupported_and_repeated_join_leave_the_session_open():
    rig = Rig()
    ann, t = rig.join("Ann")
    send(ann, pb.ClientMessage(publish_stream=pb.PublishStream()))
    send(ann, pb.ClientMessage(join_request=pb.JoinRequest(meeting_id="m-1")))
    errors = [m.error for m in received(t) if m.HasField("error")]
    assert [(pb.ErrorCode.Name(e.code), e.message) for e in errors] == [
        ("INVALID_REQUEST", "unsupported"), ("INVALID_REQUEST", "already joined")]
    assert not t.finished


def test_rate_limit_20_per_second_then_closed():
    rig = Rig()
    ann, t = rig.join("Ann")  # 1 message
    for _ in range(19):
        send(ann, pb.ClientMessage(mute_request=pb.MuteRequest()))
    assert not t.finished
    rig.clock.advance(0.999)  # still within the second of the first 20
    send(ann, pb.ClientMessage(mute_request=pb.MuteRequest()))
    assert error_of(t) == ("INVALID_REQUEST", "rate") and t.finished
    assert rig.registry.snapshot().participants == 0


def test_the_rate_is_a_sliding_window_not_a_bucket():
    """39 messages within one second, spread so a bucket of 20 refilling at
    20/s lets all through: the 21st within any second closes the session."""
    rig = Rig()
    ann, t = rig.join("Ann")
    sent = 1
    rig.clock.advance(0.5)
    for _ in range(19):  # 20 in the first half second
        send(ann, pb.ClientMessage(mute_request=pb.MuteRequest()))
        sent += 1
    assert not t.finished
    for _ in range(19):  # 19 more before the second is over
        rig.clock.advance(0.025)
        send(ann, pb.ClientMessage(mute_request=pb.MuteRequest()))
        sent += 1
        if t.finished:
            break
    assert error_of(t) == ("INVALID_REQUEST", "rate") and sent == 21


def test_twenty_a_second_for_ever_is_allowed():
    rig = Rig()
    ann, t = rig.join("Ann")
    for _ in range(200):
        rig.clock.advance(0.051)
        send(ann, pb.ClientMessage(mute_request=pb.MuteRequest()))
    assert not t.finished


def test_a_participant_that_does_not_read_is_cut_as_lost():
    rig = Rig(grace=30)
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    tb.buffered = 1024 * 1024
    send(ann, pb.ClientMessage(mute_request=pb.MuteRequest(audio_muted=True)))
    assert tb.aborted
    assert rig.registry.snapshot().participants == 2 and rig.joins.in_grace == 1


def test_messages_during_the_token_check_wait_for_the_join():
    rig = Rig()
    rig.tokens.hold = True
    s, t = rig.join("Ann")
    send(s, pb.ClientMessage(mute_request=pb.MuteRequest(video_muted=True)))
    assert t.written == []
    rig.tokens.release()
    assert kinds(t) == ["join_response", "participant_mute_update"]


def test_messages_queued_during_the_token_check_are_bounded():
    rig = Rig()
    rig.tokens.hold = True
    s, t = rig.join("Ann")
    for _ in range(19):
        rig.clock.advance(0.1)  # within the rate limit
        send(s, pb.ClientMessage(mute_request=pb.MuteRequest()))
    assert not t.finished
    for _ in range(2):
        rig.clock.advance(0.1)
        send(s, pb.ClientMessage(mute_request=pb.MuteRequest()))
    assert error_of(t) == ("INVALID_REQUEST", "rate") and t.finished
    rig.tokens.release()
    assert rig.registry.snapshot().participants == 0


def test_a_session_gone_during_the_token_check_is_not_counted():
    rig = Rig()
    rig.tokens.hold = True
    s, t = rig.join("Ann")
    t.abort()
    rig.tokens.release()
    assert rig.registry.snapshot().participants == 0


def test_fenced_out_meeting_redirects_with_moved():
    rig = Rig()
    _, t = rig.join("Ann")
    rig.registry.remove("m-1")
    rig.meeting.redirect_all("moved", rig.clock.seconds())
    assert received(t)[-1].redirect_to_mc.reason == "moved" and t.finished
    assert rig.registry.snapshot().participants == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=12))
def test_random_frames_never_hurt_a_neighbour(chunks):
    rig = Rig()
    ann, ta = rig.join("Ann")
    mallory, tm = rig.join("Mallory")
    for chunk in chunks:
        mallory.data_received(struct.pack(">I", len(chunk)) + chunk if chunk else b"\x00")
    send(ann, pb.ClientMessage(mute_request=pb.MuteRequest(audio_muted=True)))
    assert not ta.finished
    assert received(ta)[-1].participant_mute_update.audio_self_muted


# --- reconnecting -------------------------------------------------------------

def reconnect(rig, old, sub=None, meeting_id="m-1", binding_token=None, correlation_id=None):
    """A new session presenting ``old``'s JoinResponse (the latest one)."""
    responses = [m.join_response for m in received(old) if m.HasField("join_response")]
    r = responses[-1]
    s, t = rig.session()
    token = f"tok-re-{len(rig.tokens.tokens)}"
    rig.tokens.add(token, meeting_id, sub or "user-Bob")
    send(s, pb.ClientMessage(join_request=pb.JoinRequest(
        meeting_id=meeting_id, join_token=token, participant_name="ignored",
        correlation_id=r.correlation_id if correlation_id is None else correlation_id,
        binding_token=r.binding_token if binding_token is None else binding_token)))
    return s, t


def test_join_response_carries_a_correlation_id_and_a_binding_token():
    rig = Rig()
    _, t = rig.join("Ann")
    r = received(t)[0].join_response
    assert r.correlation_id and len(r.binding_token) >= 64


def test_reconnect_within_the_grace_keeps_ids_and_tells_nobody():
    rig = Rig(grace=30)
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    send(bob, pb.ClientMessage(mute_request=pb.MuteRequest(video_muted=True)))
    first = received(tb)[0].join_response
    tb.abort()
    rig.clock.advance(20)
    seen_by_ann = len(received(ta))
    s2, t2 = reconnect(rig, tb)
    msgs = received(t2)
    r = msgs[0].join_response
    assert (r.participant_id, r.user_id, r.correlation_id) == (
        first.participant_id, first.user_id, first.correlation_id)
    assert r.binding_token != first.binding_token
    assert [p.name for p in r.existing_participants] == ["Ann"]
    rig.clock.advance(20)  # past the first grace: the reconnect ended it
    assert len(received(ta)) == seen_by_ann
    assert rig.registry.snapshot().participants == 2 and rig.joins.in_grace == 0
    send(s2, pb.ClientMessage(mute_request=pb.MuteRequest()))
    assert received(ta)[-1].participant_mute_update.participant_id == first.participant_id
    assert rig.metrics.reconnects.labels("accepted")._value.get() == 1


def test_reconnect_while_the_old_session_is_open_replaces_it():
    rig = Rig()
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    _, t2 = reconnect(rig, tb)
    assert tb.finished and kinds(t2)[0] == "join_response"
    assert kinds(ta) == ["join_response", "participant_joined"]  # no leave, no join
    assert rig.registry.snapshot().participants == 2


@pytest.mark.parametrize("case", ["old token", "other sub", "after the grace",
                                  "wrong correlation", "garbage token", "other meeting"])
def test_bad_reconnects_are_unauthorized(case):
    rig = Rig(grace=30)
    other = rig.registry.commit(rig.registry.reserve("m-2"), 1, MH)
    assert other is not None
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    kw = {}
    if case == "old token":
        stale = received(tb)[0].join_response.binding_token
        reconnect(rig, tb)  # issues a new one
        kw["binding_token"] = stale
    elif case == "other sub":
        kw["sub"] = "user-Ann"
    elif case == "after the grace":
        tb.abort()
        rig.clock.advance(31)
    elif case == "wrong correlation":
        kw["correlation_id"] = "c-nope"
    elif case == "garbage token":
        kw["binding_token"] = "!!"
    elif case == "other meeting":
        kw["meeting_id"] = "m-2"
    _, t = reconnect(rig, tb, **kw)
    assert error_of(t)[0] == "UNAUTHORIZED" and t.finished
    assert rig.metrics.reconnects.labels("refused")._value.get() == 1


def test_binding_tokens_survive_any_rotation_while_their_participant_holds_them():
    rig = Rig(grace=30)
    bob, tb = rig.join("Bob")
    for secret in (b"n" * 32, b"o" * 32, b"p" * 32):
        rig.joins.binding = BindingKeys(secret)  # what a SIGHUP does
        rig.clock.advance(100)  # each rotation far older than the grace
    tb.abort()
    rig.clock.advance(20)
    _, t2 = reconnect(rig, tb)
    assert kinds(t2)[0] == "join_response"
    stale = received(tb)[0].join_response.binding_token
    _, t3 = reconnect(rig, t2, binding_token=stale)
    assert error_of(t3)[0] == "UNAUTHORIZED"  # replaced by the reconnect's token


# --- one place per meeting token ----------------------------------------------

def test_a_meeting_token_used_again_takes_its_own_place():
    rig = Rig()
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob", token="tok-bob")
    first = received(tb)[0].join_response
    s2, t2 = rig.session()
    send(s2, pb.ClientMessage(join_request=pb.JoinRequest(
        meeting_id="m-1", join_token="tok-bob", participant_name="Bob again")))
    again = received(t2)[0].join_response
    assert (again.participant_id, again.user_id) == (first.participant_id, first.user_id)
    assert tb.finished, "the first session is replaced"
    assert rig.registry.snapshot().participants == 2
    assert kinds(ta) == ["join_response", "participant_joined"], "Ann sees nothing"
    for _ in range(5):
        s, t = rig.session()
        send(s, pb.ClientMessage(join_request=pb.JoinRequest(
            meeting_id="m-1", join_token="tok-bob", participant_name="Bob")))
    assert rig.registry.snapshot().participants == 2, "one token, one place"


def test_the_retry_after_a_lost_join_response_gets_in():
    rig = Rig(grace=30)
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob", token="tok-bob")
    tb.abort()  # the JoinResponse never arrived; the connection dropped
    rig.clock.advance(5)
    s2, t2 = rig.session()
    send(s2, pb.ClientMessage(join_request=pb.JoinRequest(
        meeting_id="m-1", join_token="tok-bob", participant_name="Bob")))
    assert kinds(t2)[0] == "join_response" and rig.joins.in_grace == 0
    rig.clock.advance(60)
    assert "participant_left" not in kinds(ta)
    assert rig.registry.snapshot().participants == 2


def test_a_reconnect_gone_during_the_token_check_commits_nothing():
    rig = Rig(grace=30)
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    tb.abort()
    rig.tokens.hold = True
    s2, t2 = reconnect(rig, tb)
    t2.abort()
    rig.tokens.release()
    rig.tokens.hold = False
    assert rig.joins.in_grace == 1
    _, t3 = reconnect(rig, tb)  # the binding token was not spent
    assert kinds(t3)[0] == "join_response"


# --- one broken recipient, the others unharmed ----------------------------------

def test_a_stream_that_cannot_be_written_loses_only_its_session():
    rig = Rig(grace=30)
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    carl, tc = rig.join("Carl")
    tb.writable = False  # Bob's STOP_SENDING, applied before it is heard of
    send(ann, pb.ClientMessage(mute_request=pb.MuteRequest(audio_muted=True)))
    assert received(tc)[-1].participant_mute_update.audio_self_muted
    assert received(ta)[-1].participant_mute_update.audio_self_muted
    assert tb.aborted and rig.joins.in_grace == 1
    rig.joins.redirect_everyone()
    assert received(ta)[-1].HasField("redirect_to_mc")
    assert received(tc)[-1].HasField("redirect_to_mc")


def test_a_sink_that_raises_never_stops_a_fan_out():
    rig = Rig()
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    carl, tc = rig.join("Carl")

    class Broken:
        closed = False

        def deliver(self, event):
            raise RuntimeError("a bug in one recipient")

    bob.participant.sink = Broken()
    send(ann, pb.ClientMessage(mute_request=pb.MuteRequest(video_muted=True)))
    assert received(tc)[-1].participant_mute_update.video_self_muted
    rig.joins.redirect_everyone()
    assert received(tc)[-1].HasField("redirect_to_mc")


def test_a_lost_meeting_ends_the_graces_and_counts_stay_right():
    rig = Rig(grace=30)
    ann, ta = rig.join("Ann")
    bob, tb = rig.join("Bob")
    tb.abort()
    assert rig.joins.in_grace == 1 and rig.joins.connected() == 1
    rig.registry.remove("m-1")
    rig.meeting.redirect_all("moved", rig.clock.seconds())
    assert rig.joins.in_grace == 0 and rig.joins.connected() == 0
    rig.clock.advance(31)
    assert rig.joins.connected() == 0 and rig.registry.snapshot().participants == 0


# --- frames out -------------------------------------------------------------------

def test_a_large_roster_is_completed_by_participant_joined_frames():
    rig = Rig(max_participants=400, per_meeting=400)
    names = [f"{i:03d}" + "n" * 250 for i in range(300)]
    for name in names:
        s, t = rig.session()
        rig.tokens.add(f"tok-{name}", "m-1", f"user-{name}")
        send(s, pb.ClientMessage(join_request=pb.JoinRequest(
            meeting_id="m-1", join_token=f"tok-{name}", participant_name=name)))
    _, t = rig.join("Zed")
    frames = b"".join(t.written)
    sizes, at = [], 0
    while at < len(frames):
        (n,) = struct.unpack(">I", frames[at:at + 4])
        sizes.append(n)
        at += 4 + n
    assert max(sizes) <= MAX_FRAME_BYTES
    msgs = received(t)
    response = msgs[0].join_response
    tail = [m.participant_joined.participant.name for m in msgs[1:]]
    assert 0 < len(response.existing_participants) < 300
    assert [p.name for p in response.existing_participants] + tail == names
    assert all(m.HasField("participant_joined") for m in msgs[1:])


# --- the one state ----------------------------------------------------------------

def test_a_session_moves_only_as_the_table_says():
    life = SessionLife()
    assert life.state is SessionState.CONNECT and life.live
    with pytest.raises(InvalidMove):
        life.move(SessionState.JOINED)  # no join without its token check
    for state in (SessionState.AWAITING_JOIN, SessionState.JOINING, SessionState.JOINED,
                  SessionState.CLOSING):
        life.move(state)
    assert not life.live
    life.move(SessionState.CLOSED)
    for state in SessionState:
        with pytest.raises(InvalidMove):
            life.move(state)  # closed is the end


def test_signalling_keeps_no_state_of_its_own():
    rig = Rig()
    s, t = rig.join("Ann")
    assert s.state is t.state is SessionState.JOINED
    t.abort()
    assert s.state is SessionState.CLOSED and s.closed
