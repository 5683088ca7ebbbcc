"""The static GC tokens (MC_GC_TOKENS) check, run on gRPC worker threads:
pure, no I/O, no shared mutable state. ``mc.ac.service_tokens`` asks it on
MeetingControllerService beside the Auth Controller's JWTs."""

import hmac

from zope.interface import implementer

from mc.config import MAX_TOKEN_BYTES
from mc.interfaces import ITokenCheck

BEARER = b"Bearer "


@implementer(ITokenCheck)
class TokenCheck:
    """Accepts exactly ``Bearer <token>`` for one of the configured tokens.

    Every token is compared, in constant time, whatever the earlier ones gave,
    so the answer's timing tells nothing about which token nearly matched."""

    def __init__(self, tokens):
        self._tokens = tuple(t.reveal().encode() for t in tokens)
        if not self._tokens:
            raise ValueError("TokenCheck needs at least one token")

    def __repr__(self):
        return f"<TokenCheck of {len(self._tokens)} tokens>"

    def check(self, authorization):
        if not isinstance(authorization, str) or len(authorization) > len(BEARER) + MAX_TOKEN_BYTES:
            return False
        try:
            raw = authorization.encode("utf-8")
        except UnicodeEncodeError:
            return False
        if not raw.startswith(BEARER):
            return False
        token = raw[len(BEARER):]
        if not token or len(token) > MAX_TOKEN_BYTES:
            return False
        ok = False
        for t in self._tokens:
            ok |= hmac.compare_digest(token, t)
        return ok
