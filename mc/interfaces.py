"""The seams between the MC's parts; every implementation and double is checked
with ``verifyObject`` against these."""

from zope.interface import Attribute, Interface


class IFencedStore(Interface):
    """Meeting keys in the fleet's shared Redis, every write fenced by
    generation and owner: it succeeds only when the writer holds at least the
    stored generation and, when the state hash names an owner (``mc_id``),
    is that owner.

    Methods return Deferreds. Failures: ``mc.errors.FencedOut`` when fenced
    (nothing changed), ``mc.errors.CorruptGeneration`` when the stored
    generation is not an integer (nothing changed), and
    ``mc.errors.StoreUnavailable`` when Redis cannot be reached or did not
    answer in time (the outcome is unknown).
    """

    connected = Attribute("True while Redis is reachable and answering, and the replicas a "
                          "claim needs are there: every operation may succeed.")
    reachable = Attribute("True while Redis is reachable and answering (ownership can be "
                          "read), even when claims lack the replicas they need.")

    def on_change(observer):
        """Call ``observer(connected)`` whenever ``connected`` flips."""

    def listen(mc_id, heard):
        """Call ``heard()`` soon after another MC claims a meeting from
        ``mc_id`` (best effort: ``news`` is the record)."""

    def claim_and_write(meeting_id, mc_id, assignment, state, issued_at=None):
        """Claim and write the MH assignment and the state hash in one atomic
        step; fire with the new generation, above every generation the
        meeting had (seeded from Redis's clock, so none ever repeats). The
        claim counts only once durable (the replica acknowledgements
        required); then a previous owner that is another MC finds the meeting
        in its ``news``. A claim whose outcome is unknown is read back before
        it fails; one issued (``issued_at``, our clock) before another MC's
        claim that reaches Redis after it changes nothing (FencedOut)."""

    def reassert(meeting_id, generation, mc_id, assignment, state):
        """Fenced write of the assignment, the state hash and the MC's index
        entry at ``generation``, in one atomic step."""

    def write_assignment(meeting_id, generation, mc_id, assignment):
        """Fenced SET of ``meeting:<id>:mh`` to the JSON of ``assignment``."""

    def write_state(meeting_id, generation, mc_id, fields):
        """Fenced HSET of ``fields`` (plus ``generation`` and ``mc_id``) into
        ``meeting:<id>:state``."""

    def delete(meeting_id, generation, mc_id):
        """Fenced delete of the meeting's mh key; its state hash becomes a
        tombstone naming the last owner (a later claim still tells it); the
        tombstone and the generation key expire."""

    def read_generation(meeting_id):
        """Fire with the stored generation, or None for an unknown meeting."""

    def read_assignment(meeting_id):
        """Fire with the decoded MH assignment dict, or None."""

    def news(mc_id):
        """Fire with ``(intact, lost)``: whether Redis still holds every
        write of ``mc_id`` it acknowledged (False: a restart from an older
        snapshot or without persistence, a failover that lost writes), and
        the ``(meeting_id, generation)`` of each meeting another MC claimed
        from it since it last ``forget_news``-ed them, with the winning
        claim's generation. One Redis command, whatever the MC hosts."""

    def forget_news(mc_id, lost):
        """Drop these ``(meeting_id, generation)`` entries from the news (an
        entry rewritten by a newer claim since stays)."""


class IGcClient(Interface):
    """The MC's calls to the Global Controller; each returns a Deferred firing
    with the response message or failing with ``mc.errors.GcCallError``
    (whose ``dialect`` names the dialect of the last attempt)."""

    dialect = Attribute("The dialect (``v1`` or ``legacy``) of the call that last worked, "
                        "which the next call speaks first; read when a call's answer "
                        "arrives, it is that call's.")

    def register(request):
        """RegisterMC."""

    def fast_heartbeat(request):
        """FastHeartbeat."""

    def comprehensive_heartbeat(request):
        """ComprehensiveHeartbeat."""

    def notify_meeting_ended(request):
        """NotifyMeetingEnded."""

    def close():
        """Release the channel; no call may be made afterwards."""


class ITokenCheck(Interface):
    """Decides whether a bearer token presented by the GC is acceptable."""

    def check(authorization):
        """Return True when the raw ``authorization`` metadata value is
        ``Bearer <a configured token>``; must run in constant time per token and
        is called from non-reactor threads."""


class IServiceIdentity(Interface):
    """The MC's own identity towards the platform: the bearer token it sends
    on every call to a GC or an MH. Called on the reactor thread."""

    ready = Attribute("True while a token that has not expired is held.")

    def metadata():
        """The gRPC metadata for a call made now, ``(("authorization",
        "Bearer <token>"),)``, or None while no unexpired token is held (the
        call must then not be made: an expired token is never sent)."""

    def when_ready():
        """A Deferred firing with None once a token is held (at once when one
        is); cancelling it only stops that wait."""

    def expiry_seconds():
        """Seconds until the current token expires (0 without one), or None
        for a token that does not expire (a static one)."""


class IJwksKeys(Interface):
    """The Auth Controller's signing keys, one cache for every JWT the MC
    checks (meeting tokens and the service tokens of calls it receives)."""

    def key(kid):
        """``(alg, public key)`` of ``kid``, or None when unknown (or no JWKS
        is loaded yet). Safe from any thread."""

    def refetch():
        """Fetch the JWKS again because a token named an unknown kid,
        rate-limited; a Deferred firing with None (never failing) once that
        is over. Reactor thread."""


class ICallAuthorizer(Interface):
    """Decides, on a grpcio worker thread, whether a call the MC receives may
    proceed: its method path and its ``authorization`` metadata values."""

    def thd_authorize(path, authorizations):
        """``mc.ac.service_tokens.OK``, ``UNAUTHENTICATED`` or
        ``PERMISSION_DENIED``; may wait (bounded) for the reactor."""


class ISystemProbe(Interface):
    """CPU and memory usage of this process's container or host."""

    def cpu_percent():
        """CPU use since the previous call, 0..100, without blocking."""

    def memory_percent():
        """Memory in use against the applicable limit, 0..100."""


class ISessionTransport(Interface):
    """One accepted WebTransport session as signalling sees it: the client's
    one bidirectional stream, and the session around it. Implemented by
    ``mc.participants.webtransport``; called on the reactor thread only."""

    peer = Attribute("The client's ``(host, port)``, for logs.")
    state = Attribute("The session's ``SessionState`` (``mc.participants.session_state``): "
                      "the one place that says where it is.")
    stream_open = Attribute("True once the client has opened its bidirectional stream.")
    join_within = Attribute("Seconds left before the connection is closed for having no "
                            "joined session; None once joined.")
    buffered = Attribute("Bytes written on the stream that the client has not yet "
                         "acknowledged (queued, or sent and unacknowledged).")

    def write(data):
        """Queue ``data`` on the client's stream; it leaves within this reactor
        turn. Ignored before the stream exists or after the session ended; a
        stream the client stopped loses the session (``session_closed(False)``)."""

    def joining():
        """A JoinRequest arrived: its token is being checked (AWAITING_JOIN -> JOINING)."""

    def joined():
        """The session's participant was admitted (JOINING -> JOINED): its
        connection no longer counts against the caps on connections that
        have not joined."""

    def finish():
        """Send what is queued, FIN the stream and close the session cleanly
        (CLOSE_WEBTRANSPORT_SESSION). The handler then gets ``session_closed(True)``.
        Ignored once the session ended."""

    def abort():
        """Drop the session at once, queued data included (a client that does
        not read). The handler then gets ``session_closed(False)``. Ignored
        once the session ended."""


class ISessionHandler(Interface):
    """What a WebTransport session tells signalling; one per session, made by
    the transport's handler factory when the CONNECT is accepted."""

    def session_opened(transport):
        """The CONNECT was answered 200; ``transport`` provides ISessionTransport."""

    def data_received(data):
        """Bytes arrived on the client's bidirectional stream (the first call
        also means the stream was opened)."""

    def stream_ended():
        """The client finished its stream (FIN): it leaves on purpose."""

    def session_closed(clean):
        """The session is over and the transport forgets it. ``clean``: the
        client closed the session or the connection without error (QUIC
        NO_ERROR, H3_NO_ERROR, a CLOSE_WEBTRANSPORT_SESSION capsule, a FIN of
        the CONNECT stream) or we called ``finish``; False for an idle
        timeout, a connection error, a reset of the stream, or ``abort``.
        Called exactly once."""


class ITokenVerifier(Interface):
    """Checks a participant's meeting token (a JWT) against the Auth
    Controller's JWKS."""

    ready = Attribute("True once a JWKS has been loaded (and kept since).")

    def verify(token, meeting_id):
        """Fire with the token's claims (a dict) when it is valid for
        ``meeting_id``; fail with ``mc.errors.InvalidToken`` (no detail of the
        check that failed reaches the client) or ``mc.errors.NoJwks`` when no
        JWKS was ever loaded."""


class IParticipantSink(Interface):
    """Where a meeting delivers what one participant must hear; the
    signalling session implements it. Events (``mc.meetings``) are shared by
    every recipient of one fan-out, so an encoding may be cached on them."""

    closed = Attribute("True once the session is over: a join or reconnect whose token "
                       "check ends after that commits nothing.")

    def deliver(event):
        """Send ``event`` (Joined, Left, MuteChanged or Redirect) to the
        participant; never raises, never blocks."""


class IMhClient(Interface):
    """The MC's calls to media handlers; called on the reactor thread."""

    def register_meeting(grpc_url, request, metadata):
        """RegisterMeeting on the MH at ``grpc_url`` (``http(s)://host:port``)
        with ``metadata`` (the service token, the trace context): a Deferred
        firing with the RegisterMeetingResponse or failing with
        ``mc.errors.MhCallError``; cancelling it abandons the call."""

    def close():
        """Release every channel; no call may be made afterwards."""
