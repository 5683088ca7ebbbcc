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
"""

import contextlib
import socket
import time
from enum import Enum

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
    unacked,
)
from mc.participants.engine import H3ErrorCode as ErrorCode
from mc.participants.quic import QuicEndpoint, describe, load_certificate

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
    settings, 30 s idle timeout), with the certificate loaded or ConfigError."""
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
        idle_timeout=IDLE_TIMEOUT)
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
    """One accepted session: its CONNECT stream and the client's stream."""

    def __init__(self, connection, connect_id, peer, handler):
        self.peer = peer
        self.handler = handler
        self.connect_id = connect_id
        self.stream_id = None
        self.open = True
        self.connect_receiving = True  # until the client's FIN or reset of CONNECT
        self.can_send = True  # until the client's STOP_SENDING on its stream
        self.capsules = _CapsuleReader()
        self._connection = connection

    @property
    def stream_open(self):
        return self.stream_id is not None

    @property
    def buffered(self):
        if not self.open or self.stream_id is None:
            return 0
        return unacked(self._connection.quic, self.stream_id)

    def write(self, data):
        if self.open and self.stream_id is not None and self.can_send:
            self._connection.quic.send_stream_data(self.stream_id, data)
            self._connection.link.transmit()

    def joined(self):
        self._connection.link.joined()

    def finish(self):
        if self.open:
            self._connection.end_session(self, _End.FINISH, "finished")

    def abort(self):
        if self.open:
            self._connection.end_session(self, _End.LOST, "aborted")


class WebTransportSite:
    """What the sessions of every connection share: the path and origins
    accepted, the handler factory, the count of open sessions."""

    def __init__(self, path, allowed_origins, handler_factory):
        self.path = path or "/"
        self.allowed_origins = frozenset(allowed_origins)
        self.handler_factory = handler_factory
        self.sessions_current = 0


class WebTransportConnection:
    """HTTP/3 with WebTransport on one QUIC connection: the application of
    ``QuicEndpoint`` for that connection."""

    log = Logger()

    def __init__(self, link, site):
        self.link = link
        self.h3 = None
        self.sessions: dict[int, WebTransportSession] = {}  # by CONNECT stream id
        # Streams whose QUIC events bypass H3 until their receive side ends:
        # a session's stream, or None for one drained and ignored.
        self.taken: dict[int, WebTransportSession | None] = {}
        self._site = site
        self._lost: list[WebTransportSession] = []
        self._lingering = {}  # CONNECT stream id -> the call that will close it

    @property
    def quic(self):
        return self.link.quic

    @property
    def closing(self):
        """Sessions finished here whose CLOSE capsule still waits."""
        return len(self._lingering)

    def quic_events(self, events):
        for event in events:
            if isinstance(event, ProtocolNegotiated):
                self.h3 = H3Connection(self.quic, enable_webtransport=True)
            elif self.h3 is None:
                continue
            elif (isinstance(event, (StreamDataReceived, StreamReset, StopSendingReceived))
                  and event.stream_id in self.taken):
                self._taken_event(event)
            else:
                for h3_event in self.h3.handle_event(event):
                    self._h3_event(h3_event)
                if isinstance(event, (StreamReset, StopSendingReceived)):
                    self._stream_lost(event)
        # A client closing a session may reset its stream just before its
        # CLOSE capsule or FIN: only a reset the same receive does not
        # explain loses the session.
        lost, self._lost = self._lost, []
        for session in lost:
            if session.open:
                self.end_session(session, _End.LOST, "stream reset")

    def connection_ended(self, event):
        if event is None:
            clean, reason = False, "server stopping"
        elif event.reason_phrase == IDLE_REASON:
            clean, reason = False, "idle timeout"
        else:
            clean = event.error_code in CLEAN_CLOSE_CODES
            reason = f"connection closed with {event.error_code:#x}"
        sessions = list(self.sessions.values())
        self.sessions.clear()
        self.taken.clear()
        self.h3 = None
        for call in self._lingering.values():
            if call.active():
                call.cancel()
        self._lingering.clear()
        for session in sessions:
            try:
                self._closed(session, clean, reason)
            except Exception:
                self.log.failure("session handler failed at the end of {peer}",
                                 peer=describe(session.peer))

    def end_session(self, session, how, reason):
        """End one session: settle both its streams as ``how`` says, then
        tell its handler."""
        del self.sessions[session.connect_id]
        stream_id = session.stream_id
        if stream_id is not None:
            if how is _End.FINISH and session.can_send:
                self.quic.send_stream_data(stream_id, b"", end_stream=True)
            else:
                self.quic.reset_stream(stream_id, CANCELLED)
            if stream_id in self.taken:
                self.quic.stop_stream(stream_id, CANCELLED)
                self.taken[stream_id] = None
        connect_id = session.connect_id
        if how is _End.FINISH:
            self._close_when_read(connect_id, stream_id, self.link.now() + LINGER_MAX)
        elif how is _End.PEER_CLOSED:
            self.quic.send_stream_data(connect_id, b"", end_stream=True)
        else:
            self.quic.reset_stream(connect_id, CANCELLED)
        # A browser takes STOP_SENDING on CONNECT for a broken session: after
        # our own clean close, let the client end CONNECT itself.
        self._drain(connect_id, session.connect_receiving, stop=how is not _End.FINISH)
        self.link.transmit()
        self._closed(session, how is not _End.LOST, reason)

    def _close_when_read(self, connect_id, stream_id, deadline, acked=False):
        """Send the CLOSE capsule one poll after the client acknowledged the
        stream's data (see LINGER_POLL), or at ``deadline``."""
        self._lingering.pop(connect_id, None)
        if self.h3 is None:  # the connection ended meanwhile
            return
        if acked or self.link.now() >= deadline:
            self.quic.send_stream_data(
                connect_id, encode_frame(FrameType.DATA, close_capsule()), end_stream=True)
            self.link.transmit()
            return
        done = stream_id is None or unacked(self.quic, stream_id) == 0
        self._lingering[connect_id] = self.link.call_later(
            LINGER_POLL, self._close_when_read, connect_id, stream_id, deadline, done)

    def _closed(self, session, clean, reason):
        session.open = False
        self._site.sessions_current -= 1
        self.log.debug("WebTransport session from {peer} closed: {reason}",
                      peer=describe(session.peer), reason=reason, clean=clean)
        session.handler.session_closed(clean)

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
        origin = headers.get(b"origin")
        if (event.stream_ended or headers.get(b":method") != b"CONNECT"
                or headers.get(b":protocol") != b"webtransport"):
            self._refuse_request(stream_id, 404, "not a WebTransport CONNECT", event)
        elif path != self._site.path:
            self._refuse_request(stream_id, 404, "unknown path", event)
        elif (origin is not None and self._site.allowed_origins
              and origin.decode("utf-8", "replace") not in self._site.allowed_origins):
            # No origin at all is a native client, not a browser on another site.
            self._refuse_request(stream_id, 403, "origin not allowed", event)
        else:
            self._accept(stream_id)

    def _refuse_request(self, stream_id, status, reason, event):
        self.h3.send_headers(stream_id, [(b":status", str(status).encode())], end_stream=True)
        self._drain(stream_id, not event.stream_ended)
        self.log.debug("WebTransport request from {peer} refused with {status}: {reason}",
                      peer=describe(self.link.peer), status=status, reason=reason)

    def _accept(self, connect_id):
        peer = self.link.peer
        handler = self._site.handler_factory(peer)
        self.h3.send_headers(connect_id, [(b":status", b"200"), DRAFT_HEADER])
        session = self.sessions[connect_id] = WebTransportSession(self, connect_id, peer, handler)
        self._site.sessions_current += 1
        self.log.debug("WebTransport session from {peer} opened", peer=describe(peer))
        handler.session_opened(session)

    def _connect_data(self, session, event):
        """Capsules and the end of a session's CONNECT stream."""
        closing = session.capsules.feed(event.data)
        if event.stream_ended:
            session.connect_receiving = False
        if closing:
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
            if isinstance(event, StreamReset):
                session.connect_receiving = False
                self.end_session(session, _End.LOST, "CONNECT stream reset")
            else:
                self.end_session(session, _End.LOST, "CONNECT stream stopped")
        elif isinstance(event, StreamReset) and stream_id % 4 == 0:
            self.quic.reset_stream(stream_id, CANCELLED)
            forget_h3_stream(self.h3, stream_id)

    def _new_stream(self, event):
        """The first data of a WebTransport stream: the session's stream if it
        is the session's first bidirectional one, else refused."""
        stream_id = event.stream_id
        forget_h3_stream(self.h3, stream_id)
        session = self.sessions.get(event.session_id)
        bidirectional = stream_id % 4 == 0  # and client-initiated
        if session is not None and session.stream_id is None and bidirectional:
            session.stream_id = stream_id
            if not event.stream_ended:
                self.taken[stream_id] = session
            self._stream_data(session, event.data, event.stream_ended)
            return
        if bidirectional:
            self.quic.reset_stream(stream_id, CANCELLED)
        self._drain(stream_id, not event.stream_ended)

    def _taken_event(self, event):
        stream_id = event.stream_id
        session = self.taken[stream_id]
        if isinstance(event, StreamDataReceived):
            if event.end_stream:
                del self.taken[stream_id]
            if session is not None:
                self._stream_data(session, event.data, event.end_stream)
        elif isinstance(event, StreamReset):
            del self.taken[stream_id]
            if session is not None:
                self._lost.append(session)
        elif session is not None:  # STOP_SENDING: the client will not read it
            session.can_send = False
            self._lost.append(session)

    def _stream_data(self, session, data, ended):
        if data:
            session.handler.data_received(data)
        if ended and session.open:
            session.handler.stream_ended()

    def _drain(self, stream_id, receiving, stop=True):
        """Stop reading a stream we are done with (asking the client to stop
        sending, unless ``stop`` is false); what still arrives on it is
        ignored until its receive side ends."""
        forget_h3_stream(self.h3, stream_id)
        if receiving:
            if stop:
                self.quic.stop_stream(stream_id, CANCELLED)
            self.taken[stream_id] = None


class WebTransportService(Service):
    """Listens for WebTransport on ``address`` (UDP; ``port`` is the bound
    port once started, useful when configured as 0). ``handler_factory(peer)``
    makes the ISessionHandler of each accepted session; ``now`` is the
    monotonic clock QUIC runs on."""

    name = "webtransport"
    log = Logger()

    def __init__(self, address, cert_path, key_path, path, allowed_origins, handler_factory,
                 reactor, now=time.monotonic, max_pending=None):
        self.site = WebTransportSite(path, allowed_origins, handler_factory)
        self.endpoint = None
        self.port = None
        self._address = address
        self._cert_path = cert_path
        self._key_path = key_path
        self._reactor = reactor
        self._now = now
        self._max_pending = max_pending
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
                                max_pending=self._max_pending)
        self._listening = self._reactor.listenUDP(
            self._address.port, endpoint, interface=self._address.host)
        self.endpoint = endpoint
        self.port = self._listening.getHost().port
        receive_buffer = _enlarge_receive_buffer(self._listening.getHandle())
        super().startService()
        self.log.info("WebTransport on UDP {host}:{port} at path {path} (receive buffer "
                      "{receive_buffer} bytes)", host=self._address.host, port=self.port,
                      path=self.site.path, receive_buffer=receive_buffer)

    def use_configuration(self, configuration):
        """New connections use ``configuration`` (``server_configuration``
        with a rotated certificate); open ones are not touched."""
        if self.endpoint is not None:
            self.endpoint.use_configuration(configuration)

    def _connection(self, link):
        return WebTransportConnection(link, self.site)

    def stopService(self):
        """Close every connection (their sessions end not clean) and stop
        listening."""
        super().stopService()
        self.endpoint.close_all(ErrorCode.H3_NO_ERROR, "server stopping")
        listening, self._listening = self._listening, None
        return defer.maybeDeferred(listening.stopListening)
