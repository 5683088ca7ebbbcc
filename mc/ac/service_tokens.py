"""The service tokens of the calls the MC receives, checked on every call as
the platform's services check theirs (platform-v1.md, section 2):

1. one ``authorization`` header, ``Bearer `` + a token of at most 8192
   bytes, else UNAUTHENTICATED;
2. a JWT signed by a key of the Auth Controller's JWKS (the cache meeting
   tokens use; an unknown ``kid`` fetches it again, rate-limited), with
   ``exp`` and ``iat`` within the clock skew, else UNAUTHENTICATED;
3. ``scope`` holding ``service.write.mc``, else PERMISSION_DENIED;
4. ``service_type`` the one the called service takes (``AUTHORIZED``: a GC
   for MeetingControllerService under either package, an MH for
   MediaCoordinationService); any other path is refused, else
   PERMISSION_DENIED.

A static GC token list (MC_GC_TOKENS), when set, is accepted on
MeetingControllerService beside the JWTs, for a fleet moving off static
tokens. The caller learns nothing of which check failed. Runs on grpcio's
worker threads: pure code, except the bounded wait for a JWKS refetch on
the reactor.
"""

import concurrent.futures
import math
import threading
from collections import OrderedDict

import grpc
from twisted.logger import Logger
from zope.interface import implementer

from mc.config import MAX_TOKEN_BYTES
from mc.errors import InvalidToken
from mc.interfaces import ICallAuthorizer
from mc.participants.tokens import read_header, verify_signature
from mc.proto import gc_mc_legacy_pb2, gc_mc_pb2, media_pb2

OK = "ok"
UNAUTHENTICATED = "unauthenticated"
PERMISSION_DENIED = "permission_denied"
#: What the caller is told, whatever the check that failed.
STATUS = {
    UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, "Invalid token"),
    PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, "Access denied"),
}

SCOPE = "service.write.mc"
GLOBAL_CONTROLLER = "global-controller"
MEDIA_HANDLER = "media-handler"


def _service(module, name):
    return module.DESCRIPTOR.services_by_name[name].full_name


MEETING_CONTROLLER_SERVICES = frozenset(
    _service(m, "MeetingControllerService") for m in (gc_mc_pb2, gc_mc_legacy_pb2))
MEDIA_COORDINATION_SERVICE = _service(media_pb2, "MediaCoordinationService")
#: service full name -> the one service_type it takes. Fail closed: a path
#: of any other service is refused.
AUTHORIZED = {
    **{service: GLOBAL_CONTROLLER for service in MEETING_CONTROLLER_SERVICES},
    MEDIA_COORDINATION_SERVICE: MEDIA_HANDLER,
}
#: Seconds a worker waits for a JWKS refetch asked by an unknown kid.
REFETCH_WAIT = 5.0
#: Tokens whose signature was verified, kept so that a peer's next call with
#: the same token (a GC sends one for its life) skips the signature check;
#: the claims are checked again on every call.
VERIFIED_CACHE = 256
BEARER = "Bearer "


def service_of(path):
    """The service full name of a method path (``/pkg.Service/Method``), or None."""
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    service, slash, method = path[1:].partition("/")
    return service if slash and method and "/" not in method else None


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def check_service_claims(claims, service, now, skew):
    """The outcome for valid-signature ``claims`` on a call of ``service``."""
    exp, iat = claims.get("exp"), claims.get("iat")
    if not (_number(exp) and _number(iat)) or exp <= now - skew or iat > now + skew:
        return UNAUTHENTICATED
    scope = claims.get("scope")
    if not isinstance(scope, str) or SCOPE not in scope.split():
        return PERMISSION_DENIED
    allowed = AUTHORIZED.get(service)
    if allowed is None or claims.get("service_type") != allowed:
        return PERMISSION_DENIED
    return OK


@implementer(ICallAuthorizer)
class ServiceTokenCheck:
    """The check of every call: ``keys`` (IJwksKeys) for the JWTs, ``static``
    (an ``mc.gc.auth.TokenCheck``, or None) for the static GC tokens on
    MeetingControllerService. ``reactor`` runs the refetch and gives the
    time; ``skew``: seconds of tolerance on ``exp`` and ``iat``.
    ``on_outcome(service_label, outcome)`` counts each decision (any thread)."""

    log = Logger()

    def __init__(self, keys, reactor, skew, static=None, on_outcome=None, verified=None):
        self._keys = keys
        self._reactor = reactor
        self._skew = float(skew)
        self._static = static
        self._on_outcome = on_outcome
        self._verified = verified if verified is not None else _Verified()

    def __repr__(self):
        return f"<ServiceTokenCheck static={self._static is not None}>"

    def with_static(self, static):
        """The same check with another static GC token list (SIGHUP)."""
        return ServiceTokenCheck(self._keys, self._reactor, self._skew, static, self._on_outcome,
                                 self._verified)

    def thd_authorize(self, path, authorizations):
        service = service_of(path)
        outcome = self._thd_decide(service, authorizations)
        if self._on_outcome is not None:
            self._on_outcome(service_label(service), outcome)
        return outcome

    def _thd_decide(self, service, authorizations):
        if len(authorizations) != 1:
            return UNAUTHENTICATED
        value = authorizations[0]
        if not isinstance(value, str) or not value.startswith(BEARER):
            return UNAUTHENTICATED
        token = value[len(BEARER):]
        if not token or len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
            return UNAUTHENTICATED
        if (self._static is not None and service in MEETING_CONTROLLER_SERVICES
                and self._static.check(value)):
            return OK
        try:
            claims = self._thd_verified(token)
        except InvalidToken:
            return UNAUTHENTICATED
        return check_service_claims(claims, service, self._reactor.seconds(), self._skew)

    def _thd_verified(self, token):
        """The claims of a token signed by a key of the JWKS now (a cached
        verification counts while its kid is still published)."""
        cached = self._verified.get(token)
        if cached is not None:
            kid, entry, claims = cached
            if self._keys.key(kid) == entry:
                return claims
        alg, kid = read_header(token)
        entry = self._keys.key(kid)
        if entry is None:
            entry = self._thd_refetched(kid)
        claims = verify_signature(token, alg, entry)
        self._verified.put(token, (kid, entry, claims))
        return claims

    def _thd_refetched(self, kid):
        """The key of ``kid`` after one refetch of the JWKS on the reactor
        (rate-limited there), waited for at most ``REFETCH_WAIT`` seconds."""
        future = concurrent.futures.Future()

        def refetch():
            d = self._keys.refetch()
            d.addBoth(lambda _: future.set_result(None))

        self._reactor.callFromThread(refetch)
        try:
            future.result(REFETCH_WAIT)
        except concurrent.futures.TimeoutError:
            return None
        return self._keys.key(kid)


class _Verified:
    """A bounded, thread-safe map of verified tokens, the least recently
    used dropped first."""

    def __init__(self, size=VERIFIED_CACHE):
        self._size = size
        self._lock = threading.Lock()
        self._entries = OrderedDict()

    def get(self, token):
        with self._lock:
            value = self._entries.get(token)
            if value is not None:
                self._entries.move_to_end(token)
            return value

    def put(self, token, value):
        with self._lock:
            self._entries[token] = value
            self._entries.move_to_end(token)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


@implementer(ICallAuthorizer)
class AllowAll:
    """``--insecure-no-auth``: every call proceeds."""

    def __repr__(self):
        return "<AllowAll>"

    def thd_authorize(self, path, authorizations):
        return OK


def service_label(service):
    """A bounded metric label for a service full name."""
    if service in MEETING_CONTROLLER_SERVICES:
        return "MeetingControllerService"
    if service == MEDIA_COORDINATION_SERVICE:
        return "MediaCoordinationService"
    return "other"
