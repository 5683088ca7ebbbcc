"""One participant load generator process: WebTransport participants in
meetings of ``--group``, joined through the GC's join flow, muting on a timer.

Run by ``bench/participants.py`` (several of these, each its own process and
GIL); it speaks JSON lines: commands on stdin, answers and a last report on
stdout.

- Participant ``i`` (0 <= i < ``--count``, this process takes those with
  ``i % --procs == --index``) is ``sub`` ``<prefix>-u<i>`` in meeting
  ``<prefix>-m<i // group>`` and starts its join at ``--t0 + i / --rate``
  (``time.monotonic()``, the same clock in every process of the machine): the
  joins of all the processes together are paced at ``--rate`` a second.
- A join asks the runner's join broker (``--broker host:port``: one JSON line
  ``{"id", "meeting", "sub"}`` out, ``{"id", "ok", "endpoint", "token", "mc",
  "error"}`` back) for the MC's WebTransport URL and a meeting token (the fake
  GC's join flow: it places the meeting, or reuses its MC), then opens a QUIC
  connection, the WebTransport session and its stream, and sends the
  JoinRequest. The join latency is from that send to the JoinResponse's
  arrival, measured here. A refusal (no MC from the GC, an ErrorMessage, a
  RedirectToMc, a timeout) is retried through the broker after a back-off, at
  most ``--join-deadline`` seconds in all.
- A ``RedirectToMc`` to a joined participant (the MC drains): the
  connection is closed and the participant joins again through the broker, at
  most ``--rejoin-inflight`` rejoins in flight in this process.
- Like a browser (Chromium pings a connection with open streams after 15 s
  of silence), a participant that has neither sent nor received for
  ``--ping-after`` seconds sends a QUIC PING, so a silent one is not taken for
  lost by the MC's 30 s idle timeout.

Commands: ``{"cmd": "mute", "at": t, "every": s}`` (each participant mutes
or unmutes every ``s`` seconds from a random phase in ``[t, t + s)``);
``{"cmd": "phase", "name": n}`` (label later join latencies); ``{"cmd":
"stats"}`` (counters now); ``{"cmd": "report"}`` (counters and every join
latency by phase); ``{"cmd": "stop"}`` (close every connection, report,
exit). Exits by itself after ``--max-seconds``.
"""

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import resource
import struct
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mc.participants.engine import (  # noqa: E402
    H3_ALPN,
    ConnectionTerminated,
    QuicConfiguration,
    QuicConnection,
)
from mc.proto import signaling_pb2 as pb  # noqa: E402
from mc.testing.wtclient import WebTransportClient  # noqa: E402

_LENGTH = struct.Struct(">I")
#: A ServerMessage's first byte is the tag of its oneof field (every field
#: number of the oneof is below 16, serialized first, length-delimited).
KINDS = {(f.number << 3) | 2: f.name
         for f in pb.ServerMessage.DESCRIPTOR.oneofs_by_name["message"].fields}
#: A client's back-off before trying again after a refusal: 0.25 s, doubling
#: up to 4 s, each drawn from [half, all] of it.
RETRY_FIRST, RETRY_MAX = 0.25, 4.0
CONNECT_TIMEOUT = 10.0


def frame(message):
    payload = message.SerializeToString()
    return _LENGTH.pack(len(payload)) + payload


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Broker:
    """The runner's join broker, over one TCP connection, requests pipelined."""

    def __init__(self, host, port):
        self._addr = (host, port)
        self._ids = itertools.count()
        self._waiting = {}
        self._writer = None

    async def start(self):
        reader, self._writer = await asyncio.open_connection(*self._addr)
        asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader):
        while line := await reader.readline():
            answer = json.loads(line)
            fut = self._waiting.pop(answer["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(answer)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("join broker gone"))

    async def join(self, meeting_id, sub, timeout=30.0):
        request_id = next(self._ids)
        fut = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        self._writer.write(json.dumps({"id": request_id, "meeting": meeting_id,
                                       "sub": sub}).encode() + b"\n")
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(request_id, None)


class LoadClient(WebTransportClient):
    """The test client, telling its participant when the connection ends."""

    member = None

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated) and self.member is not None:
            self.member.connection_ended(self, event)
        super().quic_event_received(event)


class Member:
    """One participant. Its ``_feed`` is what ``WebTransportClient`` calls with
    its stream's data (it stands in for the client's ``ClientStream``):
    frames are counted by kind from their first byte, and only a
    JoinResponse, ErrorMessage or RedirectToMc is parsed."""

    __slots__ = ("gen", "index", "meeting_id", "sub", "name", "client", "stream_id", "buf", "mc",
                 "waiter", "last_activity", "audio", "joined", "rejoining", "mute_call")

    def __init__(self, gen, index, prefix, group):
        self.gen = gen
        self.index = index
        self.meeting_id = f"{prefix}-m{index // group}"
        self.sub = f"{prefix}-u{index}"
        self.name = f"P{index}"
        self.client = None
        self.stream_id = None
        self.buf = bytearray()
        self.mc = None
        self.waiter = None
        self.last_activity = 0.0
        self.audio = False
        self.joined = False
        self.rejoining = False
        self.mute_call = None

    # -- from the stream ---------------------------------------------------

    def _feed(self, data=b"", ended=False, reset_code=None):
        now = time.monotonic()
        self.last_activity = now
        gen = self.gen
        if data:
            buf = self.buf
            buf += data
            start = 0
            while len(buf) - start >= 4:
                (n,) = _LENGTH.unpack_from(buf, start)
                end = start + 4 + n
                if len(buf) < end:
                    break
                kind = KINDS.get(buf[start + 4], "other")
                gen.received[kind] = gen.received.get(kind, 0) + 1
                if kind in ("join_response", "error", "redirect_to_mc"):
                    self._settle(kind, bytes(buf[start + 4:end]), now)
                start = end
            del buf[:start]
        if ended or reset_code is not None:
            self._settle("closed", b"", now)

    def _settle(self, kind, payload, now):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((kind, payload, now))
        elif kind == "redirect_to_mc" and self.joined:
            m = pb.ServerMessage()
            m.ParseFromString(payload)
            self.gen.redirected(self, m.redirect_to_mc.reason, now)
        elif kind == "closed" and self.joined:
            # The MC closed a joined session without a redirect first.
            self.gen.count("closed_by_mc")
            self.gen.lost(self)

    def connection_ended(self, client, event):
        """The QUIC connection of a joined participant ended without a
        redirect first (an idle timeout, the MC closing it): counted, and the
        participant joins again."""
        if client is not self.client or not self.joined:
            return
        self.gen.count(f"connection_lost_{event.error_code:#x}_{event.reason_phrase or ''}")
        self.gen.lost(self)

    # -- to the MC ---------------------------------------------------------

    def mute(self):
        self.mute_call = None
        if not self.joined:
            return
        self.audio = not self.audio
        self.client._quic.send_stream_data(self.stream_id, frame(pb.ClientMessage(
            mute_request=pb.MuteRequest(audio_muted=self.audio))))
        self.client.transmit()
        self.last_activity = time.monotonic()
        self.gen.mutes_sent += 1

    def drop(self, linger=1.0):
        """Close the connection with NO_ERROR; the socket a moment later."""
        client, self.client = self.client, None
        self.joined = False
        if client is None:
            return
        client._quic.close(error_code=0)
        client.transmit()
        asyncio.get_running_loop().call_later(linger, client.vanish)


class Generator:
    def __init__(self, args):
        self.args = args
        self.broker = Broker(*args.broker_addr) if args.broker else None
        self.members = [Member(self, i, args.prefix, args.group)
                        for i in range(args.index, args.count, args.procs)]
        url = urlsplit(args.url) if args.url else None
        self._fixed = url
        self.configuration = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
            idle_timeout=args.idle_timeout, server_name="localhost")
        self.configuration.verify_mode = 0  # ssl.CERT_NONE: self-signed on loopback
        self.received = {}
        self.counters = {}
        self.mutes_sent = 0
        self.pings = 0
        self.phase = "join"
        self.latencies = {}  # phase -> [seconds]
        self.connect_times = {}  # phase -> [seconds], handshake + CONNECT
        self.pace_late = []  # seconds each paced join started after its slot
        self.redirects = []  # monotonic arrival of each RedirectToMc
        self.rejoined = []  # monotonic completion of each rejoin
        self.rejoin_slots = asyncio.Semaphore(args.rejoin_inflight)
        self.joins_done = 0
        self.failed = 0
        self.started = time.monotonic()
        self.stopping = asyncio.Event()
        self.loop_lag_max = 0.0  # since the last stats, seconds

    def count(self, what, n=1):
        self.counters[what] = self.counters.get(what, 0) + n

    # -- joining -------------------------------------------------------------

    async def _connect(self, host, port, path):
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(
            lambda: LoadClient(QuicConnection(configuration=self.configuration)),
            local_addr=("127.0.0.1", 0))
        try:
            client.connect((host, port))
            await asyncio.wait_for(client.wait_connected(), CONNECT_TIMEOUT)
            session = await client.open_session(path, timeout=CONNECT_TIMEOUT)
        except BaseException:
            client.vanish()
            raise
        if session.status != 200:
            client.vanish()
            raise ConnectionRefusedError(f"CONNECT answered {session.status}")
        return client, session

    async def join(self, m):
        """Join (or join again) through the broker until it works or the
        deadline passes; True when joined."""
        args = self.args
        deadline = time.monotonic() + args.join_deadline
        phase = self.phase
        attempt = 0

        async def back_off():
            nonlocal attempt
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(delay / 2, delay))

        while not self.stopping.is_set():
            if time.monotonic() > deadline:
                self.failed += 1
                self.count("join_gave_up")
                return False
            try:
                if self._fixed is not None:
                    answer = {"ok": True, "endpoint": args.url, "token": "yardstick",
                              "mc": "yardstick"}
                else:
                    answer = await self.broker.join(m.meeting_id, m.sub)
            except (TimeoutError, ConnectionError):
                self.count("broker_error")
                await back_off()
                continue
            if not answer["ok"]:
                self.count("gc_" + answer.get("error", "error"))
                await back_off()
                continue
            url = urlsplit(answer["endpoint"])
            t_connect = time.monotonic()
            try:
                client, session = await self._connect(url.hostname, url.port, url.path or "/")
            except (TimeoutError, ConnectionError, OSError):
                self.count("connect_failed")
                await back_off()
                continue
            connected = time.monotonic()
            m.client, m.buf = client, bytearray()
            client.member = m
            stream_id = client.h3.create_webtransport_stream(session.connect_id)
            client.streams[stream_id] = m
            m.stream_id = stream_id
            m.waiter = asyncio.get_running_loop().create_future()
            sent = time.monotonic()
            client._quic.send_stream_data(stream_id, frame(pb.ClientMessage(
                join_request=pb.JoinRequest(meeting_id=m.meeting_id, join_token=answer["token"],
                                            participant_name=m.name))))
            client.transmit()
            try:
                kind, payload, arrived = await asyncio.wait_for(m.waiter, CONNECT_TIMEOUT)
            except TimeoutError:
                kind, payload, arrived = "timeout", b"", time.monotonic()
            m.waiter = None
            if kind == "join_response":
                m.joined, m.mc, m.last_activity = True, answer["mc"], arrived
                self.latencies.setdefault(phase, []).append(arrived - sent)
                self.connect_times.setdefault(phase, []).append(connected - t_connect)
                self.joins_done += 1
                return True
            if kind == "error":
                message = pb.ServerMessage()
                message.ParseFromString(payload)
                kind = "error_" + pb.ErrorCode.Name(message.error.code)
            self.count("join_" + kind)
            m.drop(linger=0.2)
            await back_off()
        return False

    async def pace(self):
        """Start each participant's first join in its slot."""
        args = self.args
        loop = asyncio.get_running_loop()
        for m in self.members:
            slot = args.t0 + m.index / args.rate
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.pace_late.append(max(0.0, time.monotonic() - slot))
            loop.create_task(self.join(m))

    def redirected(self, m, reason, now):
        """The MC sent a joined participant away: close, join again."""
        self.redirects.append(now)
        self.count("redirect_" + (reason or "none"))
        if m.mute_call is not None:
            m.mute_call.cancel()
            m.mute_call = None
        m.drop()
        m.rejoining = True
        asyncio.get_running_loop().create_task(self._rejoin(m))

    def lost(self, m):
        """A joined participant's connection ended by itself: join again."""
        if m.mute_call is not None:
            m.mute_call.cancel()
            m.mute_call = None
        m.drop(linger=0.0)
        m.rejoining = True
        asyncio.get_running_loop().create_task(self._rejoin(m))

    async def _rejoin(self, m):
        async with self.rejoin_slots:
            ok = await self.join(m)
        m.rejoining = False
        if ok:
            self.rejoined.append(time.monotonic())
            if self.muting is not None:
                self._schedule_mute(m, random.uniform(0, self.muting))

    # -- steady state --------------------------------------------------------

    muting = None  # the mute interval once muting started

    def start_muting(self, at, every):
        self.muting = every
        loop = asyncio.get_running_loop()
        for m in self.members:
            self._schedule_mute(m, max(0.0, at - time.monotonic()) + random.uniform(0, every),
                                loop)

    def _schedule_mute(self, m, delay, loop=None):
        loop = loop or asyncio.get_running_loop()

        def tick():
            m.mute()
            if m.joined:
                m.mute_call = loop.call_later(self.muting, tick)

        m.mute_call = loop.call_later(delay, tick)

    async def keepalive(self):
        """A QUIC PING from each participant silent for ``--ping-after`` s;
        and this process's own loop lag (a late tick), so that a stall of the
        generator is not taken for one of the server."""
        after = self.args.ping_after
        ticks = 0
        while not self.stopping.is_set():
            expected = time.monotonic() + 0.1
            await asyncio.sleep(0.1)
            now = time.monotonic()
            self.loop_lag_max = max(self.loop_lag_max, now - expected)
            ticks += 1
            if ticks % 10:
                continue
            for m in self.members:
                if m.joined and now - m.last_activity > after:
                    m.client._quic.send_ping(0)
                    m.client.transmit()
                    m.last_activity = now
                    self.pings += 1

    # -- reporting -----------------------------------------------------------

    def stats(self):
        by_mc = {}
        for m in self.members:
            if m.joined:
                by_mc[m.mc] = by_mc.get(m.mc, 0) + 1
        return {"type": "stats", "index": self.args.index, "t": time.monotonic(),
                "members": len(self.members), "joined": sum(by_mc.values()), "by_mc": by_mc,
                "joins": self.joins_done, "failed": self.failed,
                "mutes_sent": self.mutes_sent, "received": dict(self.received),
                "pings": self.pings, "counters": dict(self.counters),
                "loop_lag_max_ms": round(self._take_lag() * 1000, 1),
                "redirects": len(self.redirects), "rejoined": len(self.rejoined),
                "first_redirect": min(self.redirects, default=None),
                "last_redirect": max(self.redirects, default=None),
                "last_rejoin": max(self.rejoined, default=None)}

    def _take_lag(self):
        lag, self.loop_lag_max = self.loop_lag_max, 0.0
        return lag

    def report(self):
        out = self.stats()
        out.update(type="report", latencies=self.latencies, connect_times=self.connect_times,
                   pace_late_max=max(self.pace_late, default=0.0))
        return out

    async def commands(self):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            what = cmd["cmd"]
            if what == "mute":
                self.start_muting(cmd["at"], cmd["every"])
            elif what == "phase":
                self.phase = cmd["name"]
            elif what == "stats":
                emit(self.stats())
            elif what == "report":
                emit(self.report())
            elif what == "stop":
                break
        self.stopping.set()

    def close_all(self):
        for m in self.members:
            if m.mute_call is not None:
                m.mute_call.cancel()
            if m.client is not None:
                m.drop(linger=0.5)


async def main_async(args):
    gen = Generator(args)
    if args.url is None:
        await gen.broker.start()
    loop = asyncio.get_running_loop()
    loop.create_task(gen.pace())
    loop.create_task(gen.keepalive())
    commands = loop.create_task(gen.commands())
    try:
        await asyncio.wait_for(gen.stopping.wait(), args.max_seconds)
    except TimeoutError:
        gen.stopping.set()
    commands.cancel()
    gen.close_all()
    await asyncio.sleep(0.6)
    emit(gen.report())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", help="host:port of the runner's join broker")
    parser.add_argument("--url", help="join this WebTransport URL directly, no broker "
                        "(the yardstick, which checks no token)")
    parser.add_argument("--index", type=int, default=0, help="this process's index")
    parser.add_argument("--procs", type=int, default=1, help="generator processes in all")
    parser.add_argument("--count", type=int, required=True, help="participants in all")
    parser.add_argument("--group", type=int, default=10, help="participants per meeting")
    parser.add_argument("--rate", type=float, default=100.0, help="joins a second, in all")
    parser.add_argument("--t0", type=float, help="time.monotonic() of the first join slot")
    parser.add_argument("--prefix", default=f"bench-{os.getpid()}", help="meeting/user ids")
    parser.add_argument("--rejoin-inflight", type=int, default=16,
                        help="rejoins in flight at once in this process (default 16)")
    parser.add_argument("--join-deadline", type=float, default=90.0,
                        help="give a join up after this many seconds of retries")
    parser.add_argument("--ping-after", type=float, default=15.0,
                        help="PING after this many silent seconds (Chromium: 15)")
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="exit by itself after this long")
    args = parser.parse_args(argv)
    if (args.broker is None) == (args.url is None):
        parser.error("one of --broker or --url")
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        args.broker_addr = (host, int(port))
    if args.t0 is None:
        args.t0 = time.monotonic() + 0.5
    # The generator is not under test: its collector is kept from stalling it
    # (start-up objects frozen, young objects given time to die by refcount).
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
