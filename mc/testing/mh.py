"""FakeMh: a media handler's control side on 127.0.0.1, for tests, the demo and users.

It serves the v1 ``MediaHandlerService.RegisterMeeting`` over real grpcio,
records every call (request and metadata: the bearer token, the
``traceparent``), and fails on demand: ``refuse`` (``accepted = false``),
``fail`` (a gRPC status), ``hang`` (no answer for a while: longer than the
caller's deadline is never). With ``ac`` (an ``AcDouble``) it checks the
caller's service token as the platform's MH does (scope
``service.write.mh``, ``service_type`` ``meeting-controller``). It also plays
the MH's client side: ``notify_connected`` / ``notify_disconnected`` report a
participant's media connection to an MC's MediaCoordinationService, with a
``media-handler`` token minted by ``ac`` (or the ``token`` given).

Its WebTransport URL is only a name (no media is carried): what an
assignment gives clients, and what they name in a MediaConnectionUpdate.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from mc.proto import media_pb2, media_pb2_grpc
from mc.testing.fakegc import SERVER_OPTIONS, Recorded

REGISTER_MEETING = "RegisterMeeting"
MH_SCOPE = "service.write.mh"
MC_SERVICE_TYPE = "meeting-controller"
STATUS = {"unauthenticated": (grpc.StatusCode.UNAUTHENTICATED, "Invalid token"),
          "permission_denied": (grpc.StatusCode.PERMISSION_DENIED, "Access denied")}


class _Servicer(media_pb2_grpc.MediaHandlerServiceServicer):
    def __init__(self, fake):
        self._fake = fake

    def RegisterMeeting(self, request, context):
        return self._fake._thd_register(request, context)


class FakeMh:
    """One MH: ``mh_id``, a gRPC server on a free port of 127.0.0.1
    (``grpc_url``), and a WebTransport URL (``webtransport_url``)."""

    def __init__(self, mh_id="mh-1", ac=None, max_workers=8):
        self.mh_id = mh_id
        self.ac = ac
        self.port = 0
        self.webtransport_url = f"https://{mh_id}.example:4433"
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records = []
        self._script = []  # what the next calls answer: ("refuse",) / ("fail", code) / ("hang", s)
        self._stopping = threading.Event()
        self._server = None
        self._executor = None

    def __repr__(self):
        return f"<FakeMh {self.mh_id} {self.grpc_url} running={self._server is not None}>"

    @property
    def grpc_url(self):
        return f"http://127.0.0.1:{self.port}"

    def assignment(self):
        """This MH as an assignment's ``(mh_id, webtransport_endpoint, grpc_endpoint)``."""
        return (self.mh_id, self.webtransport_url, self.grpc_url)

    # -- lifecycle -------------------------------------------------------

    def start(self):
        """Serve (again, on the same port after ``stop``: an MH restart)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("FakeMh is already running")
            self._stopping = threading.Event()
            executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="fakemh")
            server = grpc.server(executor, options=SERVER_OPTIONS)
            media_pb2_grpc.add_MediaHandlerServiceServicer_to_server(_Servicer(self), server)
            try:
                port = server.add_insecure_port(f"127.0.0.1:{self.port}")
            except RuntimeError:
                port = 0
            if not port:
                executor.shutdown(wait=False)
                raise OSError(f"FakeMh cannot listen on 127.0.0.1:{self.port}")
            server.start()
            self.port, self._server, self._executor = port, server, executor
        return self

    def stop(self):
        """Stop serving at once; held answers are cut short."""
        with self._lock:
            server, executor = self._server, self._executor
            self._server = self._executor = None
            self._stopping.set()
        if server is not None:
            server.stop(None).wait(5)
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- scripting -------------------------------------------------------

    def refuse(self, n=1):
        """Answer the next ``n`` valid calls ``accepted = false``."""
        self._add(("refuse",), n)

    def fail(self, n=1, code=grpc.StatusCode.UNAVAILABLE):
        """Answer the next ``n`` valid calls with the gRPC status ``code``."""
        self._add(("fail", code), n)

    def hang(self, seconds, n=1):
        """Hold the next ``n`` answers ``seconds`` (cut short by ``stop``)."""
        self._add(("hang", float(seconds)), n)

    def _add(self, step, n):
        with self._lock:
            self._script.extend([step] * n)

    # -- observing -------------------------------------------------------

    def registrations(self, meeting_id=None):
        """The RegisterMeeting calls received (``Recorded``), in order."""
        with self._lock:
            return [r for r in self._records
                    if meeting_id is None or r.request.meeting_id == meeting_id]

    def wait_for(self, predicate, timeout=10.0):
        """``predicate()``'s first truthy value, re-checked on every call and
        every 50 ms; TimeoutError after ``timeout``. Blocks: not on a reactor."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"FakeMh {self.mh_id}: condition not met within {timeout:g}s")
            with self._changed:
                self._changed.wait(min(remaining, 0.05))

    # -- the MH's reports to an MC -------------------------------------------

    def notify_connected(self, mc_target, meeting_id, participant_id, token=None,
                         handler_id=None, timeout=5.0):
        """NotifyParticipantConnected on the MC at ``mc_target`` (``host:port``);
        blocking; the response, or ``grpc.RpcError``."""
        request = media_pb2.NotifyParticipantConnectedRequest(
            meeting_id=meeting_id, participant_id=participant_id,
            handler_id=self.mh_id if handler_id is None else handler_id)
        return self._notify(mc_target, "NotifyParticipantConnected", request, token, timeout)

    def notify_disconnected(self, mc_target, meeting_id, participant_id, token=None,
                            handler_id=None, reason=media_pb2.DISCONNECT_REASON_CLIENT_CLOSED,
                            timeout=5.0):
        """NotifyParticipantDisconnected, as ``notify_connected``."""
        request = media_pb2.NotifyParticipantDisconnectedRequest(
            meeting_id=meeting_id, participant_id=participant_id,
            handler_id=self.mh_id if handler_id is None else handler_id, reason=reason)
        return self._notify(mc_target, "NotifyParticipantDisconnected", request, token, timeout)

    def _notify(self, mc_target, method, request, token, timeout):
        if token is None and self.ac is not None:
            token = self.ac.mint("media-handler")
        metadata = (("authorization", "Bearer " + token),) if token is not None else ()
        with grpc.insecure_channel(mc_target) as channel:
            stub = media_pb2_grpc.MediaCoordinationServiceStub(channel)
            return getattr(stub, method)(request, timeout=timeout, metadata=metadata)

    # -- serving (grpc threads) --------------------------------------------

    def _thd_register(self, request, context):
        arrived_monotonic, arrived_wall = time.monotonic(), time.time()
        metadata = dict(context.invocation_metadata())
        verdict = "ok"
        if self.ac is not None:
            verdict = self.ac.check(metadata.get("authorization"), MH_SCOPE, MC_SERVICE_TYPE)
        with self._lock:
            step = self._script.pop(0) if verdict == "ok" and self._script else None
            status = STATUS[verdict][0].name if verdict in STATUS else \
                step[1].name if step and step[0] == "fail" else "OK"
            self._records.append(Recorded(REGISTER_MEETING, request, metadata,
                                          arrived_monotonic, arrived_wall, status))
            self._changed.notify_all()
            stopping = self._stopping
        if verdict in STATUS:
            context.abort(*STATUS[verdict])
        if step is not None and step[0] == "hang":
            stopping.wait(step[1])
        if step is not None and step[0] == "fail":
            context.abort(step[1], "scripted by FakeMh")
        return media_pb2.RegisterMeetingResponse(accepted=step is None or step[0] != "refuse")
