"""In-memory doubles for Clock-driven tests of the MC's services."""

from collections import deque

from twisted.internet import defer
from zope.interface import implementer

from mc.errors import GcCallError
from mc.interfaces import IGcClient, ISystemProbe
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
        return pb.HeartbeatResponse(acknowledged=True, timestamp=1)

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
