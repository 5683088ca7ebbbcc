"""A fuzzer of frame orders and stream states at the QUIC level: a joined
participant's client sends, in datagrams of its choosing, any sequence of
FINs, resets and STOP_SENDINGs of its stream and of the CONNECT stream,
CLOSE capsules, mutes and garbage. Everything is real but the network and
the clock: aioquic on both sides in memory, the MC's QUIC endpoint,
WebTransport, signalling and join service on a ``Clock``.

Whatever the order, the MC logs no failure, the session ends at most once
and in one place, the participant is in the meeting exactly while its
session lives (or for its grace), the counts agree, and the other
participant's mute still reaches it."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mc.binding import BindingKeys
from mc.joining import JoinService
from mc.meetings import MeetingRegistry
from mc.ops.health import Health
from mc.ops.metrics import Metrics
from mc.participants.engine import H3_ALPN, H3Connection, QuicConfiguration, StreamDataReceived
from mc.participants.quic import QuicEndpoint
from mc.participants.session_state import SessionState
from mc.participants.signaling import SignalingSession
from mc.participants.webtransport import (
    WebTransportConnection,
    WebTransportSite,
    close_capsule,
    server_configuration,
)
from mc.proto import signaling_pb2 as pb
from mc.testing import hostile
from mc.testing.certs import write_self_signed
from mc.testing.doubles import TableTokenVerifier
from mc.testing.participant import frame, join_request

GRACE = 5.0
MH = (("mh-1", "https://mh-1.example:4433", "MH_ROLE_PRIMARY"),)
PATH = "/"


@pytest.fixture(scope="module")
def configuration(tmp_path_factory):
    cert = write_self_signed(tmp_path_factory.mktemp("fuzz-certs"))
    return server_configuration(cert.cert_path, cert.key_path)


@pytest.fixture
def failures():
    seen = []

    def observe(event):
        """The MC's own failures and errors (not, say, another test's
        Deferred collected meanwhile)."""
        level = event.get("log_level")
        if (event.get("log_namespace", "").startswith("mc.")
                and (event.get("log_failure") is not None
                     or level is not None and level.name in ("error", "critical"))):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


class Client:
    """One participant's client: its QUIC connection, H3 and what its
    signalling stream received."""

    def __init__(self, net, addr):
        self.addr = addr
        self.quic = hostile.HostileConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
            idle_timeout=600.0, verify_mode=0, server_name="localhost"))
        self.quic.connect(net.server_addr, now=net.clock.seconds())
        self.h3 = H3Connection(self.quic, enable_webtransport=True)
        self.connect_id = self.stream_id = None
        self.received = bytearray()

    @property
    def _quic(self):  # what mc.testing.hostile reads on its asyncio clients
        return self.quic

    def transmit(self):
        """Nothing: the Net's turn carries what the connection sends."""

    def offset(self, stream_id):
        """How far the connection's own sender got on a stream (0 once it
        forgot the stream)."""
        stream = self.quic._streams.get(stream_id)
        return 0 if stream is None else stream.sender._buffer_stop

    def messages(self):
        out, data = [], bytes(self.received)
        while len(data) >= 4:
            (n,) = struct.unpack(">I", data[:4])
            if len(data) < 4 + n:
                break
            out.append(pb.ServerMessage.FromString(data[4:4 + n]))
            data = data[4 + n:]
        return out


class Net:
    """The MC's endpoint and its clients, in memory on one Clock."""

    def __init__(self, configuration):
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = MeetingRegistry(10, 100, 0, self.clock)
        self.tokens = TableTokenVerifier()
        self.joins = JoinService(self.registry, Health(lambda: True, 1.0), self.tokens,
                                 self.clock, Metrics(), GRACE, BindingKeys(b"k" * 32))
        self.registry.commit(self.registry.reserve("m-1"), 1, MH)
        self.sessions = []

        def handler(peer):
            self.sessions.append(SignalingSession(self.joins, self.clock, peer,
                                                  now=self.clock.seconds))
            return self.sessions[-1]

        self.site = WebTransportSite(PATH, (), handler)
        self.endpoint = QuicEndpoint(configuration, lambda link: WebTransportConnection(
            link, self.site), self.clock, now=self.clock.seconds)
        self.out = []
        net = self

        class Transport:
            def write(self, data, addr):
                net.out.append((data, addr))

        self.endpoint.makeConnection(Transport())
        self.server_addr = ("10.0.0.1", 4433)
        self.clients = []

    def client(self):
        c = Client(self, (f"10.0.1.{len(self.clients) + 1}", 5000))
        self.clients.append(c)
        return c

    def turn(self, n=1):
        for _ in range(n):
            now = self.clock.seconds()
            for c in self.clients:
                timer = c.quic.get_timer()
                if timer is not None and timer <= now:
                    c.quic.handle_timer(now=now)
                for data, _ in c.quic.datagrams_to_send(now=now):
                    self.endpoint.datagramReceived(data, c.addr)
            self.clock.advance(0.01)
            out, self.out = self.out, []
            for data, addr in out:
                for c in self.clients:
                    if c.addr == addr:
                        c.quic.receive_datagram(data, self.server_addr, now=self.clock.seconds())
            for c in self.clients:
                while (event := c.quic.next_event()) is not None:
                    if isinstance(event, StreamDataReceived) and event.stream_id == c.stream_id:
                        c.received += event.data
                    else:
                        c.h3.handle_event(event)

    def join(self, name):
        c = self.client()
        self.turn(6)
        c.connect_id = c.quic.get_next_available_stream_id()
        c.h3.send_headers(c.connect_id, [
            (b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":scheme", b"https"),
            (b":authority", b"localhost"), (b":path", PATH.encode())])
        self.turn(3)
        c.stream_id = c.h3.create_webtransport_stream(c.connect_id)
        self.tokens.add(f"tok-{name}", "m-1", f"user-{name}")
        c.quic.send_stream_data(c.stream_id, frame(join_request("m-1", f"tok-{name}", name)))
        self.turn(3)
        assert c.messages()[0].HasField("join_response"), c.messages()
        return c


ACTIONS = ("fin", "reset", "stop", "mute", "garbage", "connect fin", "capsule",
           "connect reset", "connect stop")


def frames_of(c, action, sent):
    """The frames of one action; ``sent`` tracks the offsets the raw frames
    reached on each stream."""
    sid, cid = c.stream_id, c.connect_id
    at = max(sent.get(sid, 0), c.offset(sid))
    cat = max(sent.get(cid, 0), c.offset(cid))
    if action == "fin":
        return [hostile.stream_frame(sid, at, fin=True)]
    if action == "reset":
        return [hostile.reset_stream(sid, at)]
    if action == "stop":
        return [hostile.stop_sending(sid)]
    if action in ("mute", "garbage"):
        data = (frame(pb.ClientMessage(mute_request=pb.MuteRequest(audio_muted=True)))
                if action == "mute" else b"\x00\x00\x00\x03zz")
        sent[sid] = at + len(data)
        return [hostile.stream_frame(sid, at, data)]
    if action == "connect fin":
        return [hostile.stream_frame(cid, cat, fin=True)]
    if action == "capsule":
        data = hostile.h3_data(close_capsule())
        sent[cid] = cat + len(data)
        return [hostile.stream_frame(cid, cat, data)]
    if action == "connect reset":
        return [hostile.reset_stream(cid, cat)]
    return [hostile.stop_sending(cid)]


datagrams = st.lists(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=4),
                     min_size=1, max_size=3)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(datagrams)
def test_any_order_of_frames_and_stream_states_ends_in_one_place(
        configuration, failures, plan):
    net = Net(configuration)
    ann = net.join("Ann")
    mallory = net.join("Mallory")
    session = net.sessions[-1]
    closes = []
    closed = session.session_closed
    session.session_closed = lambda clean: (closes.append(clean), closed(clean))
    sent = {}
    for actions in plan:
        frames = [f for action in actions for f in frames_of(mallory, action, sent)]
        hostile.send_frames(mallory, *frames)  # one datagram
        net.turn(3)
    net.turn(10)
    assert failures == [], [f.get("log_format") for f in failures]
    assert len(closes) <= 1, "the end is told once"
    state = session.state
    live = state in (SessionState.JOINED,)
    meeting = net.registry.get("m-1")
    in_meeting = {p.name for p in meeting.participants}
    assert ("Mallory" in in_meeting) == (live or net.joins.in_grace == 1)
    assert net.site.sessions_current == 1 + live
    net.clock.advance(GRACE + 1)
    net.turn(2)
    in_meeting = {p.name for p in meeting.participants}
    assert in_meeting == ({"Ann", "Mallory"} if live else {"Ann"})
    assert net.joins.connected() == len(in_meeting) and net.joins.in_grace == 0
    before = len(ann.messages())
    ann.quic.send_stream_data(ann.stream_id, frame(pb.ClientMessage(
        mute_request=pb.MuteRequest(video_muted=True))))
    net.turn(4)
    assert ann.messages()[before:][-1].participant_mute_update.video_self_muted
