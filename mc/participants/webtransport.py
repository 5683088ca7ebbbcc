"""WebTransport sessions over the engine's HTTP/3 (``mc.participants.engine``),
one ``WebTransportConnection`` per QUIC connection, and the service that
listens for them.

A session is an extended CONNECT (``:protocol webtransport``) answered 200;
the first bidirectional stream the client opens in it is the signalling
stream, handed to an ``ISessionHandler``. Datagrams and further streams are
refused. Browsers speak draft02 (Chromium sends its settings and wants
``sec-webtransport-http3-draft: draft02`` back), ending a session with a
CLOSE_WEBTRANSPORT_SESSION capsule or a FIN of the CONNECT stream.

The engine's ``H3Connection`` parses the CONNECT streams; once a stream is known
to carry WebTransport data (or to be refused), its QUIC events bypass H3 and
are handled here, which is why H3's entry for it is dropped at that point.

Where a session is lives in one ``SessionLife`` (``session_state``), shared
with its handler. Every write goes through ``_send``, which asks the engine
whether the stream can still be written (the client's STOP_SENDING is
applied by QUIC as its frame arrives, before its event reaches us); and an
end, however it comes (FIN, reset, STOP_SENDING, capsule, in any order,
in one receive or several), goes through ``end_session`` once: losses are
settled at the end of a receive, so a clean close in the same packet wins.
"""

import contextlib
import socket
import time
from enum import Enum
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mc.interfaces import ISessionTransport
from mc.participants import engine
from mc.participants.engine import (
    H3_ALPN,
    Buffer,
    BufferReadError,
    DataReceived,
    FrameType,
    H3Connection,
    HeadersReceived,
    ProtocolNegotiated,
    QuicConfiguration,
    QuicErrorCode,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
    WebTransportStreamDataReceived,
    encode_frame,
    encode_uint_var,
    forget_h3_stream,
    receiving,
    unacked,
    writable,
)
from mc.participants.engine import H3ErrorCode as ErrorCode
from mc.participants.quic import QuicEndpoint, describe, load_certificate
from mc.participants.session_state import SessionLife, SessionState

IDLE_TIMEOUT = 30.0
CLOSE_WEBTRANSPORT_SESSION = 0x2843
DRAFT_HEADER = (b"sec-webtransport-http3-draft", b"draft02")
# Resets and STOP_SENDING of streams we give up on.
CANCELLED = ErrorCode.H3_REQUEST_CANCELLED
CLEAN_CLOSE_CODES = (QuicErrorCode.NO_ERROR, ErrorCode.H3_NO_ERROR)
# aioquic ends an idle connection with this reason (and INTERNAL_ERROR since
# 1.3, NO_ERROR before): a lost peer, never a clean close.
IDLE_REASON = "Idle timeout"
#: After we finish a session, its CLOSE capsule waits until the client has
#: acknowledged the stream's data, and a moment more: a browser drops stream
#: data its page has not read yet when the session closes, so an ErrorMessage
#: sent just before the close would never be seen. Never longer than LINGER_MAX.
LINGER_POLL = 0.05
#: Bytes of UDP receive buffer asked for (see _enlarge_receive_buffer).
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
LINGER_MAX = 2.0
#: A connection with no joined session for this long is closed (the contract's
#: "Limits the MC enforces").
NO_SESSION_SECONDS = 10.0
DEFAULT_PORTS = {"https": 443, "http": 80}


def _stop(quic, stream_id):
    """STOP_SENDING for a stream the client may still send on."""
    if receiving(quic, stream_id):
        quic.stop_stream(stream_id, CANCELLED)


def _enlarge_receive_buffer(sock):
    """Ask for UDP_RECEIVE_BUFFER bytes of socket receive buffer (the kernel
    caps it at net.core.rmem_max) and return what it granted. The default
    (about 208 KiB) holds a few hundred datagrams: while the reactor is busy
    (a burst of joins, a garbage collection) the kernel dropped thousands
    per 30 s at 2,000 participants, and a draining MC lost its clients'
    closes and kept their connections until the idle timeout (bench/results.md)."""
    with contextlib.suppress(OSError):  # the default stays: slower under bursts, correct
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def server_configuration(cert_path, key_path):
    """The QUIC settings of the contract (ALPN h3, datagrams for the draft02
    settings, 30 s idle timeout, the MC's bounded receive windows), with the
    certificate loaded or ConfigError."""
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
        idle_timeout=IDLE_TIMEOUT)
    engine.bound_windows(configuration)
    load_certificate(configuration, cert_path, key_path)
    return configuration


def close_capsule(code=0, reason=b""):
    """A CLOSE_WEBTRANSPORT_SESSION capsule (32-bit code, then the reason)."""
    value = code.to_bytes(4, "big") + reason
    return encode_uint_var(CLOSE_WEBTRANSPORT_SESSION) + encode_uint_var(len(value)) + value


class _CapsuleReader:
    """Watches a CONNECT stream's capsules for CLOSE_WEBTRANSPORT_SESSION.
    Others (Chromium's GREASE, DRAIN) are skipped as they arrive, so no more
    than a capsule header is ever kept."""

    def __init__(self):
        self._pending = b""
        self._skip = 0

    def feed(self, data):
        """True once a CLOSE_WEBTRANSPORT_SESSION capsule begins."""
        data = self._pending + data
        pos = 0
        while True:
            skipped = min(self._skip, len(data) - pos)
            pos += skipped
            self._skip -= skipped
            if self._skip:
                break
            buf = Buffer(data=data[pos:pos + 16])
            try:
                capsule_type = buf.pull_uint_var()
                length = buf.pull_uint_var()
            except BufferReadError:
                break
            if capsule_type == CLOSE_WEBTRANSPORT_SESSION:
                return True
            pos += buf.tell()
            self._skip = length
        self._pending = data[pos:]
        return False


class _End(Enum):
    """How a session ends, which decides what its two streams get."""
    FINISH = "finish"            # ours: FIN the stream; CLOSE capsule and FIN on CONNECT
    PEER_CLOSED = "peer closed"  # the client's clean close: reset the stream, FIN CONNECT
    LOST = "lost"                # reset both; not clean


@implementer(ISessionTransport)
class WebTransportSession:
    """One accepted session: its CONNECT stream, the client's stream, and
    its ``life`` (``SessionLife``), shared with its handler."""

    def __init__(self, connection, connect_id, peer, handler):
        self.life = SessionLife()
        self.peer = peer
        self.handler = handler
        self.connect_id = connect_id
        self.stream_id = None
        self.capsules = _CapsuleReader()
        self.linger = None  # while CLOSING: the call that sends the CLOSE capsule
        self._connection = connection

    @property
    def state(self):
        return self.life.state

    @property
    def stream_open(self):
        return self.stream_id is not None

    @property
    def join_within(self):
        return self._connection.join_within()

    @property
    def buffered(self):
        if self.stream_id is None or self.life.state is SessionState.CLOSED:
            return 0
        return unacked(self._connection.quic, self.stream_id)

    def write(self, data):
        if self.life.live and self.stream_id is not None:
            self._connection.write(self, data)

    def joining(self):
        self.life.move(SessionState.JOINING)

    def joined(self):
        self.life.move(SessionState.JOINED)
        self._connection.session_joined()

    def finish(self):
        self._connection.end_session(self, _End.FINISH, "finished")

    def abort(self):
        self._connection.end_session(self, _End.LOST, "aborted")

    def __repr__(self):
        return f"<WebTransportSession {describe(self.peer)} {self.life.state.value}>"


class WebTransportSite:
    """What the sessions of every connection share: the path and origins
    accepted, the handler factory, the count of open sessions."""

    def __init__(self, path, allowed_origins, handler_factory):
        self.path = path or "/"
        self.allowed_origins = frozenset(normalise_origin(o) for o in allowed_origins)
        self.handler_factory = handler_factory
        self.sessions_current = 0

    def origin_allowed(self, origin):
        """No origin at all is a native client, not a browser on another site."""
        if origin is None or not self.allowed_origins:
            return True
        return normalise_origin(origin.decode("utf-8", "replace")) in self.allowed_origins


def normalise_origin(origin):
    """``scheme://host[:port]`` with the scheme and host in lower case and a
    default port (443 for https, 80 for http) dropped, so that an allowed
    origin matches however a browser spells it; anything else as given."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return origin
    if not parts.scheme or not parts.hostname:
        return origin
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class WebTransportConnection:
    """HTTP/3 with WebTransport on one QUIC connection: the application of
    ``QuicEndpoint`` for that connection.

    It carries one live session at a time (sessions it finished linger in
    CLOSING until their CLOSE capsule leaves), and it is closed when it has
    had no joined session for ``no_session_seconds`` (after it was made, or
    after its last joined session ended)."""

    log = Logger()

    def __init__(self, link, site, no_session_seconds=NO_SESSION_SECONDS):
        self.link = link
        self.h3 = None
        self.sessions: dict[int, WebTransportSession] = {}  # not CLOSED, by CONNECT stream id
        # Streams whose QUIC events bypass H3 until their receive side ends:
        # a session's stream, or None for one drained and ignored.
        self.raw: dict[int, WebTransportSession | None] = {}
        self._site = site
        self._lost: list[WebTransportSession] | None = None  # during a receive
        self._no_session_seconds = no_session_seconds
        self._deadline = None
        self._expiry = None
        self._arm_expiry()

    @property
    def quic(self):
        return self.link.quic

    @property
    def state(self):
        """Where the connection is: HANDSHAKE until HTTP/3 starts, then the
        state of its live session, else CLOSING while a session it finished
        lingers, else CLOSED (no session)."""
        if self.h3 is None and not self.sessions:
            return SessionState.HANDSHAKE
        live = self._live_session()
        if live is not None:
            return live.state
        return SessionState.CLOSING if self.closing else SessionState.CLOSED

    @property
    def closing(self):
        """Sessions finished here whose CLOSE capsule still waits."""
        return sum(1 for s in self.sessions.values() if s.state is SessionState.CLOSING)

    def join_within(self):
        """Seconds left before the connection closes for having no joined
        session (None while it has one)."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self.link.now())

    # --- the connection's lifetime without a joined session -----------------

    def _arm_expiry(self):
        if self._expiry is not None:
            return
        self._deadline = self.link.now() + self._no_session_seconds
        # The session's own refusal (ErrorMessage, then the CLOSE after the
        # client read it) comes first; the connection goes after it.
        self._expiry = self.link.call_later(self._no_session_seconds + LINGER_MAX,
                                            self._expired)

    def _disarm_expiry(self):
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self._deadline = None

    def session_joined(self):
        self._disarm_expiry()
        self.link.joined()

    def _expired(self):
        self._expiry = None
        self.log.debug("closing the connection from {peer}: no session joined within {limit:g}s",
                       peer=describe(self.link.peer), limit=self._no_session_seconds)
        self.link.close(ErrorCode.H3_NO_ERROR, "no session joined")

    # --- QUIC events --------------------------------------------------------

    def quic_events(self, events):
        self._lost = []
        try:
            for event in events:
                self._quic_event(event)
        finally:
            # A client closing a session may reset (or stop) its stream just
            # before its CLOSE capsule or FIN: only a loss the same receive
            # does not explain ends the session as lost.
            lost, self._lost = self._lost, None
            for session in lost:
                self.end_session(session, _End.LOST, "stream reset or stopped")
            self._prune_raw()

    def _quic_event(self, event):
        if isinstance(event, ProtocolNegotiated):
            self.h3 = h3 = H3Connection(self.quic, enable_webtransport=True)
            # What HTTP/3 holds unparsed is not consumed: the windows wait for it.
            engine.hold_by(self.quic, lambda stream_id: engine.h3_unparsed(h3, stream_id))
        elif self.h3 is None:
            return
        elif (isinstance(event, (StreamDataReceived, StreamReset, StopSendingReceived))
              and event.stream_id in self.raw):
            self._raw_event(event)
        else:
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)
            if isinstance(event, (StreamReset, StopSendingReceived)):
                self._stream_lost(event)

    def connection_ended(self, event):
        if event is None:
            clean, reason = False, "server stopping"
        elif event.reason_phrase == IDLE_REASON:
            clean, reason = False, "idle timeout"
        else:
            clean = event.error_code in CLEAN_CLOSE_CODES
            reason = f"connection closed with {event.error_code:#x}"
        self._disarm_expiry()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        self.raw.clear()
        self.h3 = None
        for session in sessions:
            if session.life.live:
                self._site.sessions_current -= 1
                session.life.move(SessionState.CLOSED)
                self._tell_closed(session, clean, reason)
            else:
                self._closed(session)

    # --- writing: the one way onto a stream ---------------------------------

    def write(self, session, data):
        """Write on ``session``'s stream; a stream that can no longer be
        written (the client's STOP_SENDING, already applied by QUIC though
        not yet heard of here) loses the session."""
        if not self._send(session.stream_id, data):
            self._broken(session)

    def _send(self, stream_id, data, end=False):
        """Write ``data`` (and a FIN) on a stream; False, writing nothing,
        once the stream can no longer be written."""
        if not writable(self.quic, stream_id):
            return False
        self.quic.send_stream_data(stream_id, data, end_stream=end)
        self.link.transmit()
        return True

    def _reset(self, stream_id):
        if writable(self.quic, stream_id):
            self.quic.reset_stream(stream_id, CANCELLED)

    def _broken(self, session):
        if self._lost is not None:
            self._lost.append(session)
        else:
            self.end_session(session, _End.LOST, "stream no longer writable")

    # --- ending a session ---------------------------------------------------

    def end_session(self, session, how, reason):
        """End one session, once: settle both its streams as ``how`` says,
        then tell its handler. Whatever the client already did to the
        streams, nothing here raises."""
        if not session.life.live:
            return
        was_joined = session.life.state is SessionState.JOINED
        session.life.move(SessionState.CLOSING if how is _End.FINISH else SessionState.CLOSED)
        self._site.sessions_current -= 1
        stream_id, connect_id = session.stream_id, session.connect_id
        if stream_id is not None:
            if how is _End.FINISH:
                self._send(stream_id, b"", end=True)
            else:
                self._reset(stream_id)
            self._drain(stream_id)
        if how is _End.FINISH:
            self._close_when_read(session, self.link.now() + LINGER_MAX)
        else:
            if how is _End.PEER_CLOSED:
                self._send(connect_id, b"", end=True)
            else:
                self._reset(connect_id)
            del self.sessions[connect_id]
        # A browser takes STOP_SENDING on CONNECT for a broken session: after
        # our own clean close, let the client end CONNECT itself.
        self._drain(connect_id, stop=how is not _End.FINISH)
        self.link.transmit()
        self._tell_closed(session, how is not _End.LOST, reason, was_joined)

    def _tell_closed(self, session, clean, reason, was_joined=False):
        self.log.debug("WebTransport session from {peer} closed: {reason}",
                       peer=describe(session.peer), reason=reason, clean=clean)
        try:
            session.handler.session_closed(clean)
        except Exception:
            self.log.failure("session handler failed at the end of {peer}",
                             peer=describe(session.peer))
        if was_joined and self.h3 is not None:
            self.link.unjoined()
            self._arm_expiry()

    def _close_when_read(self, session, deadline, acked=False):
        """Send the CLOSE capsule one poll after the client acknowledged the
        stream's data (see LINGER_POLL), or at ``deadline``; then the session
        is CLOSED."""
        session.linger = None
        if session.life.state is not SessionState.CLOSING:  # the connection ended
            return
        if acked or self.link.now() >= deadline:
            self._send(session.connect_id, encode_frame(FrameType.DATA, close_capsule()),
                       end=True)
            self.sessions.pop(session.connect_id, None)
            self._closed(session)
            return
        done = session.stream_id is None or unacked(self.quic, session.stream_id) == 0
        session.linger = self.link.call_later(
            LINGER_POLL, self._close_when_read, session, deadline, done)

    def _closed(self, session):
        """CLOSING -> CLOSED: the session's last call is cancelled."""
        if session.linger is not None and session.linger.active():
            session.linger.cancel()
        session.linger = None
        session.life.move(SessionState.CLOSED)

    def _live_session(self):
        return next((s for s in self.sessions.values() if s.life.live), None)

    # --- HTTP/3 -------------------------------------------------------------

    def _h3_event(self, event):
        if isinstance(event, HeadersReceived):
            if event.stream_id not in self.sessions:  # else trailers: ignored
                self._request(event)
        elif isinstance(event, DataReceived):
            session = self.sessions.get(event.stream_id)
            if session is not None:
                self._connect_data(session, event)
        elif isinstance(event, WebTransportStreamDataReceived):
            self._new_stream(event)
        # DatagramReceived: signalling does not use datagrams.

    def _request(self, event):
        headers = dict(event.headers)
        stream_id = event.stream_id
        path = headers.get(b":path", b"").split(b"?", 1)[0].decode("utf-8", "replace")
        if (event.stream_ended or headers.get(b":method") != b"CONNECT"
                or headers.get(b":protocol") != b"webtransport"):
            self._refuse_request(stream_id, 404, "not a WebTransport CONNECT")
        elif path != self._site.path:
            self._refuse_request(stream_id, 404, "unknown path")
        elif not self._site.origin_allowed(headers.get(b"origin")):
            self._refuse_request(stream_id, 403, "origin not allowed")
        elif self._live_session() is not None:
            self._refuse_request(stream_id, 429, "one session per connection")
        else:
            self._accept(stream_id)

    def _respond(self, stream_id, headers, end):
        """H3 headers on a request stream, unless the client already stopped it."""
        if not writable(self.quic, stream_id):
            return False
        self.h3.send_headers(stream_id, headers, end_stream=end)
        return True

    def _refuse_request(self, stream_id, status, reason):
        self._respond(stream_id, [(b":status", str(status).encode())], True)
        self._drain(stream_id)
        self.log.debug("WebTransport request from {peer} refused with {status}: {reason}",
                       peer=describe(self.link.peer), status=status, reason=reason)

    def _accept(self, connect_id):
        if not self._respond(connect_id, [(b":status", b"200"), DRAFT_HEADER], False):
            self._drain(connect_id)
            return
        peer = self.link.peer
        handler = self._site.handler_factory(peer)
        session = self.sessions[connect_id] = WebTransportSession(self, connect_id, peer, handler)
        self._site.sessions_current += 1
        self.log.debug("WebTransport session from {peer} opened", peer=describe(peer))
        try:
            handler.session_opened(session)
        except Exception:
            self.log.failure("session handler failed to open for {peer}", peer=describe(peer))
            self.end_session(session, _End.LOST, "handler failed")

    def _connect_data(self, session, event):
        """Capsules and the end of a session's CONNECT stream."""
        if session.capsules.feed(event.data):
            self.end_session(session, _End.PEER_CLOSED, "client closed the session")
        elif event.stream_ended:
            self.end_session(session, _End.PEER_CLOSED, "client ended the CONNECT stream")

    def _stream_lost(self, event):
        """A reset or STOP_SENDING of a stream H3 still parses: a session's
        CONNECT stream loses the session; a WebTransport stream reset before
        its first byte (H3 never told us of it) is closed and forgotten."""
        stream_id = event.stream_id
        session = self.sessions.get(stream_id)
        if session is not None:
            if session.life.live:
                self._lost.append(session)
        elif isinstance(event, StreamReset) and stream_id % 4 == 0:
            self._reset(stream_id)
            forget_h3_stream(self.h3, stream_id)

    def _new_stream(self, event):
        """The first data of a WebTransport stream: the session's stream if it
        is the session's first bidirectional one, else refused."""
        stream_id = event.stream_id
        forget_h3_stream(self.h3, stream_id)
        session = self.sessions.get(event.session_id)
        bidirectional = stream_id % 4 == 0  # and client-initiated
        if (session is not None and session.life.state is SessionState.CONNECT
                and bidirectional):
            session.stream_id = stream_id
            session.life.move(SessionState.AWAITING_JOIN)
            self.raw[stream_id] = session
            self._stream_data(session, event.data, event.stream_ended)
            return
        if bidirectional:
            self._reset(stream_id)
        self._drain(stream_id)

    def _raw_event(self, event):
        stream_id = event.stream_id
        session = self.raw[stream_id]
        if isinstance(event, StreamDataReceived):
            if event.end_stream:
                del self.raw[stream_id]
            if session is not None:
                self._stream_data(session, event.data, event.end_stream)
        elif isinstance(event, StreamReset):
            del self.raw[stream_id]
            if session is not None and session.life.live:
                self._lost.append(session)
        elif session is not None and session.life.live:  # STOP_SENDING: no more writes
            self._lost.append(session)

    def _stream_data(self, session, data, ended):
        """Hand the client's bytes and FIN to the handler while the session
        lives; a handler that raises loses its session, not the connection."""
        try:
            if data and session.life.live:
                session.handler.data_received(data)
            if ended and session.life.live:
                session.handler.stream_ended()
        except Exception:
            self.log.failure("session handler failed on data from {peer}",
                             peer=describe(session.peer))
            self.end_session(session, _End.LOST, "handler failed")

    def _drain(self, stream_id, stop=True):
        """Stop reading a stream we are done with (asking the client to stop
        sending, unless ``stop`` is false); what still arrives on it is
        ignored until its receive side ends."""
        forget_h3_stream(self.h3, stream_id)
        if stop:
            _stop(self.quic, stream_id)
        self.raw[stream_id] = None

    def _prune_raw(self):
        """Forget ignored streams whose receive side QUIC has closed (every
        event of this receive was handled, so none is left for them)."""
        for stream_id in [s for s, owner in self.raw.items()
                          if owner is None and not receiving(self.quic, s)]:
            del self.raw[stream_id]


class WebTransportService(Service):
    """Listens for WebTransport on ``address`` (UDP; ``port`` is the bound
    port once started, useful when configured as 0). ``handler_factory(peer)``
    makes the ISessionHandler of each accepted session; ``now`` is the
    monotonic clock QUIC runs on. ``max_pending`` and ``max_pending_per_host``
    cap the connections without a joined session (MC-wide and per source
    host); each is closed after ``no_session_seconds`` without one."""

    name = "webtransport"
    log = Logger()

    def __init__(self, address, cert_path, key_path, path, allowed_origins, handler_factory,
                 reactor, now=time.monotonic, max_pending=None, max_pending_per_host=None,
                 no_session_seconds=NO_SESSION_SECONDS):
        self.site = WebTransportSite(path, allowed_origins, handler_factory)
        self.endpoint = None
        self.port = None
        self._address = address
        self._cert_path = cert_path
        self._key_path = key_path
        self._reactor = reactor
        self._now = now
        self._max_pending = max_pending
        self._max_pending_per_host = max_pending_per_host
        self._no_session_seconds = no_session_seconds
        self._listening = None

    @property
    def sessions_current(self):
        return self.site.sessions_current

    @property
    def closing_sessions(self):
        """Sessions we finished whose CLOSE still waits for the client to
        read the last frames (a shutdown waits for them)."""
        if self.endpoint is None:
            return 0
        return sum(link.app.closing for link in self.endpoint.connections)

    @property
    def pending_connections(self):
        """Connections none of whose sessions has joined yet."""
        return len(self.endpoint.pending) if self.endpoint is not None else 0

    def startService(self):
        """Load the certificate and bind synchronously: either failing
        raises here (ConfigError naming the setting, CannotListenError), so
        start-up stops."""
        engine.check()
        configuration = server_configuration(self._cert_path, self._key_path)
        endpoint = QuicEndpoint(configuration, self._connection, self._reactor, now=self._now,
                                max_pending=self._max_pending,
                                max_pending_per_host=self._max_pending_per_host)
        self._listening = self._reactor.listenUDP(
            self._address.port, endpoint, interface=self._address.host)
        self.endpoint = endpoint
        self.port = self._listening.getHost().port
        receive_buffer = _enlarge_receive_buffer(self._listening.getHandle())
        super().startService()
        self.log.info("WebTransport on UDP {host}:{port} at path {path} (receive buffer "
                      "{receive_buffer} bytes)", host=self._address.host, port=self.port,
                      path=self.site.path, receive_buffer=receive_buffer)
        # Linux reports twice what it grants (its bookkeeping share): a full
        # grant reads 2 x asked, one capped at net.core.rmem_max less than asked.
        if receive_buffer < UDP_RECEIVE_BUFFER:
            self.log.warn("the UDP receive buffer is {receive_buffer} bytes, less than the "
                          "{asked} asked for: datagrams are dropped whenever the reactor "
                          "pauses under load. Raise net.core.rmem_max to {asked} (README, "
                          "\"Participants\")", receive_buffer=receive_buffer,
                          asked=UDP_RECEIVE_BUFFER)

    def use_configuration(self, configuration):
        """New connections use ``configuration`` (``server_configuration``
        with a rotated certificate); open ones are not touched."""
        if self.endpoint is not None:
            self.endpoint.use_configuration(configuration)

    def _connection(self, link):
        return WebTransportConnection(link, self.site, self._no_session_seconds)

    def stopService(self):
        """Close every connection (their sessions end not clean) and stop
        listening."""
        super().stopService()
        self.endpoint.close_all(ErrorCode.H3_NO_ERROR, "server stopping")
        listening, self._listening = self._listening, None
        return defer.maybeDeferred(listening.stopListening)
