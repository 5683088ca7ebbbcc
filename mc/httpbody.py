"""A response body read into memory up to a bound: what the MC fetches over
HTTP (the Auth Controller's JWKS and service tokens) never grows its memory
past the bound, whatever the peer declares or sends."""

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH


class BodyTooLarge(ValueError):
    """The body is larger than the bound."""


class CappedBody(Protocol):
    """Collects a response body of at most ``max_bytes`` into ``finished``; a
    bigger one (as declared or as it arrives) is cut off with BodyTooLarge
    naming ``what``. Cancelling ``finished`` drops the connection."""

    def __init__(self, declared, max_bytes, what="body"):
        self.finished = Deferred(lambda _: self.transport.stopProducing())
        self._declared = declared
        self._max = max_bytes
        self._what = what
        self._chunks = []
        self._size = 0

    def connectionMade(self):
        if self._declared is not UNKNOWN_LENGTH and self._declared > self._max:
            self._too_large()

    def dataReceived(self, data):
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._max:
            self._too_large()
        else:
            self._chunks.append(data)

    def _too_large(self):
        self.finished.errback(BodyTooLarge(f"{self._what} larger than {self._max} bytes"))
        self.transport.stopProducing()

    def connectionLost(self, reason):
        if self.finished.called:
            return
        # A body without a length ends with the connection (PotentialDataLoss);
        # a cut JSON document cannot parse, so it is accepted here.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


def read_capped(response, max_bytes, what="body"):
    """A Deferred of ``response``'s body bytes, at most ``max_bytes``."""
    body = CappedBody(response.length, max_bytes, what)
    response.deliverBody(body)
    return body.finished
