"""The MC's calls to the Global Controller over grpcio, as Twisted Deferreds,
in either dialect.

``MC_GC_API``: ``v1`` calls ``/dark_tower.internal.v1.GlobalControllerService/...``,
``legacy`` ``/dark_tower.internal.GlobalControllerService/...``. ``auto``
starts in v1 and then speaks the dialect that last worked; a call answered
UNIMPLEMENTED (the other dialect's GC) is retried at once in the other one.
Behind one GC address a fleet being upgraded mixes both, call by call, and
the MC follows without a restart.

grpcio completes calls on its own threads; the only way a result gets back to
the reactor is ``reactor.callFromThread``, so the reactor never blocks on the
network and no Twisted object is touched off the reactor thread.
"""

import grpc
from twisted.internet import defer
from zope.interface import implementer

from mc.errors import GcCallError
from mc.grpcfuture import deferred_from_future
from mc.interfaces import IGcClient
from mc.proto import gc_mc_legacy_pb2_grpc, gc_mc_pb2_grpc
from mc.tracing import current_metadata

V1 = "v1"
LEGACY = "legacy"
DIALECTS = (V1, LEGACY)
_STUBS = {V1: gc_mc_pb2_grpc.GlobalControllerServiceStub,
          LEGACY: gc_mc_legacy_pb2_grpc.GlobalControllerServiceStub}
_OTHER = {V1: LEGACY, LEGACY: V1}


def read_ca_file(path):
    """The CA bundle's bytes (read once, at construction), or None for the system roots."""
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


#: grpc's reconnect backoff grows to 120 s by default, and while it waits every
#: call fails at once: a GC back from a restart would hear from us only then.
#: Capped well below the fast-heartbeat interval, the next heartbeat reaches it.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 500),
)


def make_channel(config):
    """A plaintext channel for http:// and a TLS one for https:// GC URLs."""
    if config.gc_tls:
        creds = grpc.ssl_channel_credentials(root_certificates=read_ca_file(config.gc_ca_file))
        return grpc.secure_channel(config.gc_target, creds, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(config.gc_target, options=CHANNEL_OPTIONS)


@implementer(IGcClient)
class GrpcGcClient:
    """``IGcClient`` over one grpc channel; every call carries the service
    token of ``identity`` (IServiceIdentity) and a deadline of ``deadline``
    seconds. ``api``: ``auto``, ``v1`` or ``legacy`` (see the module).
    ``on_call(method, dialect, outcome)`` counts every attempt (``ok`` or
    the status code name; ``NO_TOKEN`` for a call never sent)."""

    def __init__(self, config, identity, reactor, deadline=10.0, on_call=None):
        self._reactor = reactor
        self._deadline = deadline
        self._target = config.gc_target
        self._identity = identity
        self._auto = config.gc_api == "auto"
        self.dialect = V1 if self._auto else config.gc_api
        self._channel = make_channel(config)
        self._stubs = {dialect: stub(self._channel) for dialect, stub in _STUBS.items()}
        self._on_call = on_call

    def __repr__(self):
        return f"<GrpcGcClient target={self._target!r} dialect={self.dialect}>"

    def register(self, request):
        return self._call("RegisterMC", request)

    def fast_heartbeat(self, request):
        return self._call("FastHeartbeat", request)

    def comprehensive_heartbeat(self, request):
        return self._call("ComprehensiveHeartbeat", request)

    def notify_meeting_ended(self, request):
        return self._call("NotifyMeetingEnded", request)

    def close(self):
        self._channel.close()

    def _count(self, method, dialect, outcome):
        if self._on_call is not None:
            self._on_call(method, dialect, outcome)

    def _call(self, method, request):
        """One call in the current dialect, and in auto mode the same call
        once more in the other when the first is answered UNIMPLEMENTED."""
        d = defer.Deferred(lambda _d: attempt.cancel())
        attempt = self._attempt(method, request, self.dialect)

        def retry_other(failure):
            err = failure.value
            if (self._auto and isinstance(err, GcCallError) and err.code == "UNIMPLEMENTED"
                    and err.dialect is not None):
                nonlocal attempt
                attempt = self._attempt(method, request, _OTHER[err.dialect])
                return attempt
            return failure

        def deliver(result, ok):
            if not d.called:  # a cancelled Deferred has failed already
                (d.callback if ok else d.errback)(result)

        attempt.addErrback(retry_other)
        attempt.addCallbacks(deliver, deliver, callbackArgs=(True,), errbackArgs=(False,))
        return d

    def _attempt(self, method, request, dialect):
        metadata = self._identity.metadata()
        if metadata is None:
            self._count(method, "none", "NO_TOKEN")
            return defer.fail(GcCallError(method, "UNAUTHENTICATED", "no service token"))
        # A call made within a span (a heartbeat an assignment nudged) carries its trace.
        future = getattr(self._stubs[dialect], method).future(
            request, timeout=self._deadline, metadata=tuple(metadata) + current_metadata())
        d = deferred_from_future(
            self._reactor, future,
            lambda code, details: GcCallError(method, code, details, dialect))
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(method, dialect),
                       errbackArgs=(method, dialect))
        return d

    def _succeeded(self, response, method, dialect):
        self._count(method, dialect, "ok")
        self.dialect = dialect
        return response

    def _failed(self, failure, method, dialect):
        failure.trap(GcCallError)
        self._count(method, dialect, failure.value.code)
        return failure
