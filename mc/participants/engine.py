"""The QUIC and HTTP/3 engine: the one module that imports it.

Two engines share aioquic's sans-I/O API: aioquic itself (production, pinned
in setup.py) and qh3, its fork with compiled cryptography (and, from 2.0, a
compiled QUIC core), kept as a choice so the participant benchmark can run
both on the same load. ``MC_QUIC_ENGINE`` (``mc.config.QUIC_ENGINE``) picks
one when this module is first imported: the participant layer's classes are
bound at import, so it is read from the environment, not from a flag.

The layer reads a few of the engine's private attributes; the accessors
below are the only places that do, and ``check()``, run once when the
WebTransport service starts, verifies every one of them on real objects of
the engine so that an upgrade that moved one fails start-up with a message
that names it, rather than the first participant's session.
"""

import functools
import importlib
import importlib.metadata
import os

from mc.config import QUIC_ENGINE, quic_engine
from mc.errors import ConfigError

NAME = quic_engine(os.environ)

#: RFC 9000 14.1: the size a client's first Initial is padded to, and below
#: which a datagram must not be answered (qh3 1.x does not export it).
SMALLEST_MAX_DATAGRAM_SIZE = 1200

_BUFFER_MODULE = {"aioquic": "aioquic.buffer", "qh3": "qh3._hazmat"}[NAME]


def _import(module):
    return importlib.import_module(f"{NAME}.{module}")


_buffer = importlib.import_module(_BUFFER_MODULE)
_h3 = _import("h3.connection")
_h3_events = _import("h3.events")
_configuration = _import("quic.configuration")
_connection = _import("quic.connection")
_events = _import("quic.events")
_packet = _import("quic.packet")
_retry = _import("quic.retry")

VERSION = importlib.metadata.version(NAME)

Buffer = _buffer.Buffer
BufferReadError = _buffer.BufferReadError
encode_uint_var = _buffer.encode_uint_var

H3_ALPN = _h3.H3_ALPN
H3Connection = _h3.H3Connection
H3ErrorCode = _h3.ErrorCode
FrameType = _h3.FrameType
encode_frame = _h3.encode_frame
DataReceived = _h3_events.DataReceived
HeadersReceived = _h3_events.HeadersReceived
WebTransportStreamDataReceived = _h3_events.WebTransportStreamDataReceived

QuicConfiguration = _configuration.QuicConfiguration
QuicConnection = _connection.QuicConnection
ConnectionIdIssued = _events.ConnectionIdIssued
ConnectionIdRetired = _events.ConnectionIdRetired
ConnectionTerminated = _events.ConnectionTerminated
HandshakeCompleted = _events.HandshakeCompleted
ProtocolNegotiated = _events.ProtocolNegotiated
StopSendingReceived = _events.StopSendingReceived
StreamDataReceived = _events.StreamDataReceived
StreamReset = _events.StreamReset
QuicErrorCode = _packet.QuicErrorCode
QuicPacketType = _packet.QuicPacketType
encode_quic_retry = _packet.encode_quic_retry
encode_quic_version_negotiation = _packet.encode_quic_version_negotiation
pull_quic_header = _packet.pull_quic_header


#: The receive windows the MC grants (the contract's "flow control is the
#: MC's"): per stream, a signalling frame (64 KiB and its length) with as much
#: again of headroom; per connection, twice that. They slide forward only as
#: the application consumes what arrived, and never grow: a client's data
#: past them is a FLOW_CONTROL_ERROR that closes its connection, and the
#: bytes it can make the MC hold (gaps it leaves included) stay within
#: CONNECTION_WINDOW whatever offsets it sends.
STREAM_WINDOW = 128 * 1024
CONNECTION_WINDOW = 2 * STREAM_WINDOW


def _no_bytes_held(stream_id):
    return 0


class _BoundedQuicConnection(QuicConnection):
    """aioquic's connection with fixed receive windows.

    aioquic doubles a window whenever the highest offset received passes half
    of it, read or not (``_write_connection_limits``, ``_write_stream_limits``):
    one byte at the last allowed offset, at each update, grows it
    exponentially. Here a window is re-granted as ``consumed + WINDOW`` once
    less than half of it is left, where ``consumed`` is what reached the
    application and left it: ``held(stream_id)``, set by the application,
    says how much of what it received it still holds (HTTP/3's unparsed
    bytes)."""

    held = staticmethod(_no_bytes_held)

    def _unread(self, stream):
        receiver = stream.receiver
        return receiver.highest_offset - receiver._buffer_start + self.held(stream.stream_id)

    def _write_connection_limits(self, builder, space):
        max_data = self._local_max_data
        if max_data.value - max_data.used < CONNECTION_WINDOW // 2:
            unread = sum(self._unread(s) for s in self._streams.values())
            max_data.value = max(max_data.value, max_data.used - unread + CONNECTION_WINDOW)
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue  # aioquic's batching of MAX_STREAMS, kept
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type, capacity=_connection.CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery, handler_args=(limit,))
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    def _write_stream_limits(self, builder, space, stream):
        window = stream.max_stream_data_local
        if not window or stream.receiver.is_finished:
            return  # a stream of ours that only sends, or nothing more to receive
        if window - stream.receiver.highest_offset < STREAM_WINDOW // 2:
            consumed = stream.receiver._buffer_start - self.held(stream.stream_id)
            stream.max_stream_data_local = max(window, consumed + STREAM_WINDOW)
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                _packet.QuicFrameType.MAX_STREAM_DATA,
                capacity=_connection.MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery, handler_args=(stream,))
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


def bound_windows(configuration):
    """Start every connection made with ``configuration`` at the MC's
    windows (the client learns them in the handshake)."""
    configuration.max_stream_data = STREAM_WINDOW
    configuration.max_data = CONNECTION_WINDOW


def server_connection(configuration, original_cid, retry_source_cid):
    """The engine's connection for a client that reached the MC, whose
    windows slide but never grow (``bound_windows`` sets where they start).
    Under qh3 (the benchmark's choice only) the engine's own window growth
    stays: its compiled core offers no hook."""
    cls = _BoundedQuicConnection if NAME == "aioquic" else QuicConnection
    return cls(configuration=configuration, original_destination_connection_id=original_cid,
               retry_source_connection_id=retry_source_cid)


def hold_by(quic, held):
    """Have ``quic``'s windows count ``held(stream_id)`` bytes of each stream
    as still unread (the application's own buffers)."""
    if isinstance(quic, _BoundedQuicConnection):
        quic.held = held


def h3_unparsed(h3, stream_id):
    """Bytes HTTP/3 received on a stream and holds, unparsed (a frame not
    complete yet)."""
    stream = h3._stream.get(stream_id)
    return 0 if stream is None else len(stream.buffer)


def asyncio_protocol():
    """The engine's asyncio ``QuicConnectionProtocol``, for clients (tests,
    the benchmark's load generator); the MC itself runs on the reactor."""
    return _import("asyncio.protocol").QuicConnectionProtocol


class RetryTokens:
    """Stateless retry tokens (RFC 9000 8.1.2) with one signature whatever
    the engine: ``create`` a token for a client's address, ``validate`` one
    back into the original destination connection id (ValueError if it is
    not ours, not for this address or not for this connection id)."""

    def __init__(self):
        self._handler = _retry.QuicRetryTokenHandler()

    def create(self, addr, original_cid, retry_source_cid, now):
        if NAME == "aioquic":
            return self._handler.create_token(
                address=addr, original_destination_connection_id=original_cid,
                retry_source_connection_id=retry_source_cid, now=now)
        return self._handler.create_token(addr, original_cid, retry_source_cid)

    def validate(self, addr, destination_cid, token, now):
        if NAME == "aioquic":
            return self._handler.validate_token(
                address=addr, destination_cid=destination_cid, token=token, now=now)
        original_cid, retry_source_cid = self._handler.validate_token(addr, token)
        if retry_source_cid != destination_cid:
            raise ValueError("retry token is for another connection id")
        return original_cid


# The private attributes the layer reads: these accessors, and check().

def forget_h3_stream(h3, stream_id):
    """H3Connection keeps an entry per stream until the stream ends in both
    directions in its own view; a stream whose data bypasses it never does."""
    h3._stream.pop(stream_id, None)


def unacked(quic, stream_id):
    """Bytes written on the stream that the client has not acknowledged
    (aioquic's sender keeps exactly those, from its first unacknowledged
    offset on). qh3's compiled core tells only the bytes not sent yet: under
    qh3 this counts those."""
    if NAME == "qh3":
        return quic.get_send_buffer_size(stream_id)
    stream = quic._streams.get(stream_id)
    if stream is None:  # finished and discarded: everything was acknowledged
        return 0
    return stream.sender._buffer_stop - stream.sender._buffer_start


def writable(quic, stream_id):
    """True while data or a FIN may still be written on the stream: not
    finished or reset by us, not reset by the engine for the client's
    STOP_SENDING (applied as the frame arrives, before its event is handed
    on), not discarded. qh3's compiled core shows no stream state: under qh3
    this says True and a write it refuses raises (the endpoint then closes
    that connection)."""
    if NAME == "qh3":
        return True
    stream = quic._streams.get(stream_id)
    if stream is None:
        return False
    sender = stream.sender
    return (sender._buffer_fin is None and sender._reset_error_code is None
            and not sender.is_finished)


def receiving(quic, stream_id):
    """True while the client may still send on the stream (under qh3: while
    the stream was not seen to end, which the layer tracks itself)."""
    if NAME == "qh3":
        return True
    stream = quic._streams.get(stream_id)
    return stream is not None and not stream.receiver.is_finished


def peer_address(quic):
    """The client's ``(host, port)`` as last seen (it can migrate); qh3's
    compiled core keeps it in a private attribute."""
    if NAME == "qh3":
        return tuple(quic._remote_addr[:2])
    return tuple(quic.get_peer_address()[:2])


def trim_after_handshake(quic):
    """Release what a server connection keeps only for its handshake.
    aioquic keeps three 16 KiB TLS output buffers (one per epoch) for the
    connection's life, though a QUIC server writes no TLS message after its
    handshake unless it issues session tickets, which the MC does not:
    about 24 KiB resident per participant (bench/results.md). qh3's
    compiled core keeps its own state: nothing to do there."""
    if NAME == "aioquic":
        buffers = quic._crypto_buffers
        for epoch in buffers:
            buffers[epoch] = Buffer(capacity=0)


def release(quic):
    """Break a forgotten connection's reference cycles (its frame-handler
    table, loss recovery and TLS callbacks hold bound methods of it), so
    that reference counting frees it at once instead of a full collection
    walking it: the connection is unusable afterwards."""
    quic.__dict__.clear()


if NAME == "aioquic":
    # Every aioquic connection builds its frame-handler table from ~34 new
    # frozensets of epochs; they are immutable, so one set can be shared.
    _connection.EPOCHS = functools.lru_cache(maxsize=None)(_connection.EPOCHS)


def _probes():
    """A client-side connection, its H3 layer and a stream of the engine:
    real objects to look the private attributes up on."""
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN))
    probes = {"QuicConnection": quic, "H3Connection": H3Connection(quic, enable_webtransport=True),
              "quic.connection": _connection}
    if NAME == "aioquic":
        stream = _import("quic.stream").QuicStream(stream_id=0)
        probes["QuicStream.sender"] = stream.sender
        probes["QuicStream.receiver"] = stream.receiver
        probes["QuicStream"] = stream
    return probes


#: What each engine must have, by probe: the names the accessors above use.
REQUIRED = {
    "aioquic": {
        "QuicConnection": ("_streams", "get_peer_address", "_crypto_buffers", "__dict__",
                           "_local_max_data", "_local_max_streams_bidi",
                           "_local_max_streams_uni", "_on_connection_limit_delivery",
                           "_on_max_stream_data_delivery", "_write_connection_limits",
                           "_write_stream_limits"),
        "quic.connection": ("EPOCHS", "CONNECTION_LIMIT_FRAME_CAPACITY",
                            "MAX_STREAM_DATA_FRAME_CAPACITY"),
        "H3Connection": ("_stream",),
        "QuicStream.sender": ("_buffer_start", "_buffer_stop", "_buffer_fin",
                              "_reset_error_code", "is_finished"),
        "QuicStream.receiver": ("is_finished", "highest_offset", "_buffer_start"),
        "QuicStream": ("max_stream_data_local", "max_stream_data_local_sent"),
    },
    "qh3": {
        "QuicConnection": ("get_send_buffer_size", "_remote_addr", "__dict__"),
        "H3Connection": ("_stream",),
    },
}


def check(required=None):
    """Raise ConfigError naming the engine, its version and every attribute
    the layer relies on that it no longer has. ``required`` defaults to this
    engine's entry of REQUIRED."""
    required = REQUIRED[NAME] if required is None else required
    probes = _probes()
    missing = [f"{what}.{attr}" for what, attrs in required.items()
               for attr in attrs if not hasattr(probes[what], attr)]
    if missing:
        raise ConfigError(
            QUIC_ENGINE.env,
            f"{NAME} {VERSION} lacks {', '.join(missing)}, which the participant layer "
            f"relies on: use the version setup.py pins, or port mc/participants/engine.py")
