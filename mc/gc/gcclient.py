"""The MC's calls to the Global Controller over grpcio, as Twisted Deferreds.

grpcio completes calls on its own threads; the only way a result gets back to
the reactor is ``reactor.callFromThread``, so the reactor never blocks on the
network and no Twisted object is touched off the reactor thread.
"""

import grpc
from twisted.internet import defer
from zope.interface import implementer

from mc.errors import GcCallError
from mc.interfaces import IGcClient
from mc.proto import gc_mc_legacy_pb2_grpc


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
    """``IGcClient`` over one grpc channel; every call carries the bearer token
    and a deadline of ``deadline`` seconds."""

    def __init__(self, config, reactor, deadline=10.0):
        self._reactor = reactor
        self._deadline = deadline
        self._target = config.gc_target
        # Kept only inside the metadata tuple, which never reaches a repr or log.
        self._metadata = (("authorization", "Bearer " + config.service_token.reveal()),)
        self._channel = make_channel(config)
        self._stub = gc_mc_legacy_pb2_grpc.GlobalControllerServiceStub(self._channel)

    def __repr__(self):
        return f"<GrpcGcClient target={self._target!r}>"

    def use_service_token(self, token):
        """Calls made from now on carry ``token`` (a Secret; it was rotated);
        calls in flight keep the one they were sent with."""
        self._metadata = (("authorization", "Bearer " + token.reveal()),)

    def register(self, request):
        return self._call("RegisterMC", self._stub.RegisterMC, request)

    def fast_heartbeat(self, request):
        return self._call("FastHeartbeat", self._stub.FastHeartbeat, request)

    def comprehensive_heartbeat(self, request):
        return self._call("ComprehensiveHeartbeat", self._stub.ComprehensiveHeartbeat, request)

    def notify_meeting_ended(self, request):
        return self._call("NotifyMeetingEnded", self._stub.NotifyMeetingEnded, request)

    def close(self):
        self._channel.close()

    def _call(self, method, multicallable, request):
        future = multicallable.future(
            request, timeout=self._deadline, metadata=self._metadata
        )
        d = defer.Deferred(lambda _d: future.cancel())

        def deliver(outcome, is_error):
            # A cancelled Deferred has already failed with CancelledError.
            if d.called:
                return
            if is_error:
                d.errback(outcome)
            else:
                d.callback(outcome)

        def thd_done(fut):
            if fut.cancelled():
                return
            try:
                outcome, is_error = fut.result(), False
            except grpc.RpcError as e:
                outcome, is_error = GcCallError(method, e.code().name, e.details() or ""), True
            except Exception as e:  # anything else must still reach the reactor
                outcome, is_error = GcCallError(method, "UNKNOWN", type(e).__name__), True
            self._reactor.callFromThread(deliver, outcome, is_error)

        future.add_done_callback(thd_done)
        return d
