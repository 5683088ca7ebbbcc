"""In-memory doubles for Clock-driven tests of the MC's services."""

from collections import deque

from twisted.internet import defer
from zope.interface import implementer

from mc.errors import GcCallError, InvalidToken, NoJwks
from mc.interfaces import IGcClient, ISessionTransport, ISystemProbe, ITokenVerifier
from mc.proto import gc_mc_pb2 as pb


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
        self.tokens[token] = {"sub": sub, "meeting_id": meeting_id, "token_type": "meeting",
                              **claims}

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
    """A session transport that records what signalling writes and tells the
    handler of its end the way the real one does (exactly once)."""

    def __init__(self, handler=None, peer=("127.0.0.1", 50000)):
        self.handler = handler
        self.peer = peer
        self.stream_open = False
        self.buffered = 0
        self.written = []
        self.finished = False
        self.aborted = False
        self.is_joined = False

    def joined(self):
        self.is_joined = True

    def write(self, data):
        if not (self.finished or self.aborted):
            self.written.append(bytes(data))

    def finish(self):
        self._end(True)

    def abort(self):
        self._end(False)

    def _end(self, clean):
        if self.finished or self.aborted:
            return
        self.finished, self.aborted = clean, not clean
        if self.handler is not None:
            self.handler.session_closed(clean)
