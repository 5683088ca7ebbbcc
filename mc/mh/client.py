"""The MC's calls to media handlers: ``RegisterMeeting`` over grpcio, as Deferreds.

One channel per MH gRPC URL, kept while it is in use (an MC's meetings share
a handful of MHs), plaintext for ``http://`` and TLS for ``https://``. Each
call first waits at most ``connect_timeout`` for the channel to be ready,
then at most ``deadline`` for the answer, as the platform's MC does (5 s and
10 s).
"""

from collections import OrderedDict
from urllib.parse import urlsplit

import grpc
from twisted.internet import defer
from zope.interface import implementer

from mc.config import Address
from mc.errors import MhCallError
from mc.gc.gcclient import CHANNEL_OPTIONS, read_ca_file
from mc.grpcfuture import deferred_from_future
from mc.interfaces import IMhClient
from mc.proto import media_pb2_grpc

CONNECT_TIMEOUT = 5.0
CALL_DEADLINE = 10.0
#: Channels kept open; the least recently used beyond this is closed.
MAX_CHANNELS = 64


def channel_target(grpc_url):
    """``(host:port, tls)`` of an MH's ``http(s)://host:port`` gRPC URL."""
    parts = urlsplit(grpc_url)
    tls = parts.scheme == "https"
    return str(Address(parts.hostname, parts.port or (443 if tls else 80))), tls


@implementer(IMhClient)
class GrpcMhClient:
    """``IMhClient`` over grpcio; ``ca_file``: the CA bundle ``https://`` MHs
    are verified against (None: the system's roots)."""

    def __init__(self, reactor, ca_file=None, connect_timeout=CONNECT_TIMEOUT,
                 deadline=CALL_DEADLINE):
        self._reactor = reactor
        self._root_certificates = read_ca_file(ca_file)
        self._connect_timeout = connect_timeout
        self._deadline = deadline
        self._channels = OrderedDict()  # grpc URL -> (channel, stub)

    def __repr__(self):
        return f"<GrpcMhClient channels={len(self._channels)}>"

    def register_meeting(self, grpc_url, request, metadata):
        return defer.ensureDeferred(self._register_meeting(grpc_url, request, metadata))

    async def _register_meeting(self, grpc_url, request, metadata):
        channel, stub = self._channel(grpc_url)
        ready = deferred_from_future(self._reactor, grpc.channel_ready_future(channel),
                                     self._error("connect"))
        ready.addTimeout(self._connect_timeout, self._reactor, onTimeoutCancel=self._not_ready)
        await ready
        return await deferred_from_future(
            self._reactor,
            stub.RegisterMeeting.future(request, timeout=self._deadline, metadata=metadata),
            self._error("RegisterMeeting"))

    def _not_ready(self, _result, _timeout):
        return MhCallError("connect", "UNAVAILABLE",
                           f"not connected within {self._connect_timeout:g}s")

    def close(self):
        for channel, _stub in self._channels.values():
            channel.close()
        self._channels.clear()

    def _channel(self, grpc_url):
        entry = self._channels.pop(grpc_url, None)
        if entry is None:
            target, tls = channel_target(grpc_url)
            if tls:
                creds = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
                channel = grpc.secure_channel(target, creds, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            entry = (channel, media_pb2_grpc.MediaHandlerServiceStub(channel))
            while len(self._channels) >= MAX_CHANNELS:
                _url, (old, _stub) = self._channels.popitem(last=False)
                old.close()
        self._channels[grpc_url] = entry
        return entry

    @staticmethod
    def _error(method):
        return lambda code, details: MhCallError(method, code, details)
