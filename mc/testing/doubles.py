"""In-memory doubles for Clock-driven tests of the MC's services."""

from collections import deque

from twisted.internet import defer
from zope.interface import implementer

from mc.ac.service_tokens import ServiceTokenCheck
from mc.errors import GcCallError, InvalidToken, MhCallError, NoJwks
from mc.gc.auth import TokenCheck
from mc.interfaces import (
    IGcClient,
    IJwksKeys,
    IMhClient,
    ISessionTransport,
    ISystemProbe,
    ITokenVerifier,
)
from mc.participants.session_state import SessionLife, SessionState
from mc.proto import gc_mc_pb2 as pb
from mc.proto import media_pb2


@implementer(IGcClient)
class ScriptedGcClient:
    """Records every call; each answer comes from a queue of scripted
    outcomes per method, or the default (accept / acknowledge).

    An outcome is a response message, a ``GcCallError``, or ``"hold"`` to
    return a Deferred the test fires itself (see ``held``).
    """

    METHODS = ("register", "fast_heartbeat", "comprehensive_heartbeat",
               "notify_meeting_ended")

    def __init__(self, clock=None):
        self.clock = clock
        self.dialect = "v1"
        self.calls = []
        self.scripts = {m: deque() for m in self.METHODS}
        self.held = []
        self.closed = False

    def script(self, method, *outcomes):
        self.scripts[method].extend(outcomes)

    def requests(self, method):
        return [req for m, req, _ in self.calls if m == method]

    def times(self, method):
        return [t for m, _, t in self.calls if m == method]

    def _default(self, method):
        if method == "register":
            return pb.RegisterMCResponse(accepted=True, fast_heartbeat_interval_ms=10000,
                                         comprehensive_heartbeat_interval_ms=30000)
        if method == "notify_meeting_ended":
            return pb.NotifyMeetingEndedResponse(acknowledged=True)
        if method == "fast_heartbeat":
            return pb.FastHeartbeatResponse(acknowledged=True, timestamp=1)
        return pb.ComprehensiveHeartbeatResponse(acknowledged=True, timestamp=1)

    def _call(self, method, request):
        assert not self.closed, "call after close"
        self.calls.append((method, request, self.clock.seconds() if self.clock else None))
        q = self.scripts[method]
        outcome = q.popleft() if q else self._default(method)
        if outcome == "hold":
            d = defer.Deferred()
            self.held.append((method, d))
            return d
        if isinstance(outcome, GcCallError):
            return defer.fail(outcome)
        return defer.succeed(outcome)

    def register(self, request):
        return self._call("register", request)

    def fast_heartbeat(self, request):
        return self._call("fast_heartbeat", request)

    def comprehensive_heartbeat(self, request):
        return self._call("comprehensive_heartbeat", request)

    def notify_meeting_ended(self, request):
        return self._call("notify_meeting_ended", request)

    def close(self):
        self.closed = True


def gc_error(method, code, details="scripted"):
    return GcCallError(method, code, details)


@implementer(ISystemProbe)
class FixedProbe:
    """A probe whose readings the test sets."""

    def __init__(self, cpu=5.0, memory=20.0):
        self.cpu = cpu
        self.memory = memory

    def cpu_percent(self):
        return self.cpu

    def memory_percent(self):
        return self.memory


@implementer(ITokenVerifier)
class TableTokenVerifier:
    """Meeting tokens from a table: ``tokens[token] = claims``; a token not in
    it is invalid, and so is one whose ``meeting_id`` claim differs. With
    ``ready=False`` every verify fails as if no JWKS was ever loaded; with
    ``hold=True`` verifies wait for ``release()``."""

    def __init__(self, tokens=None, ready=True):
        self.tokens = dict(tokens or {})
        self.ready = ready
        self.hold = False
        self.held = []

    def add(self, token, meeting_id, sub, **claims):
        """A valid token; its ``jti`` is the token itself unless given."""
        self.tokens[token] = {"sub": sub, "meeting_id": meeting_id, "token_type": "meeting",
                              "jti": token, **claims}

    def age(self):
        return 0.0 if self.ready else None

    def verify(self, token, meeting_id):
        d = defer.Deferred()
        self.held.append((d, self._outcome(token, meeting_id)))
        if not self.hold:
            self.release()
        return d

    def release(self):
        """Answer every held verify."""
        held, self.held = self.held, []
        for d, outcome in held:
            if isinstance(outcome, Exception):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def _outcome(self, token, meeting_id):
        if not self.ready:
            return NoJwks()
        claims = self.tokens.get(token)
        if claims is None or claims["meeting_id"] != meeting_id:
            return InvalidToken("not in the table")
        return dict(claims)


@implementer(ISessionTransport)
class RecordingTransport:
    """A session transport that records what signalling writes, moves the
    real ``SessionLife`` as the real one does, and tells the handler of its
    end the way the real one does (exactly once). ``writable`` False plays a
    client that stopped the stream (STOP_SENDING): the next write loses the
    session."""

    def __init__(self, handler=None, peer=("127.0.0.1", 50000)):
        self.handler = handler
        self.peer = peer
        self.life = SessionLife()
        self.join_within = None
        self.buffered = 0
        self.written = []
        self.writable = True
        self.finished = False
        self.aborted = False
        self.is_joined = False

    @property
    def state(self):
        return self.life.state

    @property
    def stream_open(self):
        return self.life.state is not SessionState.CONNECT

    def open_stream(self):
        self.life.move(SessionState.AWAITING_JOIN)

    def joining(self):
        self.life.move(SessionState.JOINING)

    def joined(self):
        self.life.move(SessionState.JOINED)
        self.is_joined = True

    def write(self, data):
        if not self.life.live:
            return
        if not self.writable:
            self.abort()
            return
        self.written.append(bytes(data))

    def finish(self):
        self._end(True)

    def abort(self):
        self._end(False)

    def _end(self, clean):
        if not self.life.live:
            return
        self.life.move(SessionState.CLOSED)
        self.finished, self.aborted = clean, not clean
        if self.handler is not None:
            self.handler.session_closed(clean)


@implementer(IMhClient)
class ScriptedMhClient:
    """Records every RegisterMeeting ``(grpc_url, request, metadata, time)``;
    each answers from a queue of scripted outcomes per URL, or accepts. An
    outcome is ``True`` / ``False`` (accepted), an ``MhCallError`` code name
    (``"UNAVAILABLE"``), or ``"hold"`` for a Deferred the test fires (``held``)."""

    def __init__(self, clock):
        self.clock = clock
        self.calls = []
        self.scripts = {}
        self.held = []
        self.closed = False

    def script(self, grpc_url, *outcomes):
        self.scripts.setdefault(grpc_url, deque()).extend(outcomes)

    def register_meeting(self, grpc_url, request, metadata):
        self.calls.append((grpc_url, request, dict(metadata), self.clock.seconds()))
        queue = self.scripts.get(grpc_url)
        outcome = queue.popleft() if queue else True
        if outcome == "hold":
            d = defer.Deferred()
            self.held.append(d)
            return d
        if isinstance(outcome, str):
            return defer.fail(MhCallError("RegisterMeeting", outcome, "scripted"))
        return defer.succeed(media_pb2.RegisterMeetingResponse(accepted=outcome))

    def close(self):
        self.closed = True

@implementer(IJwksKeys)
class NoKeys:
    """A key set that knows no key and never fetches one: only static
    tokens can pass a check built on it."""

    def key(self, kid):
        return None

    def refetch(self):
        return defer.succeed(None)


def static_token_check(tokens, reactor):
    """The gRPC server's check accepting exactly the static GC ``tokens``
    (Secrets) on MeetingControllerService, as an MC without JWTs would."""
    return ServiceTokenCheck(NoKeys(), reactor, 5.0, static=TokenCheck(tokens))
