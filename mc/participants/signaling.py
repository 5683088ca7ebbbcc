"""Signalling on a participant's WebTransport stream: the frame codec and the
per-session protocol object (join first, within 10 s; the contract's limits;
every refusal an ErrorMessage with the contract's code, then a clean close).

Where a session is (awaiting its join, joining, joined, closing) is its
transport's ``SessionState``, shared with it: one place, one table of moves
(``mc.participants.session_state``).
"""

import contextlib
import struct
import time
from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mc.interfaces import IParticipantSink, ISessionHandler
from mc.joining import Gone, Redirected, Refused
from mc.meetings import KICKED, Joined, Left, MuteChanged, Redirect, Replaced
from mc.mh.registration import MhStatus
from mc.participants.session_state import LIVE, SessionState
from mc.proto import signaling_pb2 as pb

#: The contract's limits.
MAX_FRAME_BYTES = 65536
JOIN_TIMEOUT_SECONDS = 10.0
MESSAGES_PER_SECOND = 20
MAX_UNREAD_BYTES = 1024 * 1024
#: A client's strings are cut to this many bytes before they are kept or logged.
MAX_CLIENT_STRING_BYTES = 256

_LENGTH = struct.Struct(">I")


def cut_utf8(text, limit=MAX_CLIENT_STRING_BYTES):
    """``text`` cut to at most ``limit`` bytes of UTF-8, at a character boundary."""
    if len(text) * 4 <= limit:
        return text
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def media_statuses(update):
    """A MediaConnectionUpdate's statuses as ``MhStatus``, strings cut."""
    return [MhStatus(cut_utf8(s.mh_url), s.state, cut_utf8(s.failure_reason),
                     cut_utf8(s.failure_code)) for s in update.statuses]


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


def _roster_entry(o):
    return pb.Participant(participant_id=o.participant_id, name=o.name, joined_at=o.joined_at_ms)


def _entry_bytes(entry):
    """What one ``existing_participants`` entry adds to a JoinResponse."""
    size = entry.ByteSize()
    return 1 + _varint_bytes(size) + size


def _varint_bytes(n):
    return max(1, (n.bit_length() + 6) // 7)


def join_response_frame(admission):
    """The JoinResponse, then the roster it had no room for as
    ParticipantJoined frames (no frame over MAX_FRAME_BYTES), then one
    ParticipantMuteUpdate per muted participant."""
    p = admission.participant
    response = pb.JoinResponse(
        participant_id=p.participant_id, user_id=p.user_id,
        media_servers=[pb.MediaServerInfo(media_handler_url=url)
                       for url in admission.media_servers],
        correlation_id=admission.correlation_id, binding_token=admission.binding_token)
    # The ServerMessage wraps the response: its tag and a length of at most 3 bytes.
    room = MAX_FRAME_BYTES - response.ByteSize() - 4
    entries = [_roster_entry(o) for o in admission.others]
    fits = 0
    for entry in entries:
        room -= _entry_bytes(entry)
        if room < 0:
            break
        fits += 1
    response.existing_participants.extend(entries[:fits])
    frames = [encode_frame(pb.ServerMessage(join_response=response))]
    frames += [encode_frame(pb.ServerMessage(participant_joined=pb.ParticipantJoined(
        participant=entry))) for entry in entries[fits:]]
    frames += [encode_frame(pb.ServerMessage(participant_mute_update=_mute_update(o)))
               for o in admission.others if o.muted]
    return b"".join(frames)


class RateLimit:
    """At most ``rate`` messages in any ``window`` seconds: a sliding window
    over the times of the last ``rate`` messages, on a monotonic clock."""

    __slots__ = ("_rate", "_window", "_times")

    def __init__(self, rate, window=1.0):
        self._rate = rate
        self._window = window
        self._times = deque(maxlen=rate)

    def allow(self, now):
        times = self._times
        if len(times) == self._rate and now - times[0] < self._window:
            return False
        times.append(now)
        return True


@implementer(ISessionHandler, IParticipantSink)
class SignalingSession:
    """One participant's session: JoinRequest first, then mutes until it
    leaves; the contract's limits apply throughout. Where the session is
    lives in its transport's state (``SessionState``), shared with the
    transport; this class keeps no flag of its own about it.

    ``now`` is the monotonic clock the rate limit reads; ``clock`` runs the
    join timer. ``media``: the MeetingRegistrar hearing participants'
    MediaConnectionUpdates; ``tracing``: ``mc.tracing.Tracing``, continuing
    clients' trace context."""

    log = Logger()

    def __init__(self, joins, clock, peer=None, now=time.monotonic, media=None, tracing=None):
        self._joins = joins
        self._media = media
        self._tracing = tracing
        self._clock = clock
        self._now = now
        self._peer = peer
        self._transport = None
        self._decoder = FrameDecoder()
        self._rate = RateLimit(MESSAGES_PER_SECOND)
        self._join_timer = None
        self._queued = []  # messages that arrived while the join was checked
        self._leave_reason = None  # set when we close a joined session on purpose
        self.participant = None

    @property
    def state(self):
        return SessionState.CONNECT if self._transport is None else self._transport.state

    @property
    def closed(self):
        return self.state not in LIVE

    # --- ISessionHandler ----------------------------------------------------

    def session_opened(self, transport):
        self._transport = transport
        within = transport.join_within
        delay = JOIN_TIMEOUT_SECONDS if within is None else min(JOIN_TIMEOUT_SECONDS, within)
        self._join_timer = self._clock.callLater(delay, self._join_timed_out)

    def data_received(self, data):
        if self.closed:
            return
        try:
            payloads = self._decoder.feed(data)
        except FrameError as e:
            self._refuse("INVALID_REQUEST", "invalid frame", why=str(e))
            return
        for payload in payloads:
            if self.closed:
                return
            self._received(payload)

    def stream_ended(self):
        """The client finished its stream: it leaves on purpose."""
        self._close()

    def session_closed(self, clean):
        self._cancel_join_timer()
        self._queued = []
        p, self.participant = self.participant, None
        if p is not None:
            if self._leave_reason is not None:
                self._joins.leave(p, self._leave_reason)
            elif clean:
                self._joins.leave(p)
            else:
                self._joins.lost(p)

    # --- IParticipantSink ---------------------------------------------------

    def deliver(self, event):
        try:
            self._deliver(event)
        except Exception:
            # One recipient's failure is its own: the fan-out goes on.
            self.log.failure("delivering {event} failed", event=type(event).__name__,
                             peer=self._peer)
            if self._transport is not None:
                self._transport.abort()

    def _deliver(self, event):
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
        if not self._rate.allow(self._now()):
            self._refuse("INVALID_REQUEST", "rate")
            return
        message = pb.ClientMessage()
        try:
            message.ParseFromString(payload)
        except Exception:
            self._refuse("INVALID_REQUEST", "invalid message", why="unparseable")
            return
        kind = message.WhichOneof("message")
        state = self.state
        if state is SessionState.AWAITING_JOIN:
            if kind != "join_request":
                self._refuse("INVALID_REQUEST", "the first message must be a JoinRequest")
                return
            self._start_join(message)
        elif state is SessionState.JOINING:
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
        elif kind == "media_connection_update" and self._media is not None:
            with self._traced("media_connection_update", message):
                self._media.client_report(self.participant,
                                          media_statuses(message.media_connection_update))
        elif kind == "join_request":
            self._send(error_frame("INVALID_REQUEST", "already joined"))
        else:
            self._send(error_frame("INVALID_REQUEST", "unsupported"))

    # --- joining ------------------------------------------------------------

    def _traced(self, name, message, end=True):
        """The span of the MC's under the message's trace context, current
        within the block (nothing without tracing)."""
        if self._tracing is None:
            return contextlib.nullcontext()
        return self._tracing.continued(name, message.trace_parent, message.trace_state, end)

    def _start_join(self, message):
        request = message.join_request
        self._cancel_join_timer()
        self._transport.joining()
        # The join runs in a copy of the current context: its log lines and
        # the calls it causes carry the span's trace id.
        with self._traced("join", message, end=False) as span:
            d = defer.ensureDeferred(self._joins.join(
                request.meeting_id, request.join_token, request.participant_name, self,
                request.correlation_id, request.binding_token))
            d.addCallbacks(self._joined, self._not_joined)
            d.addErrback(self._bug)
        if span is not None:
            d.addBoth(lambda result: (span.end(), result)[1])

    def _joined(self, admission):
        """Admitted: the join service commits nothing for a session already
        closed, so this one is still live."""
        self.participant = admission.participant
        self._transport.joined()
        self._send(join_response_frame(admission))
        queued, self._queued = self._queued, []
        for message in queued:
            if self.state is not SessionState.JOINED:
                return
            self._in_meeting(message, message.WhichOneof("message"))

    def _not_joined(self, failure):
        if failure.check(Refused):
            e = failure.value
            self._refuse(e.code, e.message, why=e.outcome)
        elif failure.check(Redirected):
            e = failure.value
            self.deliver(Redirect(e.meeting_id, e.reason))
        elif not failure.check(Gone):  # Gone: closed meanwhile, nothing to say
            return failure

    def _bug(self, failure):
        self.log.failure("join failed", failure, peer=self._peer)
        self._refuse("INTERNAL_ERROR", "internal error")

    def _join_timed_out(self):
        self._join_timer = None
        state = self.state
        if state is SessionState.AWAITING_JOIN:
            self._refuse("INVALID_REQUEST", "no JoinRequest within 10 s")
        elif state is SessionState.CONNECT:
            self._close()

    def _cancel_join_timer(self):
        if self._join_timer is not None and self._join_timer.active():
            self._join_timer.cancel()
        self._join_timer = None

    # --- frames out and closing ---------------------------------------------

    def _send(self, frame):
        """Write a frame, or cut a participant that does not read its stream
        (more than 1 MiB unread) as a lost connection."""
        if self.closed:
            return
        t = self._transport
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
        if self.state is SessionState.JOINED:
            self._leave_reason = KICKED
        self._close()

    def _close(self):
        if not self.closed:
            self._transport.finish()
