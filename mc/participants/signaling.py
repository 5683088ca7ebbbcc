"""Signalling on a participant's WebTransport stream: the frame codec and the
per-session protocol object (join first, within 10 s; the contract's limits;
every refusal an ErrorMessage with the contract's code, then a clean close).

A session is a small state machine; ``_state`` is the one place that says
where it is, and each transition happens in one method.
"""

import struct

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mc.interfaces import IParticipantSink, ISessionHandler
from mc.joining import Redirected, Refused
from mc.meetings import KICKED, Joined, Left, MuteChanged, Redirect, Replaced
from mc.proto import signaling_pb2 as pb

#: The contract's limits.
MAX_FRAME_BYTES = 65536
JOIN_TIMEOUT_SECONDS = 10.0
MESSAGES_PER_SECOND = 20
MAX_UNREAD_BYTES = 1024 * 1024

_LENGTH = struct.Struct(">I")

#: Session states.
AWAITING_JOIN = "awaiting join"
JOINING = "joining"
JOINED = "joined"
CLOSED = "closed"


class FrameError(ValueError):
    """The stream broke the framing rule; the session cannot go on."""


class FrameDecoder:
    """Splits a byte stream into frame payloads. Holds at most one frame's
    worth of bytes: an oversized length is refused before its body arrives."""

    __slots__ = ("_buffer",)

    def __init__(self):
        self._buffer = bytearray()

    @property
    def partial(self):
        """True while part of a frame has arrived."""
        return bool(self._buffer)

    def feed(self, data):
        """The payloads completed by ``data``; raise FrameError on a zero or
        oversized length."""
        buf = self._buffer
        buf += data
        frames = []
        start = 0
        while len(buf) - start >= 4:
            (length,) = _LENGTH.unpack_from(buf, start)
            if length == 0:
                raise FrameError("zero-length frame")
            if length > MAX_FRAME_BYTES:
                raise FrameError(f"frame of {length} bytes")
            end = start + 4 + length
            if len(buf) < end:
                break
            frames.append(bytes(buf[start + 4:end]))
            start = end
        del buf[:start]
        return frames


def encode_frame(message):
    payload = message.SerializeToString()
    return _LENGTH.pack(len(payload)) + payload


def error_frame(code, message=""):
    return encode_frame(pb.ServerMessage(error=pb.ErrorMessage(
        code=pb.ErrorCode.Value(code), message=message)))


def _event_message(event):
    if isinstance(event, Joined):
        return pb.ServerMessage(participant_joined=pb.ParticipantJoined(
            participant=pb.Participant(participant_id=event.participant_id, name=event.name,
                                       joined_at=event.joined_at_ms)))
    if isinstance(event, Left):
        return pb.ServerMessage(participant_left=pb.ParticipantLeft(
            participant_id=event.participant_id, reason=pb.LeaveReason.Value(event.reason)))
    if isinstance(event, MuteChanged):
        return pb.ServerMessage(participant_mute_update=_mute_update(event))
    if isinstance(event, Redirect):
        return pb.ServerMessage(redirect_to_mc=pb.RedirectToMc(
            new_mc_endpoint="", meeting_id=event.meeting_id, reason=event.reason))
    raise TypeError(f"no message for {type(event).__name__}")


def _mute_update(p):
    return pb.ParticipantMuteUpdate(participant_id=p.participant_id,
                                    audio_self_muted=p.audio_muted,
                                    video_self_muted=p.video_muted)


def join_response_frame(admission):
    p = admission.participant
    response = pb.JoinResponse(
        participant_id=p.participant_id, user_id=p.user_id,
        existing_participants=[pb.Participant(participant_id=o.participant_id, name=o.name,
                                              joined_at=o.joined_at_ms)
                               for o in admission.others],
        media_servers=[pb.MediaServerInfo(media_handler_url=url)
                       for url in admission.media_servers],
        correlation_id=admission.correlation_id, binding_token=admission.binding_token)
    frames = [encode_frame(pb.ServerMessage(join_response=response))]
    frames += [encode_frame(pb.ServerMessage(participant_mute_update=_mute_update(o)))
               for o in admission.others if o.muted]
    return b"".join(frames)


class RateLimit:
    """A token bucket: ``rate`` messages a second, bursts of ``rate``."""

    __slots__ = ("_rate", "_tokens", "_at")

    def __init__(self, rate, now):
        self._rate = rate
        self._tokens = float(rate)
        self._at = now

    def allow(self, now):
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@implementer(ISessionHandler, IParticipantSink)
class SignalingSession:
    """One participant's session: JoinRequest first, then mutes until it
    leaves; the contract's limits apply throughout."""

    log = Logger()

    def __init__(self, joins, clock, peer=None, on_closed=None):
        self._joins = joins
        self._clock = clock
        self._peer = peer
        self._on_closed = on_closed
        self._transport = None
        self._decoder = FrameDecoder()
        self._rate = RateLimit(MESSAGES_PER_SECOND, clock.seconds())
        self._state = AWAITING_JOIN
        self._join_timer = None
        self._queued = []  # messages that arrived while the join was checked
        self._leave_reason = None  # set when we close a joined session on purpose
        self._reconnecting = False
        self.participant = None

    @property
    def state(self):
        return self._state

    # --- ISessionHandler ----------------------------------------------------

    def session_opened(self, transport):
        self._transport = transport
        self._join_timer = self._clock.callLater(JOIN_TIMEOUT_SECONDS, self._join_timed_out)

    def data_received(self, data):
        if self._state == CLOSED:
            return
        try:
            payloads = self._decoder.feed(data)
        except FrameError as e:
            self._refuse("INVALID_REQUEST", "invalid frame", why=str(e))
            return
        for payload in payloads:
            if self._state == CLOSED:
                return
            self._received(payload)

    def stream_ended(self):
        """The client finished its stream: it leaves on purpose."""
        if self._state != CLOSED:
            self._close()

    def session_closed(self, clean):
        if self._state == CLOSED and self._transport is None:
            return
        self._state = CLOSED
        self._transport = None
        self._cancel_join_timer()
        p, self.participant = self.participant, None
        if p is not None:
            if self._leave_reason is not None:
                self._joins.leave(p, self._leave_reason)
            elif clean:
                self._joins.leave(p)
            else:
                self._joins.lost(p)
        if self._on_closed is not None:
            self._on_closed(self)

    # --- IParticipantSink ---------------------------------------------------

    def deliver(self, event):
        if isinstance(event, Replaced):  # the participant lives on in another session
            self.participant = None
            self._close()
            return
        frame = event.frame
        if frame is None:
            frame = event.frame = encode_frame(_event_message(event))
        self._send(frame)
        if isinstance(event, Redirect):
            self._close()

    # --- frames in ----------------------------------------------------------

    def _received(self, payload):
        if not self._rate.allow(self._clock.seconds()):
            self._refuse("INVALID_REQUEST", "rate")
            return
        message = pb.ClientMessage()
        try:
            message.ParseFromString(payload)
        except Exception:
            self._refuse("INVALID_REQUEST", "invalid message", why="unparseable")
            return
        kind = message.WhichOneof("message")
        if self._state == AWAITING_JOIN:
            if kind != "join_request":
                self._refuse("INVALID_REQUEST", "the first message must be a JoinRequest")
                return
            self._start_join(message.join_request)
        elif self._state == JOINING:
            # Bounded while a JWKS fetch holds the join (up to its timeout).
            if len(self._queued) >= MESSAGES_PER_SECOND:
                self._refuse("INVALID_REQUEST", "rate")
                return
            self._queued.append(message)
        else:
            self._in_meeting(message, kind)

    def _in_meeting(self, message, kind):
        if kind == "mute_request":
            r = message.mute_request
            self._joins.set_mute(self.participant, r.audio_muted, r.video_muted)
        elif kind == "join_request":
            self._send(error_frame("INVALID_REQUEST", "already joined"))
        else:
            self._send(error_frame("INVALID_REQUEST", "unsupported"))

    # --- joining ------------------------------------------------------------

    def _start_join(self, request):
        self._cancel_join_timer()
        self._state = JOINING
        self._reconnecting = bool(request.correlation_id or request.binding_token)
        d = defer.ensureDeferred(self._joins.join(
            request.meeting_id, request.join_token, request.participant_name, self,
            request.correlation_id, request.binding_token))
        d.addCallbacks(self._joined, self._not_joined)
        d.addErrback(self._bug)

    def _joined(self, admission):
        p = admission.participant
        if self._state == CLOSED:  # gone while its token was checked
            if self._reconnecting:
                self._joins.lost(p)  # it may try again within the grace
            else:
                self._joins.leave(p)
            return
        self.participant = p
        self._state = JOINED
        self._transport.joined()
        self._send(join_response_frame(admission))
        queued, self._queued = self._queued, []
        for message in queued:
            if self._state != JOINED:
                return
            self._in_meeting(message, message.WhichOneof("message"))

    def _not_joined(self, failure):
        if failure.check(Refused):
            e = failure.value
            self._refuse(e.code, e.message, why=e.outcome)
        elif failure.check(Redirected):
            e = failure.value
            self.deliver(Redirect(e.meeting_id, e.reason))
        else:
            return failure

    def _bug(self, failure):
        self.log.failure("join failed", failure, peer=self._peer)
        self._refuse("INTERNAL_ERROR", "internal error")

    def _join_timed_out(self):
        self._join_timer = None
        if self._state != AWAITING_JOIN or self._transport is None:
            return
        if self._transport.stream_open:
            self._refuse("INVALID_REQUEST", "no JoinRequest within 10 s")
        else:
            self._close()

    def _cancel_join_timer(self):
        if self._join_timer is not None and self._join_timer.active():
            self._join_timer.cancel()
        self._join_timer = None

    # --- frames out and closing ---------------------------------------------

    def _send(self, frame):
        """Write a frame, or cut a participant that does not read its stream
        (more than 1 MiB unread) as a lost connection."""
        t = self._transport
        if t is None:
            return
        if t.buffered + len(frame) > MAX_UNREAD_BYTES:
            self.log.warn("cutting a participant that does not read ({buffered} bytes unread)",
                          peer=self._peer, buffered=t.buffered)
            t.abort()
            return
        t.write(frame)

    def _refuse(self, code, message, why=None):
        """ErrorMessage, then the close (a joined participant the MC puts out
        for breaking a limit leaves as KICKED)."""
        self.log.debug("closing session: {code} {message} ({why})", peer=self._peer, code=code,
                       message=message, why=why or message)
        self._send(error_frame(code, message))
        if self._state == JOINED:
            self._leave_reason = KICKED
        self._close()

    def _close(self):
        t = self._transport
        if t is None:
            self._state = CLOSED
            return
        self._state = CLOSED
        t.finish()
