"""FakeGc: a real grpcio GlobalControllerService on localhost, for tests and the demo.

It enforces the wire contract's auth and validation rules the way the deployed
GC does, records every request it answers, and can be scripted (rejections,
NOT_FOUND, UNAVAILABLE, delays, restarts) from any thread.

It speaks either dialect (``dialect``: ``legacy``, ``v1`` or ``both``) and
can change it while it runs (``set_dialect``: a legacy GC upgraded to v1 on
the same address, and back); a path of the dialect it does not speak gets
UNIMPLEMENTED, as from a real GC. With ``ac`` (an ``AcDouble``) it checks
the MC's service tokens as a v1 GC does (signature, expiry, scope
``service.write.gc``, ``service_type`` ``meeting-controller``) beside any
static ``tokens``, and its AssignMeetingWithMh calls carry a GC token from
that AC. It also plays the
GC's client side (``assign_meeting``) against an MC, and the GC's join flow
(``FakeGc.join``): it places meetings on registered MCs the way the deployed
GC does and hands out meeting tokens from its own ``TokenIssuer``, whose JWKS
it serves over HTTP while it runs.

    python -m mc.testing.fakegc --listen 127.0.0.1:50051 --token-file F [--jwks-file J]
        [--dialect legacy|v1|both]

runs one in the foreground, printing one JSON line per request to stdout.
"""

import argparse
import hmac
import json
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format

from mc.proto import gc_mc_legacy_pb2_grpc, gc_mc_pb2, gc_mc_pb2_grpc
from mc.testing.issuer import TokenIssuer

# The contract's rules, written out here rather than imported from mc.config
# so that the fake checks the MC instead of agreeing with it.
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_REGION_CHARS = 50
MAX_URL_CHARS = 255
MAX_UINT31 = 2**31 - 1
MAX_TOKEN_BYTES = 8192
BEARER = "Bearer "
DEFAULT_FAST_MS = 10000
DEFAULT_COMPREHENSIVE_MS = 30000
#: An MC whose last heartbeat is this old is silent: the GC no longer uses it.
DEFAULT_STALE_AFTER = 30.0
DEFAULT_MH_ASSIGNMENTS = (("mh-1", "https://mh-1.example:4433", ""),)

LEGACY, V1, BOTH = "legacy", "v1", "both"
_GRPC_MODULES = {LEGACY: gc_mc_legacy_pb2_grpc, V1: gc_mc_pb2_grpc}
#: What a v1 GC requires of the MC's service token.
GC_SCOPE = "service.write.gc"
MC_SERVICE_TYPE = "meeting-controller"

REGISTER = "RegisterMC"
FAST = "FastHeartbeat"
COMPREHENSIVE = "ComprehensiveHeartbeat"
NOTIFY_ENDED = "NotifyMeetingEnded"
HEARTBEAT_METHODS = {"fast": FAST, "comprehensive": COMPREHENSIVE}

SERVER_OPTIONS = (
    # No SO_REUSEPORT: a second server on the same port must fail, not share it.
    ("grpc.so_reuseport", 0),
    # grpc's default metadata limit is a soft 8 KiB past which calls are randomly
    # refused with RESOURCE_EXHAUSTED; a legal 8192-byte token plus the other
    # headers exceeds it, so raise both limits well above the contract's maximum.
    ("grpc.max_metadata_size", 64 * 1024),
    ("grpc.absolute_max_metadata_size", 64 * 1024),
)


@dataclass(frozen=True)
class Recorded:
    """One request the fake answered; ``status`` is ``"OK"`` or a StatusCode name."""

    method: str
    request: object
    metadata: dict = field(repr=False)
    monotonic: float
    wall: float
    status: str
    details: str = ""
    #: ``v1`` or ``legacy``: the package of the path called.
    dialect: str = LEGACY

    def __repr__(self):
        # The metadata holds the bearer token, so it is left out.
        return (
            f"Recorded({self.method}, {self.dialect}, status={self.status}, "
            f"request={json_format.MessageToDict(self.request, preserving_proto_field_name=True)})"
        )


@dataclass(frozen=True)
class _Heard:
    """An MC's last accepted heartbeat, as the join flow judges it."""

    health: int
    current_meetings: int
    max_meetings: int
    monotonic: float


@dataclass(frozen=True)
class Join:
    """What the GC's join flow hands a client: where to go and the token."""

    meeting_id: str
    mc_id: str
    webtransport_endpoint: str
    token: str = field(repr=False)
    #: True when this join made an AssignMeetingWithMh call (a new placement).
    assigned: bool


class NoMcAvailable(Exception):
    """No registered MC is HEALTHY, heard from recently, with room, and
    willing to take the meeting; ``tried`` maps each MC asked to its answer."""

    def __init__(self, meeting_id, tried):
        answers = ", ".join(f"{mc_id}: {why}" for mc_id, why in tried.items()) or "none eligible"
        super().__init__(f"no MC for meeting {meeting_id} ({answers})")
        self.meeting_id = meeting_id
        self.tried = tried


class _Reject(Exception):
    """Ends a request with a gRPC status."""

    def __init__(self, code, details):
        super().__init__(details)
        self.code = code
        self.details = details


def _check_id(name, value):
    if not ID_RE.fullmatch(value):
        raise _Reject(grpc.StatusCode.INVALID_ARGUMENT,
                      f"{name}: 1-255 letters, digits, '-' or '_'")


def _check_region(value):
    if not value or len(value) > MAX_REGION_CHARS:
        raise _Reject(grpc.StatusCode.INVALID_ARGUMENT,
                      f"region: 1-{MAX_REGION_CHARS} characters")


def _check_url(name, value):
    if (not value or len(value) > MAX_URL_CHARS
            or not value.startswith(("http://", "https://"))):
        raise _Reject(grpc.StatusCode.INVALID_ARGUMENT,
                      f"{name}: an http:// or https:// URL of at most {MAX_URL_CHARS} characters")


def _check_count(name, value):
    if not 0 < value <= MAX_UINT31:
        raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: 1-{MAX_UINT31}")


def _status_code(code):
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode[code]


def _servicer(dialect):
    """The servicer class of one dialect's GlobalControllerService."""

    class Servicer(_GRPC_MODULES[dialect].GlobalControllerServiceServicer):
        """One server generation's servicer; ``stopping`` cuts its delays short."""

        def __init__(self, fake, stopping):
            self._fake = fake
            self._stopping = stopping

        def RegisterMC(self, request, context):
            return self._fake._thd_answer(REGISTER, request, context, self._stopping, dialect)

        def FastHeartbeat(self, request, context):
            return self._fake._thd_answer(FAST, request, context, self._stopping, dialect)

        def ComprehensiveHeartbeat(self, request, context):
            return self._fake._thd_answer(COMPREHENSIVE, request, context, self._stopping,
                                          dialect)

        def NotifyMeetingEnded(self, request, context):
            return self._fake._thd_answer(NOTIFY_ENDED, request, context, self._stopping,
                                          dialect)

    return Servicer


_SERVICERS = {dialect: _servicer(dialect) for dialect in _GRPC_MODULES}


class FakeGc:
    """A scriptable GC on ``host:port`` (port 0 picks one, kept across restarts).

    ``tokens``: the static bearer tokens it accepts (a str or an iterable of
    str; may be empty with ``ac``). ``ac``: an AcDouble whose service tokens
    it accepts as a v1 GC does, and mints its own from. ``dialect``: the
    packages it serves (``legacy``, ``v1`` or ``both``; ``set_dialect``).
    ``tls``: ``(cert_pem, key_pem)`` bytes to serve TLS (then ``url`` is https://).
    ``on_request``: called with each ``Recorded`` from a grpc thread.
    ``mc_token``: the bearer token sent with AssignMeetingWithMh (None: no header).
    ``issuer``: the TokenIssuer of join tokens (default a new one); its JWKS
    is served at ``jwks_url`` while the fake runs. ``stale_after``: seconds
    after its last heartbeat an MC counts as silent. ``assign_timeout``: the
    deadline of each AssignMeetingWithMh the join flow makes.
    ``placeable``: the health values an MC may report and still get meetings;
    the deployed GC's is HEALTHY alone, and tests on a busy machine (where a
    host CPU sample over 90 % makes an MC DEGRADED) may add DEGRADED.
    """

    def __init__(self, tokens, host="127.0.0.1", port=0, tls=None, max_workers=16,
                 on_request=None, mc_token=None, issuer=None, stale_after=DEFAULT_STALE_AFTER,
                 assign_timeout=5.0, placeable=(gc_mc_pb2.HEALTHY,), ac=None, dialect=LEGACY):
        tokens = (tokens,) if isinstance(tokens, str) else tuple(tokens)
        self._tokens = tuple(t.encode() for t in tokens)
        self.ac = ac
        self._dialect = self._check_dialect(dialect)
        self._unserved = {LEGACY: 0, V1: 0}
        self.host = host
        self.port = port
        self._tls = tls
        self._max_workers = max_workers
        self._on_request = on_request
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records = []
        self._registered = {}
        self._reject_message = None
        self._heartbeat_failures = []
        self._unavailable = False
        self._delay = 0.0
        self._intervals = (DEFAULT_FAST_MS, DEFAULT_COMPREHENSIVE_MS)
        self._mc_token = mc_token
        self.issuer = issuer if issuer is not None else TokenIssuer()
        self.stale_after = stale_after
        self.assign_timeout = assign_timeout
        self.placeable = frozenset(placeable)
        self._heard: dict[str, _Heard] = {}
        self._placements: dict[str, str] = {}  # meeting id -> mc id
        # Joins are decided one at a time, as by one GC; never held by grpc threads.
        self._join_lock = threading.Lock()
        self._server = None
        self._executor = None
        self._stopping = None

    def __repr__(self):
        return f"<FakeGc {self.url} running={self._server is not None}>"

    @property
    def url(self):
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def jwks_url(self):
        """Where the join tokens' JWKS is served (while the fake runs)."""
        return self.issuer.url

    @property
    def target(self):
        """``host:port`` for grpc channels."""
        return f"{self.host}:{self.port}"

    # -- lifecycle -------------------------------------------------------

    def start(self):
        """Serve on a new grpc server; after ``stop`` this is a GC restart on
        the same port (registrations are kept unless ``forget_all`` is called)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("FakeGc is already running")
            stopping = threading.Event()
            executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="fakegc")
            server = grpc.server(executor, options=SERVER_OPTIONS)
            for dialect, module in _GRPC_MODULES.items():
                module.add_GlobalControllerServiceServicer_to_server(
                    _SERVICERS[dialect](self, stopping), server)
            address = f"{self.host}:{self.port}"
            try:
                if self._tls:
                    cert, key = self._tls
                    creds = grpc.ssl_server_credentials([(key, cert)])
                    port = server.add_secure_port(address, creds)
                else:
                    port = server.add_insecure_port(address)
            except RuntimeError:
                port = 0
            if not port:
                executor.shutdown(wait=False)
                raise OSError(f"FakeGc cannot listen on {address}")
            server.start()
            self.port = port
            self._server, self._executor, self._stopping = server, executor, stopping
        try:
            self.issuer.serve()
        except OSError:
            self.stop()
            raise
        return self

    def stop(self, grace=None):
        """Stop serving; in-flight calls get ``grace`` seconds (None: none) and
        delayed answers are cut short, so this returns promptly."""
        with self._lock:
            server, executor, stopping = self._server, self._executor, self._stopping
            self._server = self._executor = self._stopping = None
        if server is None:
            return
        self.issuer.stop_serving()
        stopping.set()
        server.stop(grace).wait((grace or 0) + 5)
        executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- scripting -------------------------------------------------------

    def reject_registrations(self, message="rejected by FakeGc"):
        """Answer RegisterMC with accepted=false and ``message`` from now on."""
        with self._lock:
            self._reject_message = message

    def accept_registrations(self):
        with self._lock:
            self._reject_message = None

    def fail_heartbeats(self, n, code=grpc.StatusCode.NOT_FOUND):
        """Answer the next ``n`` valid heartbeats with ``code`` (a StatusCode or its name)."""
        with self._lock:
            self._heartbeat_failures.extend([_status_code(code)] * n)

    def forget(self, mc_id):
        """Drop one registration, as a cleanup of stale MCs would."""
        with self._lock:
            self._registered.pop(mc_id, None)
            self._heard.pop(mc_id, None)

    def forget_all(self):
        """Drop every registration, as a GC restart would."""
        with self._lock:
            self._registered.clear()
            self._heard.clear()

    def set_unavailable(self, unavailable):
        """Answer every call with UNAVAILABLE while True."""
        with self._lock:
            self._unavailable = bool(unavailable)

    def set_delay(self, seconds):
        """Hold every answer back ``seconds``."""
        with self._lock:
            self._delay = float(seconds)

    def set_intervals(self, fast_ms, comprehensive_ms):
        """Heartbeat intervals returned by later registrations."""
        with self._lock:
            self._intervals = (int(fast_ms), int(comprehensive_ms))

    @staticmethod
    def _check_dialect(dialect):
        if dialect not in (LEGACY, V1, BOTH):
            raise ValueError(f"dialect must be legacy, v1 or both, not {dialect!r}")
        return dialect

    @property
    def dialect(self):
        with self._lock:
            return self._dialect

    def set_dialect(self, dialect):
        """Serve ``dialect`` from now on (``legacy``, ``v1`` or ``both``), on
        the same address: an upgrade (or a rollback) of the GC under a
        running MC; the other dialect's paths answer UNIMPLEMENTED."""
        with self._lock:
            self._dialect = self._check_dialect(dialect)

    def set_mc_token(self, token):
        """The bearer token later AssignMeetingWithMh calls send (None: none)."""
        with self._lock:
            self._mc_token = token

    # -- the join flow -----------------------------------------------------

    def join(self, meeting_id, sub, mh_assignments=None, **claims):
        """Place ``meeting_id`` and return a ``Join`` for user ``sub``, as the
        deployed GC's join flow does: the MC holding the meeting is reused
        while it is HEALTHY and heard from within ``stale_after`` seconds;
        otherwise the other eligible MCs (HEALTHY, fresh, current_meetings <
        max_meetings by their last heartbeat), least loaded first, are asked
        with AssignMeetingWithMh (``mh_assignments`` as ``assign_meeting``
        takes them; default one primary) until one accepts. ``claims``
        override the token's claims (see ``TokenIssuer.mint``). Raises
        NoMcAvailable. Blocks on the MCs' answers: call it from a test thread."""
        mh = DEFAULT_MH_ASSIGNMENTS if mh_assignments is None else mh_assignments
        with self._join_lock:
            with self._lock:
                now = time.monotonic()
                current = self._placements.get(meeting_id)
                reuse = current is not None and self._thd_usable(current, now)
                if reuse:
                    endpoint = self._registered[current].webtransport_endpoint
                else:
                    candidates = self._thd_candidates(now, exclude=current)
                    token, dialect = self._thd_assign_terms()
            if reuse:
                mc_id, assigned = current, False
            else:
                (mc_id, endpoint), assigned = self._place(
                    meeting_id, candidates, mh, token, dialect), True
        return Join(meeting_id, mc_id, endpoint, self.issuer.mint(meeting_id, sub, **claims),
                    assigned)

    def place(self, meeting_id, mc_id, mh_assignments=None):
        """Place ``meeting_id`` on the registered MC ``mc_id`` with
        AssignMeetingWithMh, as a GC spreading meetings by a policy of its own
        would; later joins reuse the place while that MC is usable. Raises
        NoMcAvailable if it refuses. Blocks: call it from a test thread."""
        mh = DEFAULT_MH_ASSIGNMENTS if mh_assignments is None else mh_assignments
        with self._join_lock:
            with self._lock:
                registration = self._registered[mc_id]
                token, dialect = self._thd_assign_terms()
            return self._place(meeting_id, [registration], mh, token, dialect)

    def placement(self, meeting_id):
        """The id of the MC the fake last placed ``meeting_id`` on, or None."""
        with self._lock:
            return self._placements.get(meeting_id)

    def _thd_usable(self, mc_id, now):
        """Registered, placeable (HEALTHY) and heard from recently. Called
        with the lock held."""
        heard = self._heard.get(mc_id)
        return (mc_id in self._registered and heard is not None
                and heard.health in self.placeable
                and now - heard.monotonic < self.stale_after)

    def _thd_candidates(self, now, exclude):
        """The registrations of the MCs a new placement may use, least loaded
        first. Called with the lock held."""
        eligible = []
        for mc_id, registration in self._registered.items():
            heard = self._heard.get(mc_id)
            if (mc_id != exclude and self._thd_usable(mc_id, now)
                    and heard.current_meetings < heard.max_meetings):
                eligible.append((heard.current_meetings / heard.max_meetings, mc_id, registration))
        return [registration for _, _, registration in sorted(eligible, key=lambda e: e[:2])]

    def _thd_assign_terms(self):
        """The token and the dialect of an AssignMeetingWithMh now: the set
        token, else a fresh GC token from the AC; v1 unless the fake speaks
        legacy only. Called with the lock held."""
        token = self._mc_token
        if token is None and self.ac is not None:
            token = self.ac.mint("global-controller")
        return token, LEGACY if self._dialect == LEGACY else V1

    def _place(self, meeting_id, candidates, mh, token, dialect):
        """Ask ``candidates`` in turn (in ``dialect``); the first that accepts
        holds the meeting. Returns its ``(mc_id, webtransport_endpoint)``."""
        tried = {}
        for registration in candidates:
            try:
                response = assign_meeting(registration.grpc_endpoint, meeting_id, mh, token,
                                          timeout=self.assign_timeout, dialect=dialect)
            except grpc.RpcError as e:
                tried[registration.id] = e.code().name
                continue
            if response.accepted:
                with self._lock:
                    self._placements[meeting_id] = registration.id
                return registration.id, registration.webtransport_endpoint
            tried[registration.id] = gc_mc_pb2.RejectionReason.Name(response.rejection_reason)
        raise NoMcAvailable(meeting_id, tried)

    # -- observing -------------------------------------------------------

    def unserved(self, dialect):
        """Calls on ``dialect``'s paths answered UNIMPLEMENTED (while the fake
        spoke the other one); they are not among ``requests``."""
        with self._lock:
            return self._unserved[dialect]

    def registered(self):
        """The last accepted RegisterMCRequest per MC id the fake knows."""
        with self._lock:
            return dict(self._registered)

    def requests(self, method=None):
        """Every request answered so far, oldest first, optionally of one method."""
        with self._lock:
            return [r for r in self._records if method is None or r.method == method]

    def registrations(self):
        return self.requests(REGISTER)

    def heartbeats(self, kind=None):
        """Heartbeats of ``kind`` ``"fast"`` or ``"comprehensive"`` (None: both)."""
        methods = set(HEARTBEAT_METHODS.values()) if kind is None else {HEARTBEAT_METHODS[kind]}
        with self._lock:
            return [r for r in self._records if r.method in methods]

    def meeting_ends(self):
        return self.requests(NOTIFY_ENDED)

    def clear(self):
        """Forget the recorded requests (not the registrations)."""
        with self._lock:
            self._records.clear()

    def wait_for(self, predicate, timeout=10.0):
        """Return ``predicate()``'s first truthy value, re-checking on every new
        request and at least every 50 ms; raise TimeoutError after ``timeout``.
        Blocks the calling thread: call it from a test thread, not the reactor."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = len(self._records)
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"FakeGc: condition not met within {timeout:g}s")
            with self._changed:
                if len(self._records) == seen:
                    self._changed.wait(min(remaining, 0.05))

    # -- serving (grpc threads) --------------------------------------------

    def _thd_authorized(self, metadata):
        """``ok``, or the refusal (``unauthenticated``, ``permission_denied``)."""
        value = metadata.get("authorization")
        if not isinstance(value, str) or not value.startswith(BEARER):
            return "unauthenticated"
        token = value[len(BEARER):].encode()
        if not token or len(token) > MAX_TOKEN_BYTES:
            return "unauthenticated"
        ok = False
        for t in self._tokens:
            ok |= hmac.compare_digest(token, t)
        if ok:
            return "ok"
        if self.ac is None:
            return "unauthenticated"
        return self.ac.check(value, GC_SCOPE, MC_SERVICE_TYPE)

    def _thd_decide(self, method, request, metadata, dialect):
        """The answer the GC would give; raises _Reject for an error status.
        Called with the lock held."""
        if self._unavailable:
            raise _Reject(grpc.StatusCode.UNAVAILABLE, "FakeGc is unavailable")
        auth = self._thd_authorized(metadata)
        if auth == "unauthenticated":
            raise _Reject(grpc.StatusCode.UNAUTHENTICATED, "Invalid token")
        if auth != "ok":
            raise _Reject(grpc.StatusCode.PERMISSION_DENIED, "Access denied")
        if method == REGISTER:
            _check_id("id", request.id)
            _check_region(request.region)
            _check_url("grpc_endpoint", request.grpc_endpoint)
            if request.webtransport_endpoint:
                _check_url("webtransport_endpoint", request.webtransport_endpoint)
            _check_count("max_meetings", request.max_meetings)
            _check_count("max_participants", request.max_participants)
            if self._reject_message is not None:
                return gc_mc_pb2.RegisterMCResponse(accepted=False, message=self._reject_message)
            self._registered[request.id] = request
            fast_ms, comprehensive_ms = self._intervals
            return gc_mc_pb2.RegisterMCResponse(
                accepted=True, message="registered", fast_heartbeat_interval_ms=fast_ms,
                comprehensive_heartbeat_interval_ms=comprehensive_ms)
        if method in (FAST, COMPREHENSIVE):
            _check_id("controller_id", request.controller_id)
            if not request.HasField("capacity"):
                raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "capacity is required")
            if self._heartbeat_failures:
                raise _Reject(self._heartbeat_failures.pop(0), "scripted by FakeGc")
            if request.controller_id not in self._registered:
                raise _Reject(grpc.StatusCode.NOT_FOUND, "controller not registered")
            c = request.capacity
            self._heard[request.controller_id] = _Heard(
                request.health, c.current_meetings, c.max_meetings, time.monotonic())
            response = (gc_mc_pb2.FastHeartbeatResponse if method == FAST
                        else gc_mc_pb2.ComprehensiveHeartbeatResponse)
            return response(acknowledged=True, timestamp=int(time.time()))
        _check_id("meeting_id", request.meeting_id)
        _check_region(request.region)
        # The meeting is over: the next join places it afresh.
        self._placements.pop(request.meeting_id, None)
        return gc_mc_pb2.NotifyMeetingEndedResponse(acknowledged=True)

    def _thd_answer(self, method, request, context, stopping, dialect):
        arrived_monotonic, arrived_wall = time.monotonic(), time.time()
        metadata = dict(context.invocation_metadata())
        with self._lock:
            served = self._dialect in (dialect, BOTH)
            if not served:
                # As a GC of the other dialect: the path is unknown, nothing recorded.
                self._unserved[dialect] += 1
        if not served:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        with self._lock:
            try:
                response, reject = self._thd_decide(method, request, metadata, dialect), None
            except _Reject as e:
                response, reject = None, e
            record = Recorded(
                method, request, metadata, arrived_monotonic, arrived_wall,
                reject.code.name if reject else "OK", reject.details if reject else "",
                dialect)
            self._records.append(record)
            self._changed.notify_all()
            delay = self._delay
        if self._on_request is not None:
            self._on_request(record)
        if delay:
            stopping.wait(delay)
        if reject is not None:
            context.abort(reject.code, reject.details)
        return response


def assign_meeting(mc_target, meeting_id, mh_assignments, token, gc_id="fake-gc", timeout=10,
                   authorization=None, root_certificates=None, private_key=None,
                   certificate_chain=None, dialect=LEGACY, metadata=()):
    """Call AssignMeetingWithMh on an MC as the GC would; blocking.

    ``mc_target``: ``host:port`` or an http(s):// URL (https uses
    ``root_certificates``, default the system roots, and presents the client
    certificate ``certificate_chain`` with ``private_key``, PEM bytes, when
    given: mutual TLS). ``mh_assignments``:
    ``(mh_id, webtransport_endpoint, grpc_endpoint)`` tuples or dicts of
    MhAssignment fields. ``authorization`` overrides the raw header
    value (to send a malformed one); with ``token=None`` and no override no
    header is sent. ``dialect``: the package of the path called (``legacy``
    or ``v1``); ``metadata``: more headers (a ``traceparent``). Returns the
    response or raises ``grpc.RpcError``.
    """
    assignments = []
    for a in mh_assignments:
        if isinstance(a, dict):
            assignments.append(gc_mc_pb2.MhAssignment(**a))
        else:
            mh_id, endpoint, grpc_endpoint = a
            assignments.append(gc_mc_pb2.MhAssignment(
                mh_id=mh_id, webtransport_endpoint=endpoint, grpc_endpoint=grpc_endpoint))
    request = gc_mc_pb2.AssignMeetingWithMhRequest(
        meeting_id=meeting_id, mh_assignments=assignments, requesting_gc_id=gc_id)
    if authorization is None and token is not None:
        authorization = BEARER + token
    metadata = tuple(metadata) + (
        (("authorization", authorization),) if authorization is not None else ())

    secure = mc_target.startswith("https://")
    target = mc_target.split("://", 1)[1].rstrip("/") if "://" in mc_target else mc_target
    if secure:
        creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = _GRPC_MODULES[dialect].MeetingControllerServiceStub(channel)
        return stub.AssignMeetingWithMh(request, timeout=timeout, metadata=metadata)


def _record_json(record):
    return json.dumps({
        "method": record.method,
        "dialect": record.dialect,
        "fields": json_format.MessageToDict(
            record.request, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True),
        "status": record.status,
    }, sort_keys=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mc.testing.fakegc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:50051", help="host:port (port 0: any)")
    parser.add_argument("--token-file", required=True,
                        help="file of accepted bearer tokens, separated by whitespace or commas")
    parser.add_argument("--tls-cert", help="PEM certificate; with --tls-key serves TLS")
    parser.add_argument("--tls-key", help="PEM private key")
    parser.add_argument("--fast-ms", type=int, default=DEFAULT_FAST_MS)
    parser.add_argument("--comprehensive-ms", type=int, default=DEFAULT_COMPREHENSIVE_MS)
    parser.add_argument("--jwks-file", help="write the join tokens' JWKS to this file")
    parser.add_argument("--dialect", choices=(LEGACY, V1, BOTH), default=LEGACY,
                        help="the packages served: dark_tower.internal (legacy), "
                             "dark_tower.internal.v1 (v1) or both")
    args = parser.parse_args(argv)

    host, _, port = args.listen.rpartition(":")
    with open(args.token_file, encoding="utf-8") as f:
        tokens = [t for t in re.split(r"[,\s]+", f.read()) if t]
    if not tokens:
        parser.error("--token-file holds no token")
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            parser.error("--tls-cert and --tls-key go together")
        with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
            tls = (c.read(), k.read())

    out_lock = threading.Lock()

    def thd_print(record):
        line = _record_json(record)
        with out_lock:
            print(line, flush=True)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    fake = FakeGc(tokens, host=host.strip("[]"), port=int(port), tls=tls, on_request=thd_print,
                  dialect=args.dialect)
    fake.set_intervals(args.fast_ms, args.comprehensive_ms)
    if args.jwks_file:
        fake.issuer.write_jwks(args.jwks_file)
    fake.start()
    print(f"FakeGc listening on {fake.url}", file=sys.stderr, flush=True)
    print(f"FakeGc JWKS at {fake.jwks_url}", file=sys.stderr, flush=True)
    while not done.wait(0.5):
        pass
    fake.stop(grace=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
