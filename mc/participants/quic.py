"""QUIC on the reactor: one UDP port, many sans-I/O connections of the engine
(``mc.participants.engine``: aioquic, or qh3 for the benchmark).

The reactor owns the socket (``listenUDP``); this module does what aioquic's
asyncio ``QuicServer`` and ``QuicConnectionProtocol`` do, without asyncio:
route datagrams by connection id, keep one timer per connection, and send
each connection's output once per reactor turn. The application on top (HTTP/3
and WebTransport, ``mc.participants.webtransport``) is one object per
connection, made by ``app_factory(link)``, with two methods:

- ``quic_events(events)``: the connection's events of one receive, timer or
  send, in order (connection-id events and ``ConnectionTerminated`` are the
  endpoint's, not passed on);
- ``connection_ended(event)``: the last call, with the ``ConnectionTerminated``
  event, or None when ``close_all`` dropped the connection.

aioquic reads no clock: every call takes ``now`` from the one injected
monotonic ``now()`` (``reactor.seconds()`` is wall time and can jump).
"""

import os
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from mc.errors import ConfigError, KeyMismatch
from mc.participants.engine import (
    SMALLEST_MAX_DATAGRAM_SIZE,
    Buffer,
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    QuicErrorCode,
    QuicPacketType,
    RetryTokens,
    encode_quic_retry,
    encode_quic_version_negotiation,
    peer_address,
    pull_quic_header,
    release,
    server_connection,
    trim_after_handshake,
)

CERT_SETTING = "MC_TLS_CERT_PATH"
KEY_SETTING = "MC_TLS_KEY_PATH"


def load_certificate(configuration, cert_path, key_path):
    """Load the PEM certificate chain and its key into ``configuration``, or
    raise ConfigError naming the setting at fault (never the key's content).
    Both are checked here first: the engines' own errors name neither."""
    try:
        with open(cert_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        raise ConfigError(CERT_SETTING, f"cannot read {cert_path}: {e.strerror}") from None
    except Exception:
        raise ConfigError(CERT_SETTING, f"{cert_path} holds no PEM certificate") from None
    try:
        with open(key_path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(KEY_SETTING, f"cannot read {key_path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except Exception:
        raise ConfigError(
            KEY_SETTING, f"{key_path} holds no unencrypted PEM private key") from None
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise KeyMismatch(KEY_SETTING, f"{key_path} is not the key of {cert_path}")
    configuration.load_cert_chain(cert_path, key_path)


def _spki(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def accept_all(addr):
    return True


def describe(addr):
    """``host:port`` of a UDP address, for logs."""
    return f"{addr[0]}:{addr[1]}"


class QuicLink:
    """One connection as the endpoint keeps it: the aioquic connection, its
    application, its one timer and the connection ids routed to it."""

    def __init__(self, endpoint, quic):
        self.quic = quic
        self.app = None
        self.timer = None
        self.timer_at = None
        self.cids = set()
        self.source = None  # the host it came from, which its pending place is counted against
        self._endpoint = endpoint

    @property
    def peer(self):
        """The client's ``(host, port)`` as last seen (it can migrate)."""
        return peer_address(self.quic)

    def transmit(self):
        """Have this connection's output sent within this reactor turn."""
        self._endpoint.mark(self)

    def now(self):
        """The endpoint's monotonic clock."""
        return self._endpoint.now()

    def call_later(self, delay, fn, *args):
        """A reactor call on the connection's behalf (the caller cancels it
        when the connection ends)."""
        return self._endpoint.reactor.callLater(delay, fn, *args)

    def joined(self):
        """A session of this connection joined: it stops counting as pending."""
        self._endpoint.set_pending(self, False)

    def unjoined(self):
        """Its joined session ended: it counts as pending again."""
        self._endpoint.set_pending(self, True)

    def close(self, error_code, reason=""):
        """Close the connection (once: aioquic ignores later calls)."""
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()


class QuicEndpoint(DatagramProtocol):
    """Routes datagrams to connections by destination connection id, as
    aioquic's ``QuicServer`` does, and drives their timers and sends.

    ``accept_new(addr)`` decides whether a full-size Initial from an unknown
    connection id may create a connection. ``max_pending`` caps the
    connections none of whose sessions has joined yet (``pending``; a
    session's ``joined`` takes its connection out): past the cap a new
    connection's Initial is dropped, and from half of it on a client must
    first prove its address with aioquic's stateless retry token, so a
    handshake flood from spoofed addresses costs no state at all. A retry
    token we issued is honoured whenever it comes back, whatever the load.
    ``max_pending_per_host`` caps the pending connections of one source
    host, so one address cannot take the MC-wide cap.
    """

    log = Logger()
    noisy = False

    def __init__(self, configuration, app_factory, reactor, now=time.monotonic,
                 accept_new=accept_all, max_pending=None, max_pending_per_host=None):
        self.routes: dict[bytes, QuicLink] = {}
        self.connections: set[QuicLink] = set()
        self.pending: set[QuicLink] = set()
        self.pending_by_host: dict[str, int] = {}
        self.max_pending = max_pending
        self.max_pending_per_host = max_pending_per_host
        self.reactor = reactor
        self.now = now
        self._configuration = configuration
        self._app_factory = app_factory
        self._accept_new = accept_new
        self._retry = RetryTokens()
        self._dirty: dict[QuicLink, None] = {}  # insertion-ordered set
        self._flush_call = None

    def datagramReceived(self, data, addr):
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length)
        except ValueError:
            return
        supported = self._configuration.supported_versions
        if (header.packet_type != QuicPacketType.VERSION_NEGOTIATION
                and header.version is not None and header.version not in supported):
            # RFC 9000 5.2.2: answer only datagrams that could start a
            # connection, so the answer never amplifies a small spoofed one.
            if len(data) >= SMALLEST_MAX_DATAGRAM_SIZE:
                self._write(encode_quic_version_negotiation(
                    source_cid=header.destination_cid, destination_cid=header.source_cid,
                    supported_versions=supported), addr)
            return
        link = self.routes.get(header.destination_cid)
        if link is None:
            if (header.packet_type != QuicPacketType.INITIAL
                    or len(data) < SMALLEST_MAX_DATAGRAM_SIZE or not self._accept_new(addr)):
                return
            link = self._admit(header, addr)
            if link is None:
                return
        link.quic.receive_datagram(data, addr, now=self.now())
        self._process(link)

    def _admit(self, header, addr):
        """A connection for a new client's Initial, or None: over a pending
        cap, or a retry sent (or a bad retry token) instead."""
        cap, host = self.max_pending, addr[0]
        if cap is not None and len(self.pending) >= cap:
            return None
        if (self.max_pending_per_host is not None
                and self.pending_by_host.get(host, 0) >= self.max_pending_per_host):
            return None
        original, retry_source = header.destination_cid, None
        if header.token:
            # Only our retries carry a token (we send no NEW_TOKEN): whatever
            # the load now, the client proved its address and the token names
            # the connection id it first asked for.
            try:
                original = self._retry.validate(
                    addr, header.destination_cid, header.token, self.now())
            except ValueError:
                return None
            retry_source = header.destination_cid
        elif cap is not None and len(self.pending) >= cap // 2:
            source_cid = os.urandom(8)
            self._write(encode_quic_retry(
                version=header.version, source_cid=source_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=self._retry.create(
                    addr, header.destination_cid, source_cid, self.now())), addr)
            return None
        return self._new_link(header.destination_cid, original, retry_source, host)

    def _new_link(self, cid, original_cid, retry_source_cid=None, host=None):
        quic = server_connection(self._configuration, original_cid, retry_source_cid)
        link = QuicLink(self, quic)
        link.source = host
        self.connections.add(link)
        self.set_pending(link, True)
        link.app = self._app_factory(link)
        for routed in (cid, quic.host_cid):
            self.routes[routed] = link
            link.cids.add(routed)
        return link

    def set_pending(self, link, pending):
        """Count ``link`` as pending (no joined session) or not, MC-wide and
        against its source host."""
        if pending == (link in self.pending) or (pending and link not in self.connections):
            return
        counts, host = self.pending_by_host, link.source
        if pending:
            self.pending.add(link)
            counts[host] = counts.get(host, 0) + 1
        else:
            self.pending.discard(link)
            counts[host] -= 1
            if not counts[host]:
                del counts[host]

    def mark(self, link):
        """Queue ``link`` for the flush; one ``callLater(0)`` serves every
        connection that has output in this reactor turn."""
        self._dirty[link] = None
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self):
        """Send every dirty connection's datagrams, then re-arm its timer.
        Each receive and timer marks its connection dirty, so this re-arms
        after every receive, timer and send."""
        self._flush_call = None
        dirty, self._dirty = self._dirty, {}
        for link in dirty:
            if link not in self.connections:
                continue
            for data, addr in link.quic.datagrams_to_send(now=self.now()):
                self._write(data, addr)
            # Sending NEW_CONNECTION_ID frames queues ConnectionIdIssued: route
            # the new ids before the peer can use them.
            self._process(link, sent=True)
            if link in self.connections:
                self._arm(link)

    def _write(self, data, addr):
        try:
            self.transport.write(data, addr)
        except (OSError, MessageLengthError) as e:
            # QUIC recovers a lost datagram; the other connections' sends go on.
            self.log.warn("UDP send to {peer} failed: {reason}", peer=describe(addr), reason=e)

    def _arm(self, link):
        """Keep one reactor call at aioquic's deadline; touch it only when
        the deadline changed."""
        timer_at = link.quic.get_timer()
        if link.timer is not None and link.timer_at != timer_at:
            link.timer.cancel()
            link.timer = None
        if link.timer is None and timer_at is not None:
            link.timer = self.reactor.callLater(
                max(0.0, timer_at - self.now()), self._timer_fired, link)
        link.timer_at = timer_at

    def _timer_fired(self, link):
        # The reactor may fire a little before the monotonic deadline, and
        # handle_timer does nothing when called early.
        now = max(link.timer_at, self.now())
        link.timer = link.timer_at = None
        link.quic.handle_timer(now=now)
        self._process(link)

    def _process(self, link, sent=False):
        """Route connection-id events here, hand the rest to the application,
        end the connection on ConnectionTerminated; then have its output sent
        (after a send, only if the application got events)."""
        batch, ended = [], None
        while (event := link.quic.next_event()) is not None:
            if isinstance(event, ConnectionIdIssued):
                self.routes[event.connection_id] = link
                link.cids.add(event.connection_id)
            elif isinstance(event, ConnectionIdRetired):
                self.routes.pop(event.connection_id, None)
                link.cids.discard(event.connection_id)
            elif isinstance(event, ConnectionTerminated):
                ended = event
            else:
                if isinstance(event, HandshakeCompleted):
                    trim_after_handshake(link.quic)
                batch.append(event)
        if batch:
            try:
                link.app.quic_events(batch)
            except Exception:
                # The connection's state is unknown now: end it rather than
                # let it limp on.
                self.log.failure("QUIC application failed; closing the connection from {peer}",
                                 peer=describe(link.peer))
                link.quic.close(error_code=QuicErrorCode.INTERNAL_ERROR)
        if ended is not None:
            self._end(link, ended)
        elif batch or not sent:
            self.mark(link)

    def _end(self, link, event):
        """Forget the connection: every id routed to it, its timer, its place
        in the flush; then tell its application, once, and break the
        cycles of both (link and application, the engine's connection) so
        that reference counting frees them, not a full collection."""
        if link not in self.connections:
            return
        self.set_pending(link, False)
        self.connections.discard(link)
        for cid in link.cids:
            self.routes.pop(cid, None)
        link.cids.clear()
        if link.timer is not None:
            link.timer.cancel()
            link.timer = link.timer_at = None
        self._dirty.pop(link, None)
        app, link.app = link.app, None
        try:
            app.connection_ended(event)
        except Exception:
            self.log.failure("QUIC application failed at the end of a connection")
        release(link.quic)

    def use_configuration(self, configuration):
        """New connections use ``configuration`` (a rotated certificate);
        each open connection keeps the one it was made with."""
        self._configuration = configuration

    def close_all(self, error_code=QuicErrorCode.NO_ERROR, reason=""):
        """Close every connection now (CONNECTION_CLOSE is sent at once, no
        closing period is waited for) and forget them all."""
        for link in list(self.connections):
            link.quic.close(error_code=error_code, reason_phrase=reason)
            for data, addr in link.quic.datagrams_to_send(now=self.now()):
                self._write(data, addr)
            self._end(link, None)
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
