"""A participant of a meeting over WebTransport, as the contract's clients
behave: join with a meeting token, read the roster and what others do, mute,
leave, vanish, reconnect. For tests, the demo and the benchmark.

``Participant`` is asyncio (on ``mc.testing.wtclient``); ``SyncParticipant``
drives one from synchronous code through a ``LoopThread``, every call bounded
by a timeout.
"""

import asyncio
import struct
from urllib.parse import urlsplit

from mc.proto import signaling_pb2 as pb
from mc.testing.wtclient import LoopThread, connect

_LENGTH = struct.Struct(">I")


def frame(message):
    payload = message.SerializeToString()
    return _LENGTH.pack(len(payload)) + payload


def join_request(meeting_id, token, name, correlation_id="", binding_token="", trace_parent="",
                 trace_state=""):
    """A JoinRequest; ``trace_parent`` / ``trace_state``: the client's W3C trace context."""
    return pb.ClientMessage(join_request=pb.JoinRequest(
        meeting_id=meeting_id, join_token=token, participant_name=name,
        correlation_id=correlation_id, binding_token=binding_token),
        trace_parent=trace_parent, trace_state=trace_state)


class Participant:
    """One participant's session; ``messages`` keeps every ServerMessage
    received, in order, and ``expect`` waits for the next of a kind."""

    def __init__(self, client, session, stream):
        self.client = client
        self.session = session
        self.stream = stream
        self.messages = []
        self.closed = False  # the MC finished or reset the stream
        self._unread = 0  # index of the first message ``expect`` has not returned
        self._arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.joined = None  # the JoinResponse, once ``join`` returns

    @classmethod
    async def open(cls, url, *, origin=None, idle_timeout=30.0, timeout=5.0, local_host=None):
        """Connect to the MC's WebTransport URL (from ``local_host`` when
        given) and open the session and its stream, without joining."""
        parts = urlsplit(url)
        client = await connect(parts.hostname, parts.port or 443, idle_timeout=idle_timeout,
                               timeout=timeout, local_host=local_host)
        session = await client.open_session(parts.path or "/", origin, timeout=timeout)
        if session.status != 200:
            raise ConnectionRefusedError(f"CONNECT answered {session.status}")
        return cls(client, session, session.open_stream())

    @classmethod
    async def join(cls, url, meeting_id, token, name, *, correlation_id="", binding_token="",
                   origin=None, idle_timeout=30.0, timeout=5.0, local_host=None,
                   trace_parent="", trace_state=""):
        """Open a session and send the JoinRequest; return the participant
        once the MC answered (``joined`` holds the JoinResponse, or None
        when it answered otherwise: see ``messages``)."""
        p = await cls.open(url, origin=origin, idle_timeout=idle_timeout, timeout=timeout,
                           local_host=local_host)
        p.send(join_request(meeting_id, token, name, correlation_id, binding_token,
                            trace_parent, trace_state))
        first = await p.next(timeout)
        p.joined = first.join_response if first.HasField("join_response") else None
        return p

    @property
    def participant_id(self):
        return self.joined.participant_id if self.joined else None

    def send(self, message):
        self.stream.send(frame(message))

    def send_raw(self, data, fin=False):
        self.stream.send(data, fin)

    def mute(self, audio=True, video=False):
        self.send(pb.ClientMessage(mute_request=pb.MuteRequest(audio_muted=audio,
                                                              video_muted=video)))

    async def next(self, timeout=5.0):
        """The next message not yet returned by ``next``/``expect``."""
        return await self.expect(None, timeout)

    async def expect(self, kind, timeout=5.0):
        """The next message of ``kind`` (a ServerMessage oneof name; None for
        any), skipping others; TimeoutError or EOFError when it never comes."""
        async def wait():
            while True:
                while self._unread < len(self.messages):
                    m = self.messages[self._unread]
                    self._unread += 1
                    if kind is None or m.WhichOneof("message") == kind:
                        return m
                if self.closed:
                    raise EOFError(f"stream closed before a {kind or 'message'}")
                self._arrived.clear()
                await self._arrived.wait()
        return await asyncio.wait_for(wait(), timeout)

    def kinds(self):
        return [m.WhichOneof("message") for m in self.messages]

    async def leave(self, timeout=5.0):
        """Leave on purpose: finish the stream, close the session, then the
        connection with NO_ERROR."""
        self.stream.send(b"", fin=True)
        self.session.close()
        await self.client.close(0, timeout)
        self._reader.cancel()

    async def wait_closed(self, timeout=5.0):
        """Wait until the MC finished (or reset) the stream and every message
        before that was read."""
        async def wait():
            while not self.closed:
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.wait_for(wait(), timeout)

    async def close(self, timeout=5.0):
        """Close the QUIC connection with NO_ERROR (without a stream FIN)."""
        await self.client.close(0, timeout)
        self._reader.cancel()

    def vanish(self):
        """Lose the network: send nothing more, ever."""
        self.client.vanish()
        self._reader.cancel()

    async def _read(self):
        try:
            while True:
                header = await self.stream.read_exactly(4, timeout=3600)
                (n,) = _LENGTH.unpack(header)
                payload = await self.stream.read_exactly(n, timeout=3600)
                m = pb.ServerMessage()
                m.ParseFromString(payload)
                self.messages.append(m)
                self._arrived.set()
        except (asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.closed = True
            self._arrived.set()


class SyncParticipant:
    """A ``Participant`` driven from synchronous code: every method runs on
    the loop thread and returns within its timeout."""

    def __init__(self, thread, participant):
        self._thread = thread
        self.p = participant

    @classmethod
    def join(cls, thread, url, meeting_id, token, name, timeout=5.0, **kw):
        return cls(thread, thread.run(Participant.join, url, meeting_id, token, name,
                                      timeout=timeout, **kw))

    @property
    def joined(self):
        return self.p.joined

    @property
    def participant_id(self):
        return self.p.participant_id

    @property
    def messages(self):
        return list(self._thread.run(lambda: list(self.p.messages)))

    def kinds(self):
        return [m.WhichOneof("message") for m in self.messages]

    def expect(self, kind, timeout=5.0):
        return self._thread.run(self.p.expect, kind, timeout, timeout=timeout)

    def mute(self, audio=True, video=False):
        self._thread.run(self.p.mute, audio, video)

    def send(self, message):
        self._thread.run(self.p.send, message)

    def send_raw(self, data, fin=False):
        self._thread.run(self.p.send_raw, data, fin)

    def leave(self, timeout=5.0):
        self._thread.run(self.p.leave, timeout, timeout=timeout)

    def wait_closed(self, timeout=5.0):
        self._thread.run(self.p.wait_closed, timeout, timeout=timeout)

    def vanish(self):
        self._thread.run(self.p.vanish)


__all__ = ["LoopThread", "Participant", "SyncParticipant", "frame", "join_request"]
