"""A client that breaks the rules on purpose, for the tests of the
participant port's bounds: QUIC frames of its choosing (a STREAM frame at any
offset, a FIN, RESET_STREAM, STOP_SENDING), several of them in one datagram,
whatever its own state says.

``HostileConnection`` is the engine's client connection with ``inject``:
frames given there go, in the order given, into the next 1-RTT packet it
builds (one datagram), after what it would send anyway. ``send_frames``
makes it build that packet now.
"""

from mc.participants.engine import QuicConnection, encode_frame, encode_uint_var

#: QUIC frame types (RFC 9000 19).
RESET_STREAM = 0x04
STOP_SENDING = 0x05
STREAM = 0x08
_OFF, _LEN, _FIN = 0x04, 0x02, 0x01
H3_DATA = 0x00


class HostileConnection(QuicConnection):
    """Sends the frames queued with ``inject`` as they are."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._injected = []

    def inject(self, *frames):
        """``(frame_type, body)`` pairs, sent in the next application packet."""
        self._injected.extend(frames)

    def _write_connection_limits(self, builder, space):
        super()._write_connection_limits(builder, space)
        frames, self._injected = self._injected, []
        for frame_type, body in frames:
            builder.start_frame(frame_type, capacity=len(body)).push_bytes(body)


def _varints(*values):
    return b"".join(encode_uint_var(v) for v in values)


def stream_frame(stream_id, offset, data=b"", fin=False):
    """STREAM carrying ``data`` at ``offset`` (and the FIN when ``fin``)."""
    frame_type = STREAM | _OFF | _LEN | (_FIN if fin else 0)
    return frame_type, _varints(stream_id, offset, len(data)) + data


def stop_sending(stream_id, code=0x10C):
    return STOP_SENDING, _varints(stream_id, code)


def reset_stream(stream_id, final_size, code=0x10C):
    return RESET_STREAM, _varints(stream_id, code, final_size)


def h3_data(payload):
    """An HTTP/3 DATA frame (what a CONNECT stream's capsules travel in)."""
    return encode_frame(H3_DATA, payload)


def sent_offset(client, stream_id):
    """How far the client's own sender got on a stream: the next offset."""
    return client._quic._streams[stream_id].sender._buffer_stop


def window(client, stream_id):
    """The server's current window (MAX_STREAM_DATA) for a stream."""
    return client._quic._streams[stream_id].max_stream_data_remote


def connection_window(client):
    """The server's current MAX_DATA."""
    return client._quic._remote_max_data


def send_frames(client, *frames):
    """Put ``frames`` in one datagram now (with a PING to make sure a packet
    is built)."""
    client._quic.inject(*frames)
    client._quic.send_ping(0)
    client.transmit()


__all__ = ["HostileConnection", "connection_window", "h3_data", "reset_stream",
           "send_frames", "sent_offset", "stop_sending", "stream_frame", "window"]
