"""A small WebTransport client on the engine's asyncio API (aioquic's, or
qh3's: ``mc.participants.engine``), for tests and the benchmark.

``await connect(host, port)`` gives a ``WebTransportClient`` (one QUIC
connection); ``await client.open_session(path, origin)`` sends the extended
CONNECT and gives a ``ClientSession`` with the response ``status``;
``session.open_stream()`` opens a bidirectional ``ClientStream`` (send,
receive, read_exactly, FIN, reset), ``session.close()`` sends the CLOSE
capsule. The client can also
close the QUIC connection with any error code, or ``vanish()``: send nothing
more at all, so that the server's idle timeout fires.

``LoopThread`` hosts an asyncio loop on a daemon thread so synchronous code
(and pytest-twisted tests, through ``deferToThread``) can drive all of this:
``thread.run(fn, *args, timeout=...)`` runs ``fn`` on the loop, awaits it when
it is a coroutine, and never blocks longer than ``timeout``.
"""

import asyncio
import socket
import ssl
import threading

from mc.participants.engine import (
    H3_ALPN,
    Buffer,
    BufferReadError,
    DataReceived,
    H3Connection,
    HeadersReceived,
    QuicConfiguration,
    QuicConnection,
    StreamDataReceived,
    StreamReset,
    asyncio_protocol,
    encode_uint_var,
)

CLOSE_WEBTRANSPORT_SESSION = 0x2843


async def _wait(event, predicate, timeout):
    """Wait until ``predicate()``, re-checking whenever ``event`` is set."""
    async def loop():
        while not predicate():
            event.clear()
            await event.wait()
    await asyncio.wait_for(loop(), timeout)


class ClientStream:
    """A bidirectional WebTransport stream the client opened."""

    def __init__(self, client, stream_id):
        self.stream_id = stream_id
        self.data = bytearray()  # received, not read yet
        self.ended = False  # the server's FIN
        self.reset_code = None  # the server's RESET_STREAM
        self._changed = asyncio.Event()
        self._client = client

    @property
    def closed(self):
        return self.ended or self.reset_code is not None

    def send(self, data, fin=False):
        self._client._quic.send_stream_data(self.stream_id, data, end_stream=fin)
        self._client.transmit()

    def reset(self, code=0):
        self._client._quic.reset_stream(self.stream_id, code)
        self._client.transmit()

    async def receive(self, timeout=5.0):
        """The bytes received since the last read, waiting for some (b"" once
        the stream is closed)."""
        await _wait(self._changed, lambda: self.data or self.closed, timeout)
        return self._take(len(self.data))

    async def read_exactly(self, n, timeout=5.0):
        """``n`` bytes, for framed protocols; IncompleteReadError if the
        stream closes first."""
        await _wait(self._changed, lambda: len(self.data) >= n or self.closed, timeout)
        if len(self.data) < n:
            raise asyncio.IncompleteReadError(bytes(self.data), n)
        return self._take(n)

    async def wait_closed(self, timeout=5.0):
        """Wait for the server's FIN or reset; return the bytes not read yet."""
        await _wait(self._changed, lambda: self.closed, timeout)
        return self._take(len(self.data))

    def _take(self, n):
        data = bytes(self.data[:n])
        del self.data[:n]
        return data

    def _feed(self, data=b"", ended=False, reset_code=None):
        self.data += data
        self.ended = self.ended or ended
        if reset_code is not None:
            self.reset_code = reset_code
        self._changed.set()


class ClientSession:
    """One WebTransport session: its CONNECT stream and the streams opened in it."""

    def __init__(self, client, connect_id):
        self.connect_id = connect_id
        self.status = None
        self.headers = {}
        self.response = asyncio.get_running_loop().create_future()
        self.close_code = None  # the server's CLOSE_WEBTRANSPORT_SESSION code
        self.connect_ended = False  # the server's FIN of CONNECT
        self.connect_reset_code = None
        self.ended_by_us = False  # our FIN of CONNECT was sent
        self._changed = asyncio.Event()
        self._client = client

    def open_stream(self):
        stream_id = self._client.h3.create_webtransport_stream(self.connect_id)
        stream = self._client.streams[stream_id] = ClientStream(self._client, stream_id)
        self._client.transmit()
        return stream

    def send_capsule(self, capsule_type, value=b""):
        """Any capsule on the CONNECT stream (a GREASE one, say)."""
        self._client.h3.send_data(self.connect_id, _capsule(capsule_type, value), False)
        self._client.transmit()

    def close(self, code=0, reason=b""):
        """Close the session: CLOSE_WEBTRANSPORT_SESSION capsule, then FIN."""
        capsule = _capsule(CLOSE_WEBTRANSPORT_SESSION, code.to_bytes(4, "big") + reason)
        self.ended_by_us = True
        self._client.h3.send_data(self.connect_id, capsule, end_stream=True)
        self._client.transmit()

    def end_connect(self):
        """End the session with a bare FIN of the CONNECT stream."""
        self.ended_by_us = True
        self._client.h3.send_data(self.connect_id, b"", end_stream=True)
        self._client.transmit()

    async def wait_closed(self, timeout=5.0):
        """Wait until the server ended its side of CONNECT (FIN or reset)."""
        await _wait(self._changed, lambda: self.connect_ended or self.connect_reset_code
                    is not None, timeout)

    def _connect_data(self, data, ended):
        buf = Buffer(data=data)
        try:
            if buf.pull_uint_var() == CLOSE_WEBTRANSPORT_SESSION:
                buf.pull_uint_var()
                self.close_code = buf.pull_uint32()
                # As a browser does (and the draft requires): end CONNECT too.
                if not self.ended_by_us:
                    self.end_connect()
        except BufferReadError:
            pass  # not a whole close capsule in this chunk: close_code stays None
        self.connect_ended = self.connect_ended or ended
        self._changed.set()

    def _connect_reset(self, code):
        self.connect_reset_code = code
        self._changed.set()


def _capsule(capsule_type, value):
    return encode_uint_var(capsule_type) + encode_uint_var(len(value)) + value


class WebTransportClient(asyncio_protocol()):
    """One QUIC connection speaking HTTP/3 with WebTransport."""

    def __init__(self, quic, **kwargs):
        super().__init__(quic, **kwargs)
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.sessions: dict[int, ClientSession] = {}  # by CONNECT stream id
        # WebTransport streams we opened: the server's data on them is raw,
        # which the engine's H3 would try to parse as frames.
        self.streams: dict[int, ClientStream] = {}
        self.vanished = False

    async def open_session(self, path="/", origin=None, *, method="CONNECT",
                           authority="localhost", timeout=5.0):
        """Send the extended CONNECT (or, for tests of refusals, a plain
        request with ``method``) and wait for the response status."""
        connect_id = self._quic.get_next_available_stream_id()
        session = self.sessions[connect_id] = ClientSession(self, connect_id)
        headers = [(b":method", method.encode()), (b":scheme", b"https"),
                   (b":authority", authority.encode()), (b":path", path.encode())]
        if method == "CONNECT":
            headers += [(b":protocol", b"webtransport"), (b"sec-webtransport-http3-draft02", b"1")]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        self.h3.send_headers(connect_id, headers, end_stream=method != "CONNECT")
        self.transmit()
        await asyncio.wait_for(asyncio.shield(session.response), timeout)
        return session

    async def close(self, error_code=0, timeout=5.0):
        """Close the QUIC connection with ``error_code`` and wait for the end
        of the closing period."""
        self._quic.close(error_code=error_code)  # the protocol's close() differs by engine
        self.transmit()
        await asyncio.wait_for(self.wait_closed(), timeout)
        self._transport.close()

    def vanish(self):
        """Send nothing more, ever (the socket closes): the server is left to
        its idle timeout."""
        self.vanished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()

    def transmit(self):
        if not self.vanished:
            super().transmit()

    def datagram_received(self, data, addr):
        if not self.vanished:
            super().datagram_received(data, addr)

    def quic_event_received(self, event):
        if isinstance(event, (StreamDataReceived, StreamReset)) and event.stream_id in self.streams:
            stream = self.streams[event.stream_id]
            if isinstance(event, StreamReset):
                stream._feed(reset_code=event.error_code)
            else:
                stream._feed(event.data, event.end_stream)
            return
        if isinstance(event, StreamReset) and event.stream_id in self.sessions:
            self.sessions[event.stream_id]._connect_reset(event.error_code)
        for h3_event in self.h3.handle_event(event):
            session = self.sessions.get(getattr(h3_event, "stream_id", None))
            if session is None:
                continue
            if isinstance(h3_event, HeadersReceived) and not session.response.done():
                session.headers = dict(h3_event.headers)
                session.status = int(session.headers[b":status"])
                session.response.set_result(session.status)
                if h3_event.stream_ended:
                    session._connect_data(b"", True)
            elif isinstance(h3_event, DataReceived):
                session._connect_data(h3_event.data, h3_event.stream_ended)


async def connect(host, port, *, ca_file=None, idle_timeout=30.0, server_name="localhost",
                  timeout=5.0, local_host=None, connection_class=QuicConnection,
                  protocol=None):
    """Connect and complete the handshake; certificate checks only with
    ``ca_file``; from ``local_host`` when given (another loopback address
    plays another machine); ``connection_class`` may be a QuicConnection
    subclass (``mc.testing.hostile``'s), ``protocol`` a WebTransportClient
    subclass. Built by hand rather than with ``aioquic.asyncio.connect``,
    whose context manager waits for a close that ``vanish`` never sends."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
        idle_timeout=idle_timeout, server_name=server_name)
    if ca_file is None:
        configuration.verify_mode = ssl.CERT_NONE
    else:
        configuration.load_verify_locations(cafile=ca_file)
    loop = asyncio.get_running_loop()
    family, _, _, _, addr = (await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM))[0]
    _, client = await loop.create_datagram_endpoint(
        lambda: (protocol or WebTransportClient)(connection_class(configuration=configuration)),
        family=family, local_addr=None if local_host is None else (local_host, 0))
    client.connect(addr[:2])
    await asyncio.wait_for(client.wait_connected(), timeout)
    return client


class LoopThread:
    """An asyncio loop on its own daemon thread, for synchronous callers."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="wtclient",
                                        daemon=True)
        self._thread.start()

    def run(self, fn, *args, timeout=5.0, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the loop (awaiting it if it is a
        coroutine function) and return its result; TimeoutError after
        ``timeout`` seconds."""
        async def call():
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await asyncio.wait_for(result, timeout)
            return result
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout + 1.0)

    def stop(self):
        """Cancel what still runs on the loop (readers of connections left
        open), then stop it."""
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(5.0)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
