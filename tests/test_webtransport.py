"""WebTransport on the reactor: real UDP on 127.0.0.1, the server on the real
reactor, the engine's client (``mc.testing.wtclient``) on its own asyncio thread;
and one in-memory test of the QUIC timers on a ``Clock``."""

import gc
import os
import socket
import weakref

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mc.config import Address
from mc.errors import ConfigError
from mc.interfaces import ISessionHandler, ISessionTransport
from mc.participants import engine, webtransport
from mc.participants.engine import (
    H3_ALPN,
    Buffer,
    H3Connection,
    HeadersReceived,
    QuicConfiguration,
    QuicConnection,
    QuicPacketType,
    pull_quic_header,
)
from mc.participants.quic import QuicEndpoint
from mc.participants.session_state import SessionState
from mc.participants.webtransport import (
    UDP_RECEIVE_BUFFER,
    WebTransportConnection,
    WebTransportService,
    WebTransportSite,
    normalise_origin,
    server_configuration,
)
from mc.testing import wtclient
from mc.testing.certs import write_self_signed
from tests.helpers import wait_until

PATH = "/wt"
H3_NO_ERROR = 0x100
GREASE_CAPSULE = 0x2A * 0x1F + 0x29  # one of the reserved (ignored) capsule types


@implementer(ISessionHandler)
class Recorder:
    """Records what a session tells signalling; echoes when asked to."""

    def __init__(self, peer, echo=False):
        self.peer = peer
        self.echo = echo
        self.transport = None
        self.data = bytearray()
        self.ended = 0
        self.closed = []

    def session_opened(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data
        if self.echo:
            self.transport.write(data)

    def stream_ended(self):
        self.ended += 1

    def session_closed(self, clean):
        self.closed.append(clean)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return write_self_signed(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def loop_thread():
    thread = wtclient.LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def wt(loop_thread):
    """``await wt(fn, *args)``: run ``fn`` on the client's loop, off the reactor."""
    return lambda fn, *args, timeout=5.0, **kw: threads.deferToThread(
        loop_thread.run, fn, *args, timeout=timeout, **kw)


@pytest.fixture
def server(cert):
    """``server(origins=(), echo=False)``: a started service on 127.0.0.1 with
    ``.handlers`` (one Recorder per accepted session); stopped at teardown."""
    started = []

    def start(origins=(), echo=False, max_pending=None):
        handlers = []

        def factory(peer):
            handlers.append(Recorder(peer, echo))
            return handlers[-1]

        service = WebTransportService(Address("127.0.0.1", 0), cert.cert_path, cert.key_path,
                                      PATH, origins, factory, reactor, max_pending=max_pending)
        service.handlers = handlers
        service.startService()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.running:
            pytest_twisted.blockon(service.stopService())


def links(service):
    return service.endpoint.connections


def only_app(service):
    (link,) = links(service)
    return link.app


def timers(endpoint):
    return [c for c in reactor.getDelayedCalls() if c.func == endpoint._timer_fired]


def assert_all_freed(service):
    assert service.endpoint.routes == {}
    assert links(service) == set()
    assert timers(service.endpoint) == []
    assert service.sessions_current == 0


async def open_session(wt, service, path=PATH, origin=None, **kw):
    client = await wt(wtclient.connect, "127.0.0.1", service.port, **kw)
    session = await wt(client.open_session, path, origin)
    return client, session


async def open_stream(wt, service, client=None):
    """A session with its stream open, and the server's handler for it."""
    if client is None:
        client = await wt(wtclient.connect, "127.0.0.1", service.port)
    session = await wt(client.open_session, PATH)
    assert session.status == 200
    stream = await wt(session.open_stream)
    await wt(stream.send, b"hi")
    await wait_until(lambda: service.handlers and service.handlers[-1].data == b"hi",
                     timeout=5, what="the stream to open")
    return client, session, stream, service.handlers[-1]


@pytest_twisted.ensureDeferred
async def test_session_is_accepted_and_bytes_flow_both_ways(server, wt, cert):
    service = server(echo=True)
    client = await wt(wtclient.connect, "127.0.0.1", service.port, ca_file=cert.cert_path)
    session = await wt(client.open_session, PATH)
    assert session.status == 200
    assert session.headers[b"sec-webtransport-http3-draft"] == b"draft02"
    (handler,) = service.handlers
    assert verifyObject(ISessionTransport, handler.transport)
    assert not handler.transport.stream_open
    assert handler.transport.peer[0] == "127.0.0.1"
    assert service.sessions_current == 1

    stream = await wt(session.open_stream)
    await wt(stream.send, b"ping " * 1000)
    assert await wt(stream.read_exactly, 5000) == b"ping " * 1000
    assert bytes(handler.data) == b"ping " * 1000
    assert handler.transport.stream_open
    handler.transport.write(b"from the server")
    assert await wt(stream.read_exactly, 15) == b"from the server"
    await wait_until(lambda: handler.transport.buffered == 0, what="the client's acks")
    assert handler.closed == []


@pytest_twisted.ensureDeferred
async def test_buffered_counts_what_the_client_has_not_acknowledged(server, wt):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    await wt(client.vanish)
    handler.transport.write(b"x" * 3000)
    assert handler.transport.buffered == 3000  # queued
    await deferLater(reactor, 0.2, lambda: None)
    assert handler.transport.buffered == 3000  # sent, never acknowledged


@pytest.mark.parametrize("path", ["/other", "/", "/wt/more"])
@pytest_twisted.ensureDeferred
async def test_another_path_gets_404(server, wt, path):
    service = server()
    client, session = await open_session(wt, service, path=path)
    assert session.status == 404
    await wt(session.wait_closed)
    assert service.handlers == [] and service.sessions_current == 0


@pytest_twisted.ensureDeferred
async def test_query_string_does_not_change_the_path(server, wt):
    service = server()
    client, session = await open_session(wt, service, path=PATH + "?x=1")
    assert session.status == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest_twisted.ensureDeferred
async def test_plain_requests_get_404(server, wt, method):
    service = server()
    client = await wt(wtclient.connect, "127.0.0.1", service.port)
    session = await wt(client.open_session, PATH, method=method)
    assert session.status == 404
    await wt(session.wait_closed)
    assert service.handlers == []


@pytest_twisted.ensureDeferred
async def test_origin_outside_the_allow_list_gets_403(server, wt):
    service = server(origins=["HTTPS://App.Example:443", "http://dev.example:8080"])
    client = await wt(wtclient.connect, "127.0.0.1", service.port)
    for origin in ("https://evil.example", "http://app.example", "https://app.example:8443",
                   "https://app.example.evil", "null", "http://dev.example"):
        bad = await wt(client.open_session, PATH, origin)
        assert bad.status == 403, origin
    for origin in ("https://app.example", "https://APP.example:443", "HTTP://Dev.Example:8080",
                   None):  # no origin: not a browser
        good = await wt(client.open_session, PATH, origin)
        assert good.status == 200, origin
        service.handlers[-1].transport.finish()
    assert len(service.handlers) == 4


def test_origins_are_normalised():
    assert normalise_origin("HTTPS://App.Example:443") == "https://app.example"
    assert normalise_origin("http://a.example:80") == "http://a.example"
    assert normalise_origin("https://a.example:8443") == "https://a.example:8443"
    assert normalise_origin("https://[::1]:443") == "https://[::1]"
    for odd in ("null", "https://a.example:x", ""):
        assert normalise_origin(odd) == odd


@pytest_twisted.ensureDeferred
async def test_any_origin_without_an_allow_list(server, wt):
    service = server()
    client, session = await open_session(wt, service, origin="https://anywhere.example")
    assert session.status == 200


@pytest_twisted.ensureDeferred
async def test_client_fin_is_stream_ended_and_the_session_stays(server, wt):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    await wt(stream.send, b"!", fin=True)
    await wait_until(lambda: handler.ended == 1, what="stream_ended")
    assert handler.data == b"hi!" and handler.closed == []
    handler.transport.write(b"still here")
    assert await wt(stream.read_exactly, 10) == b"still here"
    app = only_app(service)
    assert stream.stream_id not in app.raw  # its receive side is over


@pytest.mark.parametrize("how", ["capsule", "fin"])
@pytest_twisted.ensureDeferred
async def test_client_closing_the_session_is_clean(server, wt, how):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    await wt(session.close if how == "capsule" else session.end_connect)
    await wait_until(lambda: handler.closed, what="session_closed")
    assert handler.closed == [True]
    await wt(session.wait_closed)
    assert session.connect_ended  # the server's FIN of CONNECT
    await wt(stream.wait_closed)  # and its stream is reset
    assert stream.reset_code is not None
    assert service.sessions_current == 0


@pytest_twisted.ensureDeferred
async def test_chromium_grease_capsule_is_ignored(server, wt):
    service = server(echo=True)
    client, session, stream, handler = await open_stream(wt, service)
    await wt(session.send_capsule, GREASE_CAPSULE, b"\x00" * 40)
    await wt(stream.send, b"after")
    assert await wt(stream.read_exactly, 7) == b"hiafter"
    assert handler.closed == []


@pytest_twisted.ensureDeferred
async def test_stream_reset_without_session_close_is_not_clean(server, wt):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    await wt(stream.reset, 7)
    await wait_until(lambda: handler.closed, what="session_closed")
    assert handler.closed == [False]
    await wt(session.wait_closed)
    assert session.connect_reset_code is not None


@pytest_twisted.ensureDeferred
async def test_stream_reset_then_session_close_in_one_flight_is_clean(server, wt, loop_thread):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    # aioquic serves streams least recently served first: CONNECT goes last.
    await wt(session.send_capsule, GREASE_CAPSULE)

    def reset_then_close():
        client._quic.reset_stream(stream.stream_id, 7)
        session.close()  # transmits both in one packet, the reset first

    await wt(reset_then_close)
    await wait_until(lambda: handler.closed, what="session_closed")
    assert handler.closed == [True]


@pytest.mark.parametrize("code, clean", [(0, True), (H3_NO_ERROR, True), (0x10C, False),
                                         (0x1, False)])
@pytest_twisted.ensureDeferred
async def test_client_closing_the_connection(server, wt, code, clean):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    await wt(client.close, code)
    await wait_until(lambda: handler.closed, what="session_closed")
    assert handler.closed == [clean]
    await wait_until(lambda: not links(service), what="the connection to be forgotten")
    assert_all_freed(service)


@pytest_twisted.ensureDeferred
async def test_idle_timeout_is_not_clean_and_frees_everything(server, wt):
    service = server()
    client = await wt(wtclient.connect, "127.0.0.1", service.port, idle_timeout=1.0)
    client, session, stream, handler = await open_stream(wt, service, client)
    await wt(client.vanish)
    await wait_until(lambda: handler.closed, timeout=5, what="the idle timeout")
    assert handler.closed == [False]
    assert_all_freed(service)


@pytest_twisted.ensureDeferred
async def test_server_finish_sends_the_data_then_fin_and_close(server, wt):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    handler.transport.write(b"last words")
    handler.transport.finish()
    assert handler.closed == [True]
    assert service.sessions_current == 0
    handler.transport.write(b"ignored")
    handler.transport.finish()
    handler.transport.abort()
    assert handler.closed == [True]
    assert await wt(stream.wait_closed) == b"last words"
    assert stream.ended
    await wt(session.wait_closed)
    assert session.close_code == 0 and session.connect_ended


@pytest_twisted.ensureDeferred
async def test_finish_before_the_stream_opens(server, wt):
    service = server()
    client, session = await open_session(wt, service)
    service.handlers[0].transport.finish()
    await wt(session.wait_closed)
    assert session.close_code == 0


@pytest_twisted.ensureDeferred
async def test_abort_drops_the_session(server, wt):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    handler.transport.write(b"x" * 100_000)
    handler.transport.abort()
    assert handler.closed == [False]
    assert handler.transport.buffered == 0
    await wt(stream.wait_closed)
    assert stream.reset_code is not None
    await wt(session.wait_closed)
    assert session.connect_reset_code is not None


@pytest_twisted.ensureDeferred
async def test_one_live_session_per_connection(server, wt):
    service = server(echo=True)
    client = await wt(wtclient.connect, "127.0.0.1", service.port)
    _, session, stream, handler = await open_stream(wt, service, client)
    second = await wt(client.open_session, PATH)
    assert second.status == 429 and len(service.handlers) == 1
    await wt(session.close)
    await wait_until(lambda: handler.closed, what="the first session to close")
    _, session, stream, handler = await open_stream(wt, service, client)
    assert len(links(service)) == 1 and service.sessions_current == 1
    await wt(stream.send, b"!")
    assert await wt(stream.read_exactly, 3) == b"hi!"
    await wt(client.close, 0)
    await wait_until(lambda: handler.closed == [True])


@pytest_twisted.ensureDeferred
async def test_further_streams_and_datagrams_are_refused(server, wt):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    extra = await wt(session.open_stream)
    await wt(extra.send, b"not signalling")
    await wt(extra.wait_closed)
    assert extra.reset_code is not None

    def datagram():
        client.h3.send_datagram(session.connect_id, b"quack")
        client.transmit()

    await wt(datagram)
    header_only = await wt(session.open_stream)  # the stream's header leaves now
    await wt(header_only.reset)  # and the reset in a later flight
    await wt(stream.send, b"!")
    await wait_until(lambda: handler.data == b"hi!")
    app = only_app(service)
    await wait_until(lambda: list(app.raw) == [stream.stream_id], what="the refused stream")
    await wait_until(lambda: header_only.stream_id not in app.h3._stream)
    assert extra.stream_id not in app.h3._stream
    assert handler.closed == []


@pytest_twisted.ensureDeferred
async def test_nothing_accumulates_over_sessions_and_connections(server, wt):
    service = server()
    client = await wt(wtclient.connect, "127.0.0.1", service.port)
    _, session, stream, handler = await open_stream(wt, service, client)
    app = only_app(service)
    await wt(session.close)
    await wait_until(lambda: handler.closed)
    for i in range(12):
        _, session, stream, handler = await open_stream(wt, service, client)
        extra = await wt(session.open_stream)
        await wt(extra.send, b"refused")
        if i % 4 == 0:
            handler.transport.finish()
        elif i % 4 == 1:
            handler.transport.abort()
        elif i % 4 == 2:
            await wt(session.close)
        else:
            await wt(stream.send, b"", fin=True)
            await wait_until(lambda h=handler: h.ended)
            handler.transport.finish()
        await wait_until(lambda h=handler: h.closed)
        await wt(extra.wait_closed)
    await wait_until(lambda: not app.raw, what="the streams' receive sides to end")
    # Only the client's control and QPACK streams are left.
    assert len(app.h3._stream) == 3 and all(sid % 4 == 2 for sid in app.h3._stream)
    assert app.sessions == {} and service.sessions_current == 0
    # aioquic discards each stream once both directions are done: ours and
    # the client's control and QPACK streams stay.
    await wait_until(lambda: len(app.quic._streams) == 6, what="QUIC streams")
    await wt(client.close, 0)
    await wait_until(lambda: not links(service))
    assert_all_freed(service)


@pytest.mark.skipif(engine.NAME != "aioquic", reason="aioquic's Python state")
@pytest_twisted.ensureDeferred
async def test_handshake_buffers_are_released_and_bytes_still_flow(server, wt):
    service = server(echo=True)
    client, session, stream, handler = await open_stream(wt, service)
    (link,) = links(service)
    assert [b.capacity for b in link.quic._crypto_buffers.values()] == [0, 0, 0]
    await wt(stream.send, b"after the trim")
    await wait_until(lambda: bytes(stream.data) == b"hiafter the trim")
    await wt(client.close, 0)
    await wait_until(lambda: not links(service))


@pytest.mark.skipif(engine.NAME != "aioquic", reason="aioquic's Python state")
@pytest_twisted.ensureDeferred
async def test_a_closed_connection_is_freed_without_the_cyclic_collector(server, wt):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    (link,) = links(service)
    # Objects inside the connection's cycles (bound methods of it): only
    # reference counting can free them while the collector is off.
    inner = [weakref.ref(link.quic._loss), weakref.ref(link.quic.tls)]
    gc.disable()
    try:
        await wt(client.close, 0)
        await wait_until(lambda: not links(service))
        assert handler.closed == [True]
        assert link.app is None and vars(link.quic) == {}
        assert [ref() for ref in inner] == [None, None]
    finally:
        gc.enable()


@pytest_twisted.ensureDeferred
async def test_stop_service_closes_every_connection(server, wt):
    service = server()
    client, session, stream, handler = await open_stream(wt, service)
    await service.stopService()
    assert handler.closed == [False]
    assert_all_freed(service)
    await wt(client.wait_closed)  # the client got CONNECTION_CLOSE


@pytest.mark.parametrize("setting, which, content", [
    ("MC_TLS_CERT_PATH", "cert", None),
    ("MC_TLS_CERT_PATH", "cert", b"garbage"),
    ("MC_TLS_KEY_PATH", "key", None),
    ("MC_TLS_KEY_PATH", "key", b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n"),
    ("MC_TLS_KEY_PATH", "key", "other key"),
])
def test_bad_certificate_or_key_stops_start_up(cert, tmp_path, setting, which, content):
    paths = {"cert": cert.cert_path, "key": cert.key_path}
    bad = tmp_path / "bad.pem"
    if content == "other key":
        bad = write_self_signed(tmp_path, name="other").key_path
    elif content is not None:
        bad.write_bytes(content)
    paths[which] = str(bad)
    service = WebTransportService(Address("127.0.0.1", 0), paths["cert"], paths["key"], PATH,
                                  (), Recorder, reactor)
    with pytest.raises(ConfigError) as e:
        service.startService()
    assert e.value.option == setting
    assert "c2VjcmV0" not in str(e.value)
    assert not service.running


def test_port_already_bound_stops_start_up(cert):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        service = WebTransportService(Address("127.0.0.1", taken.getsockname()[1]),
                                      cert.cert_path, cert.key_path, PATH, (), Recorder, reactor)
        with pytest.raises(CannotListenError):
            service.startService()
        assert not service.running
    finally:
        taken.close()


def long_header(version, packet_type_bits=0x00, size=1200):
    """A long-header packet (Initial by default) of ``version``, padded to ``size``."""
    dcid, scid = os.urandom(8), os.urandom(8)
    head = bytes([0xC0 | packet_type_bits << 4]) + version.to_bytes(4, "big")
    head += bytes([8]) + dcid + bytes([8]) + scid
    if packet_type_bits == 0x00:
        head += b"\x00"  # no token
    rest = size - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest), scid


def exchange(port, datagrams, wait=0.3):
    """Send raw datagrams from a plain UDP socket; return every reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))
        replies = []
        try:
            while True:
                replies.append(s.recv(65536))
        except TimeoutError:
            return replies


@pytest_twisted.ensureDeferred
async def test_unknown_version_gets_version_negotiation(server):
    service = server()
    packet, scid = long_header(0x1A2A3A4A)
    small, _ = long_header(0x1A2A3A4A, size=200)
    replies = await threads.deferToThread(exchange, service.port, [small, packet])
    assert len(replies) == 1  # none for the small one: no amplification
    header = pull_quic_header(Buffer(data=replies[0]), host_cid_length=8)
    assert header.packet_type == QuicPacketType.VERSION_NEGOTIATION
    assert header.destination_cid == scid
    assert header.supported_versions == QuicConfiguration(is_client=False).supported_versions
    assert_all_freed(service)


@pytest_twisted.ensureDeferred
async def test_garbage_from_unknown_peers_is_dropped_without_state(server):
    service = server()
    handshake, _ = long_header(1, packet_type_bits=0x02)
    short_initial, _ = long_header(1, size=600)
    datagrams = [b"", b"\x00", b"\x40" + os.urandom(40), b"\xff" * 50, handshake,
                 short_initial, os.urandom(1300)]
    replies = await threads.deferToThread(exchange, service.port, datagrams)
    assert replies == []
    assert_all_freed(service)


class MemoryQuic:
    """Client and server QUIC in memory, both on a Clock: ``turn()`` delivers
    each side's output to the other and lets 30 ms pass."""

    def __init__(self, cert, no_session_seconds=10.0, client_addr=("10.0.0.2", 5555),
                 **endpoint_kw):
        self.clock = clock = Clock()
        self.handlers = []

        def factory(peer):
            self.handlers.append(Recorder(peer))
            return self.handlers[-1]

        site = WebTransportSite(PATH, (), factory)
        self.endpoint = QuicEndpoint(
            server_configuration(cert.cert_path, cert.key_path),
            lambda link: WebTransportConnection(link, site, no_session_seconds), clock,
            now=clock.seconds, **endpoint_kw)
        self.sent = sent = []

        class Transport:
            def write(self, data, addr):
                sent.append(data)

        self.endpoint.makeConnection(Transport())
        self.client_addr, self.server_addr = client_addr, ("10.0.0.1", 4433)
        self.responses = []
        self.client = self.h3 = None

    def connect(self):
        self.client = QuicConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
            idle_timeout=60.0, verify_mode=0, server_name="localhost"))
        self.client.connect(self.server_addr, now=self.clock.seconds())
        self.h3 = H3Connection(self.client, enable_webtransport=True)

    def turn(self):
        clock, client = self.clock, self.client
        timer = client.get_timer()
        if timer is not None and timer <= clock.seconds():
            client.handle_timer(now=clock.seconds())
        for data, _ in client.datagrams_to_send(now=clock.seconds()):
            self.endpoint.datagramReceived(data, self.client_addr)
        assert len(self.timers()) <= len(self.endpoint.connections)
        clock.advance(0.03)  # the flush (one call for every dirty connection), timers
        for data in self.sent:
            client.receive_datagram(data, self.server_addr, now=clock.seconds())
        self.sent.clear()
        while (event := client.next_event()) is not None:
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived):
                    self.responses.append(dict(h3_event.headers)[b":status"])

    def timers(self):
        return [call for call in self.clock.getDelayedCalls()
                if call.func == self.endpoint._timer_fired]

    def open_session(self):
        connect_id = self.client.get_next_available_stream_id()
        self.h3.send_headers(connect_id, [
            (b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":scheme", b"https"),
            (b":authority", b"localhost"), (b":path", PATH.encode())])
        for _ in range(3):
            self.turn()


def test_timers_run_on_the_injected_clock_in_memory(cert):
    """One timer per connection, sends batched per turn, the idle timeout
    frees everything."""
    q = MemoryQuic(cert, no_session_seconds=1000)
    q.connect()
    for _ in range(5):
        q.turn()
    q.open_session()
    assert q.responses == [b"200"] and len(q.handlers) == 1
    (link,) = q.endpoint.connections
    assert q.timers() == [link.timer] and len(q.endpoint.routes) >= 2

    q.clock.advance(29)  # the client is silent: only the server's own timers fire
    assert q.handlers[0].closed == [] and len(q.timers()) == 1
    q.clock.advance(2)
    assert q.handlers[0].closed == [False]
    assert q.endpoint.routes == {} and q.endpoint.connections == set()
    assert q.clock.getDelayedCalls() == []


def test_a_connection_without_a_joined_session_is_closed_after_10s(cert):
    q = MemoryQuic(cert)
    q.connect()
    for _ in range(5):
        q.turn()
    q.open_session()
    (handler,) = q.handlers
    within = handler.transport.join_within
    assert 9 < within <= 10, "the session learns the connection's deadline"
    q.clock.advance(within + 1.9)  # the session's refusal would linger this long
    assert handler.closed == [] and q.sent == []
    q.clock.advance(0.2)
    assert q.sent, "CONNECTION_CLOSE"
    q.clock.advance(5)  # aioquic's closing period
    assert len(handler.closed) == 1 and q.endpoint.connections == set()
    assert q.endpoint.pending == set() and q.endpoint.pending_by_host == {}
    assert q.clock.getDelayedCalls() == []


def test_a_joined_session_keeps_the_connection_until_it_ends(cert):
    q = MemoryQuic(cert)
    q.connect()
    for _ in range(5):
        q.turn()
    (link,) = q.endpoint.connections
    assert link.app.state is SessionState.CLOSED  # HTTP/3 up, no session
    q.open_session()
    (handler,) = q.handlers
    session = handler.transport
    assert link.app.state is SessionState.CONNECT
    stream_id = q.h3.create_webtransport_stream(session.connect_id)
    q.client.send_stream_data(stream_id, b"join")
    q.turn()
    assert link.app.state is SessionState.AWAITING_JOIN
    session.joining()
    session.joined()
    assert link.app.state is SessionState.JOINED
    assert session.join_within is None and q.endpoint.pending == set()
    q.clock.advance(25)  # past 10 s: joined, so it stays (the client keeps it alive)
    q.turn()
    assert len(q.endpoint.connections) == 1
    session.finish()
    assert link.app.state is SessionState.CLOSING and session.state is SessionState.CLOSING
    assert len(q.endpoint.pending) == 1, "pending again once its session ended"
    for _ in range(3):
        q.turn()
    q.clock.advance(12.1)
    q.clock.advance(5)  # aioquic's closing period
    assert q.endpoint.connections == set()


def test_a_retry_token_answered_after_the_load_fell_is_honoured(cert):
    q = MemoryQuic(cert, max_pending=2)
    filler = MemoryQuic(cert)  # shares nothing: only its client, to take a pending place
    filler.endpoint = q.endpoint
    filler.sent = q.sent
    filler.client_addr = ("10.0.0.3", 6666)
    filler.connect()
    filler.turn()
    assert len(q.endpoint.pending) == 1  # half the cap: retries from now on
    q.sent.clear()
    q.connect()
    for data, _ in q.client.datagrams_to_send(now=q.clock.seconds()):
        q.endpoint.datagramReceived(data, q.client_addr)
    retry = list(q.sent)
    q.sent.clear()
    assert len(retry) == 1 and len(q.endpoint.connections) == 1
    q.endpoint.close_all()  # the load falls below half the cap
    assert q.endpoint.pending == set()
    q.client.receive_datagram(retry[0], q.server_addr, now=q.clock.seconds())
    for _ in range(6):
        q.turn()
    assert q.client._handshake_complete, "the original connection id was advertised right"
    assert q.client._retry_source_connection_id is not None


def test_pending_connections_are_capped_per_source_host(cert):
    q = MemoryQuic(cert, max_pending=10, max_pending_per_host=2)
    for port in (1, 2, 3):
        q.client_addr = ("10.0.0.7", port)
        q.connect()
        q.turn()
    assert len(q.endpoint.connections) == 2
    assert q.endpoint.pending_by_host == {"10.0.0.7": 2}
    q.client_addr = ("10.0.0.8", 1)
    q.connect()
    for _ in range(6):
        q.turn()
    assert q.client._handshake_complete, "another address still gets in"
    assert q.endpoint.pending_by_host == {"10.0.0.7": 2, "10.0.0.8": 1}


def test_accept_new_can_refuse_a_new_connection(cert):
    refused = []

    def accept_new(addr):
        refused.append(addr)
        return False

    endpoint = QuicEndpoint(server_configuration(cert.cert_path, cert.key_path),
                            lambda link: pytest.fail("no connection expected"), Clock(),
                            accept_new=accept_new)
    endpoint.makeConnection(None)  # nothing may be sent
    client = QuicConnection(configuration=QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, verify_mode=0, server_name="localhost"))
    client.connect(("10.0.0.1", 4433), now=0.0)
    for data, _ in client.datagrams_to_send(now=0.0):
        endpoint.datagramReceived(data, ("10.0.0.2", 5555))
    assert refused == [("10.0.0.2", 5555)]
    assert endpoint.routes == {} and endpoint.connections == set()


@pytest_twisted.ensureDeferred
async def test_pending_cap_retry_then_refusal_and_joined_connections_do_not_count(server, wt):
    service = server(max_pending=2)
    first, _, _, _ = await open_stream(wt, service)
    assert service.pending_connections == 1
    # From half the cap on, a new client must answer a stateless retry first
    # (aioquic's client does so by itself): it still gets in.
    second, _, _, _ = await open_stream(wt, service)
    assert service.pending_connections == 2
    assert second._quic._retry_source_connection_id is not None
    assert first._quic._retry_source_connection_id is None
    # At the cap: the Initial is dropped, no state is kept, the client gives up.
    with pytest.raises(TimeoutError):
        await wt(wtclient.connect, "127.0.0.1", service.port, timeout=1.5)
    assert len(links(service)) == 2
    for handler in service.handlers:
        handler.transport.joining()
        handler.transport.joined()
    assert service.pending_connections == 0
    third, _ = await open_session(wt, service)
    assert service.pending_connections == 1 and len(links(service)) == 3
    for client in (first, second, third):
        await wt(client.close, 0)


@pytest_twisted.ensureDeferred
async def test_the_udp_receive_buffer_is_enlarged_as_far_as_the_kernel_allows(server):
    service = server()
    sock = service._listening.getHandle()
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    # Linux reports twice what it reserves for its own bookkeeping.
    assert granted >= min(2 * rmem_max, 2 * UDP_RECEIVE_BUFFER) - 4096


@pytest_twisted.ensureDeferred
async def test_a_receive_buffer_below_what_was_asked_is_logged_at_start(
        server, events, monkeypatch):
    """Asked for more than net.core.rmem_max allows, the MC says what it got."""
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    server()
    warned = [e for e in events if "less than the" in formatEvent(e)]
    assert bool(warned) == (rmem_max < UDP_RECEIVE_BUFFER), "silent after a full grant"
    events.clear()
    monkeypatch.setattr(webtransport, "UDP_RECEIVE_BUFFER", 4 * rmem_max)
    service = server()
    granted = service._listening.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    (warning,) = [formatEvent(e) for e in events if "less than the" in formatEvent(e)]
    assert f"is {granted} bytes, less than the {4 * rmem_max} asked" in warning
    assert "net.core.rmem_max" in warning
