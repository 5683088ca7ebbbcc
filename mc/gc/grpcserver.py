"""The MC's grpcio server as a Twisted service: MeetingControllerService under
both packages (``dark_tower.internal.v1`` and the legacy
``dark_tower.internal``) on the one port, and the other services added with
``add_handlers`` (the media handlers' MediaCoordinationService).

Every call, to any path, first passes the authorizer (``ICallAuthorizer``:
``mc.ac.service_tokens``) in a server interceptor, so no servicer can be
reached without its check and an unknown path is refused like a bad token.

grpcio runs each call on a worker thread of its own pool. A worker checks the
token and validates the request by itself (pure code), then hands the call to
the reactor with ``reactor.callFromThread`` and waits on a
``concurrent.futures.Future`` that the assignment's Deferred completes on the
reactor thread. The wait is bounded by the call's deadline (or ``max_wait``),
so a stuck dependency cannot pin worker threads; the worker never touches a
Twisted object itself.

With TLS, grpc asks ``_thd_next_certificates`` before each new connection's
handshake, so a certificate rotated by SIGHUP serves new connections while
those open keep theirs.
"""

import concurrent.futures
import contextlib
import threading
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from mc.ac.service_tokens import OK, STATUS
from mc.assignment import AT_CAPACITY, DRAINING, UNHEALTHY, InvalidAssignment, validate_assignment
from mc.errors import ConfigError, KeyMismatch
from mc.proto import gc_mc_legacy_pb2
from mc.proto import gc_mc_pb2 as pb
from mc.tracing import SERVER, metadata_context

REASONS = {
    None: pb.REJECTION_REASON_UNSPECIFIED,
    AT_CAPACITY: pb.REJECTION_REASON_AT_CAPACITY,
    DRAINING: pb.REJECTION_REASON_DRAINING,
    UNHEALTHY: pb.REJECTION_REASON_UNHEALTHY,
}

#: MeetingControllerService's names in the v1 and the legacy dialect: both are
#: served on the one port, by the same handler.
SERVICES = tuple(module.DESCRIPTOR.services_by_name["MeetingControllerService"].full_name
                 for module in (pb, gc_mc_legacy_pb2))

#: Calls admitted (running or queued for a worker) per worker thread; beyond
#: that grpcio answers RESOURCE_EXHAUSTED, which the GC treats as unavailable.
QUEUE_PER_WORKER = 16
#: Seconds between two warnings about rejected tokens.
AUTH_WARNING_SPACING = 10.0

CERT_SETTING = "MC_GRPC_TLS_CERT_PATH"
KEY_SETTING = "MC_GRPC_TLS_KEY_PATH"
CLIENT_CA_SETTING = "MC_GRPC_TLS_CLIENT_CA_PATH"


def _read_pem(setting, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(setting, f"cannot read {path}: {e.strerror}") from None


def _pem_certificates(setting, path, pem):
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(setting, f"{path} holds no PEM certificate") from None


def _spki(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class ServerTls:
    """The gRPC server's PEM files and, for mutual TLS, the CA bundle the
    GC's client certificate must chain to; read at start and on SIGHUP."""

    cert_path: str
    key_path: str
    client_ca_path: str = None

    @property
    def mutual(self):
        return self.client_ca_path is not None

    def load(self):
        """grpc's certificate configuration from the files, or ConfigError
        naming the setting at fault (never the key's content). Checked here
        because grpc would take a bad pair and fail every handshake.
        Blocking: call it at start-up or on a thread."""
        chain = _read_pem(CERT_SETTING, self.cert_path)
        key = _read_pem(KEY_SETTING, self.key_path)
        leaf = _pem_certificates(CERT_SETTING, self.cert_path, chain)[0]
        try:
            private_key = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(
                KEY_SETTING, f"{self.key_path} holds no unencrypted PEM private key") from None
        if _spki(private_key.public_key()) != _spki(leaf.public_key()):
            raise KeyMismatch(KEY_SETTING, f"{self.key_path} is not the key of {self.cert_path}")
        client_ca = None
        if self.mutual:
            client_ca = _read_pem(CLIENT_CA_SETTING, self.client_ca_path)
            _pem_certificates(CLIENT_CA_SETTING, self.client_ca_path, client_ca)
        return grpc.ssl_server_certificate_configuration([(key, chain)],
                                                         root_certificates=client_ca)


def authorizations(metadata):
    """Every ``authorization`` value of a call's metadata (two are refused,
    whichever one a proxy would have looked at)."""
    return [v for k, v in metadata or () if k == "authorization"]


class _Authorizing(grpc.ServerInterceptor):
    """Runs the server's current authorizer on every call before its
    handler; a refused call gets the generic status of its outcome."""

    def __init__(self, server):
        self._server = server

    def intercept_service(self, continuation, handler_call_details):
        path = handler_call_details.method
        outcome = self._server.authorizer.thd_authorize(
            path, authorizations(handler_call_details.invocation_metadata))
        if outcome == OK:
            return continuation(handler_call_details)
        self._server.thd_refused(path, outcome)
        code, message = STATUS[outcome]

        def refuse(_request, context):
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(refuse)


def thd_valid_assignments(request, context, max_message_bytes):
    """The request's ``(mh_id, webtransport_endpoint, grpc_endpoint)`` tuples once its size
    and fields pass; otherwise the call is aborted with INVALID_ARGUMENT
    naming the field (``context.abort`` raises)."""
    size = request.ByteSize()
    if size > max_message_bytes:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"request: {size} bytes, more than {max_message_bytes}")
    mh = tuple((a.mh_id, a.webtransport_endpoint, a.grpc_endpoint)
               for a in request.mh_assignments)
    try:
        validate_assignment(request.meeting_id, mh)
    except InvalidAssignment as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    return mh


class GrpcServerService(Service):
    """Serves AssignMeetingWithMh on ``listen_address`` (``host:port``; port
    0 picks one, then ``port`` holds it) until stopped; stopping gives calls
    in flight ``grace`` seconds.

    Requests above ``max_message_bytes`` are INVALID_ARGUMENT (a field-named
    answer, like every other contract violation); grpcio itself refuses
    anything above twice that before it is even parsed. ``tls``: a
    ServerTls, or None for plaintext."""

    name = "grpc"
    log = Logger()

    def __init__(self, listen_address, assignment, authorizer, reactor, max_workers=8,
                 grace=5.0, max_message_bytes=64 * 1024, max_wait=10.0, tls=None, tracing=None):
        self._address = str(listen_address)
        #: mc.tracing.Tracing: an assignment continues the GC's traceparent.
        self._tracing = tracing
        self._tls = tls
        self._certificates_lock = threading.Lock()
        self._next_certificates = None  # read by grpc's threads, under the lock
        self._assignment = assignment
        #: ICallAuthorizer; read once per call by the interceptor.
        self.authorizer = authorizer
        self._handlers = []
        self._reactor = reactor
        self._max_workers = max_workers
        self._grace = grace
        self._max_message_bytes = max_message_bytes
        self._max_wait = max_wait
        self._server = None
        self._executor = None
        self._last_auth_warning = None
        self.port = None

    def __repr__(self):
        return f"<GrpcServerService {self._address} port={self.port}>"

    def startService(self):
        credentials = None
        if self._tls is not None:
            # Read before anything starts: a bad file stops start-up, named.
            credentials = grpc.dynamic_ssl_server_credentials(
                self._tls.load(), self._thd_next_certificates,
                require_client_authentication=self._tls.mutual)
        executor = concurrent.futures.ThreadPoolExecutor(self._max_workers,
                                                         thread_name_prefix="mc-grpc")
        transport_limit = 2 * self._max_message_bytes
        server = grpc.server(
            executor,
            options=[
                ("grpc.max_receive_message_length", transport_limit),
                ("grpc.max_send_message_length", transport_limit),
                # Two MCs on one port must fail loudly, not share it.
                ("grpc.so_reuseport", 0),
                # A legal 8192-byte token plus the usual headers passes gRPC's
                # default 8 KiB metadata limit, which refuses such calls at random.
                ("grpc.max_metadata_size", 64 * 1024),
                ("grpc.absolute_max_metadata_size", 64 * 1024),
            ],
            maximum_concurrent_rpcs=self._max_workers * QUEUE_PER_WORKER,
            interceptors=(_Authorizing(self),),
        )
        # The request arrives as bytes and is parsed in thd_assign, so that bytes
        # that are no request get INVALID_ARGUMENT rather than grpc's INTERNAL.
        server.add_generic_rpc_handlers(tuple(grpc.method_handlers_generic_handler(service, {
            "AssignMeetingWithMh": grpc.unary_unary_rpc_method_handler(
                self.thd_assign,
                response_serializer=pb.AssignMeetingWithMhResponse.SerializeToString),
        }) for service in SERVICES))
        if self._handlers:
            server.add_generic_rpc_handlers(tuple(self._handlers))
        try:
            port = (server.add_insecure_port(self._address) if credentials is None
                    else server.add_secure_port(self._address, credentials))
        except RuntimeError:
            port = 0
        if not port:
            executor.shutdown(wait=False)
            raise CannotListenError(self._address, 0, "the gRPC server could not bind")
        server.start()
        self._server, self._executor, self.port = server, executor, port
        super().startService()
        security = "plaintext" if self._tls is None else \
            "mutual TLS" if self._tls.mutual else "TLS"
        self.log.info("gRPC server listening on {address} (port {port}, {security})",
                      address=self._address, port=port, security=security)

    def add_handlers(self, *handlers):
        """Serve more services (grpc GenericRpcHandlers) from the next start
        on; their calls pass the same authorizer."""
        self._handlers.extend(handlers)

    def use_authorizer(self, authorizer):
        """Calls that arrive from now on are checked by ``authorizer`` (the
        static tokens were rotated); a worker reads it once per call, and
        calls past their check are not affected."""
        self.authorizer = authorizer

    def use_certificates(self, configuration):
        """Serve new connections with ``configuration`` (``ServerTls.load``);
        those open keep the certificate they were opened with."""
        with self._certificates_lock:
            self._next_certificates = configuration

    def stopService(self):
        """Stop accepting calls and give those in flight ``grace`` seconds;
        fires once the server has really stopped (waited for in a thread, so
        the reactor keeps serving the calls being finished)."""
        super().stopService()
        server, executor = self._server, self._executor
        self._server = self._executor = None
        if server is None:
            return defer.succeed(None)
        stopped = server.stop(self._grace)
        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                      stopped.wait, self._grace + 5.0)

        def done(_):
            executor.shutdown(wait=False)
            self.log.info("gRPC server stopped")

        return d.addCallback(done)

    # --- grpc worker threads ----------------------------------------------

    def _thd_next_certificates(self):
        """grpc's question before each new connection's handshake: a new
        configuration, once, or None for no change."""
        with self._certificates_lock:
            configuration, self._next_certificates = self._next_certificates, None
        return configuration

    def thd_refused(self, path, outcome):
        """A call was refused by the authorizer: warn, rate-limited, on the reactor."""
        self._reactor.callFromThread(self._auth_failed, path, outcome)

    def thd_assign(self, raw, context):
        try:
            request = pb.AssignMeetingWithMhRequest.FromString(raw)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "request: not an AssignMeetingWithMhRequest")
        mh = thd_valid_assignments(request, context, self._max_message_bytes)
        remaining = context.time_remaining()
        timeout = self._max_wait if remaining is None else min(remaining, self._max_wait)
        if timeout <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before handling")
        try:
            accepted, reason = self._thd_on_reactor(
                request.meeting_id, mh, request.requesting_gc_id, timeout,
                metadata_context(context.invocation_metadata()))
        except concurrent.futures.TimeoutError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no decision before the deadline")
        except Exception:
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return pb.AssignMeetingWithMhResponse(accepted=accepted, rejection_reason=REASONS[reason])

    def _thd_on_reactor(self, meeting_id, mh, gc_id, timeout, trace_parent=None):
        """Run ``assign`` on the reactor, in a span of the MC's under
        ``trace_parent`` (the GC's trace context, or None), and wait at most
        ``timeout`` seconds for its answer; on timeout the Deferred is
        cancelled (on the reactor)."""
        future = concurrent.futures.Future()
        calls = []  # touched only on the reactor thread

        def start():
            if not future.set_running_or_notify_cancel():
                return  # the worker gave up before the reactor got here
            try:
                with self._traced(trace_parent) as span:
                    d = self._assignment.assign(meeting_id, mh, gc_id)
            except Exception as e:
                self.log.failure("assign of meeting {meeting_id} raised", meeting_id=meeting_id,
                                 gc_id=gc_id)
                future.set_exception(e)
                return
            calls.append(d)
            if span is not None:
                d.addBoth(lambda result: (span.end(), result)[1])
            d.addCallbacks(future.set_result, failed)

        def failed(failure):
            if not failure.check(defer.CancelledError):
                self.log.failure("assign of meeting {meeting_id} failed", failure=failure,
                                 meeting_id=meeting_id, gc_id=gc_id)
            future.set_exception(failure.value)

        def cancel():
            for d in calls:
                d.cancel()

        self._reactor.callFromThread(start)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if not future.cancel():
                self._reactor.callFromThread(cancel)
            raise

    # --- reactor thread ---------------------------------------------------

    def _traced(self, parent):
        """The assignment's span (ended by the caller), current within the
        block: its log lines and the calls it causes carry the trace id."""
        if self._tracing is None:
            return contextlib.nullcontext()
        return self._tracing.span("AssignMeetingWithMh", parent, SERVER, end=False)

    def _auth_failed(self, path, outcome):
        now = self._reactor.seconds()
        if self._last_auth_warning is None or now - self._last_auth_warning >= \
                AUTH_WARNING_SPACING:
            self._last_auth_warning = now
            self.log.warn("refused a call to {path}: {outcome} (missing, invalid or "
                          "unauthorized service token)", path=path[:200], outcome=outcome)
