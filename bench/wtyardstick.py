"""The yardstick of the participant benchmark: a minimal aioquic WebTransport
server with no meeting logic, the plain asyncio way.

aioquic's own asyncio ``serve`` and ``QuicConnectionProtocol`` (each send
transmitted at once, as aioquic's examples do), HTTP/3 with WebTransport by
aioquic's ``H3Connection``, the same QUIC settings as the MC (ALPN h3,
datagram frames for the draft02 settings, 30 s idle timeout) and the same
kind of certificate (ECDSA P-256, self-signed). A session is an extended
CONNECT answered 200; on its first bidirectional stream the frames of the
signalling contract (4-byte length, then a protobuf ``ClientMessage``):

- ``JoinRequest``: the participant joins the group named by ``meeting_id``:
  ``JoinResponse`` (a participant id, the others already there), and
  ``ParticipantJoined`` to those others. No token is checked, no capacity,
  no Redis, no GC: none of the MC's meeting logic.
- ``MuteRequest``: ``ParticipantMuteUpdate`` to everyone in the group,
  sender included.
- The connection's end: ``ParticipantLeft`` to the others.

It measures its own event-loop lag (a 250 ms tick's lateness); SIGUSR1
prints the samples since the last print as one JSON line on stdout.

    python bench/wtyardstick.py --listen 127.0.0.1:4433 --cert C --key K
"""

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import struct
import sys
import time
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mc.proto import signaling_pb2 as pb  # noqa: E402

_LENGTH = struct.Struct(">I")
DRAFT_HEADER = (b"sec-webtransport-http3-draft", b"draft02")


def frame(message):
    payload = message.SerializeToString()
    return _LENGTH.pack(len(payload)) + payload


class Peer:
    __slots__ = ("protocol", "stream_id", "participant_id", "name", "joined_at", "group")

    def __init__(self, protocol, stream_id, participant_id, name, group):
        self.protocol = protocol
        self.stream_id = stream_id
        self.participant_id = participant_id
        self.name = name
        self.joined_at = int(time.time() * 1000)
        self.group = group

    def send(self, data):
        self.protocol._quic.send_stream_data(self.stream_id, data)
        self.protocol.transmit()


GROUPS: dict[str, dict[str, Peer]] = {}


class YardstickProtocol(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = None
        self.buf = bytearray()
        self.peer = None

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated):
            self.h3 = H3Connection(self._quic, enable_webtransport=True)
        elif isinstance(event, ConnectionTerminated):
            self._left()
        if self.h3 is None:
            return
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                headers = dict(h3_event.headers)
                if (headers.get(b":method") == b"CONNECT"
                        and headers.get(b":protocol") == b"webtransport"):
                    self.h3.send_headers(h3_event.stream_id, [(b":status", b"200"),
                                                              DRAFT_HEADER])
                else:
                    self.h3.send_headers(h3_event.stream_id, [(b":status", b"404")],
                                         end_stream=True)
                self.transmit()
            elif isinstance(h3_event, WebTransportStreamDataReceived):
                self._data(h3_event.stream_id, h3_event.data)

    def _data(self, stream_id, data):
        buf = self.buf
        buf += data
        start = 0
        while len(buf) - start >= 4:
            (n,) = _LENGTH.unpack_from(buf, start)
            end = start + 4 + n
            if len(buf) < end:
                break
            message = pb.ClientMessage()
            message.ParseFromString(bytes(buf[start + 4:end]))
            self._message(stream_id, message)
            start = end
        del buf[:start]

    def _message(self, stream_id, message):
        kind = message.WhichOneof("message")
        if kind == "join_request" and self.peer is None:
            r = message.join_request
            group = GROUPS.setdefault(r.meeting_id, {})
            peer = self.peer = Peer(self, stream_id, "p-" + secrets.token_hex(8),
                                    r.participant_name, r.meeting_id)
            others = list(group.values())
            group[peer.participant_id] = peer
            peer.send(frame(pb.ServerMessage(join_response=pb.JoinResponse(
                participant_id=peer.participant_id, user_id=len(group),
                existing_participants=[pb.Participant(participant_id=o.participant_id,
                                                      name=o.name, joined_at=o.joined_at)
                                       for o in others]))))
            joined = frame(pb.ServerMessage(participant_joined=pb.ParticipantJoined(
                participant=pb.Participant(participant_id=peer.participant_id, name=peer.name,
                                           joined_at=peer.joined_at))))
            for o in others:
                o.send(joined)
        elif kind == "mute_request" and self.peer is not None:
            r = message.mute_request
            update = frame(pb.ServerMessage(participant_mute_update=pb.ParticipantMuteUpdate(
                participant_id=self.peer.participant_id, audio_self_muted=r.audio_muted,
                video_self_muted=r.video_muted)))
            for o in list(GROUPS[self.peer.group].values()):
                o.send(update)

    def _left(self):
        peer, self.peer = self.peer, None
        if peer is None:
            return
        group = GROUPS.get(peer.group, {})
        group.pop(peer.participant_id, None)
        left = frame(pb.ServerMessage(participant_left=pb.ParticipantLeft(
            participant_id=peer.participant_id, reason=pb.VOLUNTARY)))
        for o in list(group.values()):
            o.send(left)
        if not group:
            GROUPS.pop(peer.group, None)


class LagMeter:
    """The lateness of a 250 ms tick, in ms."""

    def __init__(self, interval=0.25):
        self.interval = interval
        self.samples = []

    async def run(self):
        while True:
            expected = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, time.monotonic() - expected) * 1000)

    def dump(self):
        samples, self.samples = self.samples, []
        print(json.dumps({"type": "lag", "samples_ms": samples}), flush=True)


async def main_async(args):
    host, _, port = args.listen.rpartition(":")
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN,
                                      max_datagram_frame_size=65536, idle_timeout=30.0)
    configuration.load_cert_chain(args.cert, args.key)
    server = await serve(host, int(port), configuration=configuration,
                         create_protocol=YardstickProtocol)
    loop = asyncio.get_running_loop()
    lag = LagMeter()
    loop.create_task(lag.run())
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lag.dump)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(json.dumps({"type": "listening", "port": int(port)}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.max_seconds)
    server.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:4433", help="UDP host:port")
    parser.add_argument("--cert", required=True, help="PEM certificate")
    parser.add_argument("--key", required=True, help="PEM private key")
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit by itself after this long")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
