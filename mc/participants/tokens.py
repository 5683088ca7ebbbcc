"""Meeting tokens: the Auth Controller's JWKS, cached and refreshed, and the
checks a participant's JWT must pass before it may join.

Only ``EdDSA`` (Ed25519) and ``ES256`` (P-256) are accepted, each only with a
key of its own type, so ``none``, HMAC (the HS256-signed-with-the-public-key
trick) and RSA never reach a signature check. PyJWT checks the signature; the
claims, ``exp`` and ``iat`` included, are checked here against the injected
clock so that tests drive time. A JWKS that cannot be fetched never replaces
the last good one, and the MC stays up without any: joins are then refused
with ``NoJwks`` until a fetch succeeds.
"""

import base64
import json
import math
import re
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from zope.interface import implementer

from mc.backoff import retry_policy
from mc.errors import InvalidToken, NoJwks
from mc.httpbody import read_capped
from mc.interfaces import IJwksKeys, ITokenVerifier

MAX_TOKEN_BYTES = 8192
MAX_JWKS_BYTES = 1 << 20
MAX_KEYS = 100
MAX_KID_CHARS = 256
FETCH_TIMEOUT = 5.0
REFRESH_INTERVAL = 300.0
#: Least time between two fetches, so tokens with made-up kids cannot make
#: the MC hammer the Auth Controller.
REFETCH_SPACING = 10.0
#: MC_MAX_TOKEN_LIFETIME_SECONDS's default: a token valid longer is refused.
DEFAULT_MAX_LIFETIME = 86400.0

#: alg -> the JWK (kty, crv) its key must have.
ALGORITHMS = {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}
_ALG_OF_KEY_TYPE = {key_type: alg for alg, key_type in ALGORITHMS.items()}
PARTICIPANT_TYPES = ("member", "external")
ROLES = ("host", "participant")

#: PyJWT checks the signature only; every claim is checked by check_claims.
_SIGNATURE_ONLY = {
    "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
    "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False,
    "require": [],
}
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def redact_url(url):
    """``url`` without user info, query or fragment, for log lines: a signed
    JWKS URL may carry a credential there."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _b64url_bytes(value, size):
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if len(raw) != size:
        raise ValueError(f"not {size} bytes")
    return raw


def _public_key(jwk):
    """``(alg, public key)`` for a usable JWK; ValueError for any other."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS:
        raise ValueError("no kid")
    if "d" in jwk:
        raise ValueError("private key published")
    if jwk.get("use", "sig") != "sig":
        raise ValueError("not a signing key")
    key_type = (jwk.get("kty"), jwk.get("crv"))
    alg = _ALG_OF_KEY_TYPE.get(key_type) if all(isinstance(v, str) for v in key_type) else None
    if alg is None:
        raise ValueError("unsupported kty/crv")
    if jwk.get("alg", alg) != alg:
        raise ValueError("alg does not match the key type")
    if alg == "EdDSA":
        return alg, ed25519.Ed25519PublicKey.from_public_bytes(_b64url_bytes(jwk.get("x"), 32))
    x = int.from_bytes(_b64url_bytes(jwk.get("x"), 32), "big")
    y = int.from_bytes(_b64url_bytes(jwk.get("y"), 32), "big")
    return alg, ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def parse_jwks(data):
    """``{kid: (alg, public key)}`` from a JWKS document's bytes. Keys of
    another type, without a kid, malformed or past the first ``MAX_KEYS``
    are ignored (the first of two with one kid wins); ValueError when the
    document is not a JWKS or holds no usable key."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError("no 'keys' list")
    usable = {}
    for jwk in keys[:MAX_KEYS]:
        if not isinstance(jwk, dict):
            continue
        try:
            alg, key = _public_key(jwk)
        except (ValueError, TypeError):
            continue
        usable.setdefault(jwk["kid"], (alg, key))
    if not usable:
        raise ValueError("no usable key")
    return usable


def _is_number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def _is_text(value):
    return isinstance(value, str) and bool(value)


def check_claims(claims, meeting_id, audience, now, skew, max_lifetime=DEFAULT_MAX_LIFETIME):
    """Return ``claims`` when they make a meeting token for ``meeting_id``
    valid at ``now``; else InvalidToken. ``exp`` is past once ``now`` reaches
    ``exp + skew``; ``iat`` and ``nbf`` are in the future beyond ``now +
    skew``; ``exp - iat`` may not exceed ``max_lifetime``."""
    for name in ("sub", "meeting_org_id", "jti"):
        if not _is_text(claims.get(name)):
            raise InvalidToken(f"{name} missing or not a string")
    if claims.get("token_type") != "meeting":
        raise InvalidToken("token_type is not meeting")
    if not isinstance(claims.get("meeting_id"), str) or claims["meeting_id"] != meeting_id:
        raise InvalidToken("meeting_id does not match")
    if claims.get("participant_type") not in PARTICIPANT_TYPES:
        raise InvalidToken("bad participant_type")
    if claims.get("role") not in ROLES:
        raise InvalidToken("bad role")
    capabilities = claims.get("capabilities")
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise InvalidToken("capabilities not a list of strings")
    if "home_org_id" in claims and not isinstance(claims["home_org_id"], str):
        raise InvalidToken("home_org_id not a string")
    iat, exp = claims.get("iat"), claims.get("exp")
    if not (_is_number(iat) and _is_number(exp)):
        raise InvalidToken("iat or exp missing or not a number")
    if exp <= now - skew:
        raise InvalidToken("expired")
    if iat > now + skew:
        raise InvalidToken("iat in the future")
    if exp - iat > max_lifetime:
        raise InvalidToken("valid for too long")
    if "nbf" in claims:
        nbf = claims["nbf"]
        if not _is_number(nbf):
            raise InvalidToken("nbf not a number")
        if nbf > now + skew:
            raise InvalidToken("not valid yet")
    if audience is not None and claims.get("aud") != audience:
        raise InvalidToken("aud does not match")
    return claims


def read_header(token):
    """``(alg, kid)`` of a token small enough, well formed and of an allowed
    alg; InvalidToken otherwise. Nothing is trusted before the signature."""
    if not isinstance(token, str):
        raise InvalidToken("not a string")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("oversized")
    if not token.isascii():
        raise InvalidToken("malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("malformed header") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise InvalidToken("alg not allowed")
    if "crit" in header:
        raise InvalidToken("critical header extension")
    kid = header.get("kid")
    if not _is_text(kid):
        raise InvalidToken("no kid")
    return alg, kid


def verify_signature(token, alg, entry):
    """The claims of ``token`` (of header ``alg``) once its signature checks
    out with ``entry``, a key set's ``(alg, public key)`` (None: the kid is
    unknown); InvalidToken otherwise. Pure: any thread."""
    if entry is None:
        raise InvalidToken("unknown kid")
    key_alg, key = entry
    if key_alg != alg:
        raise InvalidToken("key type does not match alg")
    try:
        claims = jwt.decode(token, key, algorithms=[alg], options=_SIGNATURE_ONLY)
    except jwt.InvalidSignatureError:
        raise InvalidToken("bad signature") from None
    except jwt.PyJWTError:
        raise InvalidToken("malformed token") from None
    return claims


def thd_read_file(path, max_bytes):
    """A local JWKS file's bytes, at most ``max_bytes``; runs in a thread."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"JWKS larger than {max_bytes} bytes")
    return data


class JwksFetcher:
    """``fetch(url)``: a Deferred of the JWKS document's bytes from
    ``file://`` (read in the reactor's thread pool), ``http://`` or
    ``https://`` (Agent, 200 only, no redirects), at most ``max_bytes``.
    The caller bounds the time."""

    def __init__(self, reactor, max_bytes=MAX_JWKS_BYTES):
        self._reactor = reactor
        self._max = max_bytes
        self._agent = Agent(reactor, connectTimeout=FETCH_TIMEOUT)

    def __call__(self, url):
        parts = urlsplit(url)
        if parts.scheme == "file":
            return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                             thd_read_file, url2pathname(parts.path), self._max)
        d = self._agent.request(b"GET", url.encode("ascii"),
                                Headers({b"accept": [b"application/json"]}))
        return d.addCallback(self._body)

    def _body(self, response):
        finished = read_capped(response, self._max, "JWKS")
        if response.code == 200:
            return finished

        def refuse(_):
            raise ValueError(f"HTTP {response.code}")

        return finished.addCallback(refuse)


def _check_url(url):
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError("a file:// JWKS URL names a local path")
    elif parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError("the JWKS URL has no host")
        _ = parts.port  # raises ValueError for a port that is not a number
    else:
        raise ValueError("the JWKS URL must be file://, http:// or https://")


@implementer(ITokenVerifier, IJwksKeys)
class TokenVerifier(Service):
    """Verifies meeting tokens against the JWKS at ``jwks_url``.

    The first fetch starts with the service and is retried with
    ``retry(attempt)`` delays (the MC's backoff) until one loads; from then on
    the JWKS is refreshed every ``REFRESH_INTERVAL`` seconds, and a token with
    an unknown kid fetches it at once if the last fetch started at least
    ``REFETCH_SPACING`` seconds ago (verifies arriving meanwhile share it).
    The same cache checks the service tokens of calls the MC receives
    (``IJwksKeys``: ``mc.ac.service_tokens``).

    ``audience``: required ``aud`` (None: not checked). ``clock_skew``:
    seconds of tolerance on ``exp``, ``iat`` and ``nbf``; ``max_lifetime``:
    longest ``exp - iat`` accepted. ``reactor``: time source and,
    unless ``fetch`` (``url -> Deferred of bytes``) is given, the network and
    thread pool. ``on_refresh(outcome)``: called with ``"ok"`` or ``"error"``
    after each fetch, for metrics. ``refetch_spacing``: least seconds
    between two fetches asked by unknown kids (default ``REFETCH_SPACING``).
    """

    name = "jwks"
    log = Logger()

    def __init__(self, jwks_url, audience, clock_skew, reactor, on_refresh=None, fetch=None,
                 retry=None, max_lifetime=DEFAULT_MAX_LIFETIME, refetch_spacing=None):
        self._refetch_spacing = REFETCH_SPACING if refetch_spacing is None else refetch_spacing
        _check_url(jwks_url)
        self._url = jwks_url
        self._log_url = redact_url(jwks_url)
        self._audience = audience or None
        self._skew = float(clock_skew)
        self._max_lifetime = float(max_lifetime)
        self._clock = reactor
        self._fetch = fetch if fetch is not None else JwksFetcher(reactor)
        self._on_refresh = on_refresh
        self._retry = retry if retry is not None else retry_policy()
        self._keys: dict[str, tuple[str, object]] | None = None
        self._loaded_at: float | None = None
        self._last_fetch_at: float | None = None
        self._inflight: Deferred | None = None
        self._waiters: list[Deferred] = []
        self._attempt = 0
        self._call = None

    def __repr__(self):
        count = None if self._keys is None else len(self._keys)
        return f"<TokenVerifier {self._log_url} keys={count}>"

    @property
    def ready(self):
        return self._keys is not None

    def age(self):
        """Seconds since the last successful load, or None before the first."""
        return None if self._loaded_at is None else self._clock.seconds() - self._loaded_at

    # --- life cycle -------------------------------------------------------

    def startService(self):
        super().startService()
        self._tick()

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._inflight is not None:
            self._inflight.cancel()

    def _tick(self):
        """The periodic refresh; whatever happens, the next one is scheduled."""
        self._call = None
        try:
            d = self._refresh()
        except Exception:
            self.log.failure("JWKS refresh failed to start")
            self._schedule()
        else:
            d.addBoth(lambda _: self._schedule())

    def _schedule(self):
        if not self.running:
            return
        if self.ready:
            delay = REFRESH_INTERVAL
        else:
            delay = self._retry(self._attempt)
            self._attempt += 1
        self._call = self._clock.callLater(delay, self._tick)

    # --- fetching -----------------------------------------------------------

    def _refresh(self):
        """A Deferred that fires (never fails) once a fetch is over: the one in
        flight if any, else a new one."""
        waiter = Deferred()
        self._waiters.append(waiter)
        if self._inflight is None:
            self._last_fetch_at = self._clock.seconds()
            self._inflight = d = maybeDeferred(self._fetch, self._url)
            d.addTimeout(FETCH_TIMEOUT, self._clock)
            d.addCallback(parse_jwks)
            d.addCallbacks(self._loaded, self._not_loaded)
            d.addErrback(lambda f: self.log.failure("JWKS refresh bookkeeping failed", f))
            d.addBoth(self._release)
        return waiter

    def _loaded(self, keys):
        changed = self._keys is None or keys.keys() != self._keys.keys()
        self._keys = keys
        self._loaded_at = self._clock.seconds()
        self._attempt = 0
        if changed:
            self.log.info("JWKS loaded from {url}: kids {kids}", url=self._log_url,
                          kids=sorted(keys))
        self._report("ok")

    def _not_loaded(self, failure):
        if failure.check(CancelledError) and not self.running:
            return  # stopped mid-fetch
        self.log.warn("JWKS from {url} not loaded ({kept}): {why}", url=self._log_url,
                      kept="keeping the last good one" if self.ready else "none loaded yet",
                      why=f"{failure.type.__name__}: {failure.getErrorMessage()}")
        self._report("error")

    def _report(self, outcome):
        if self._on_refresh is not None:
            try:
                self._on_refresh(outcome)
            except Exception:
                self.log.failure("JWKS refresh observer failed")

    def _release(self, _):
        self._inflight = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _may_refetch(self):
        if self._inflight is not None:
            return True
        return self.running and (
            self._last_fetch_at is None
            or self._clock.seconds() - self._last_fetch_at >= self._refetch_spacing)

    # --- the key set (IJwksKeys) ---------------------------------------------

    def key(self, kid):
        """``(alg, public key)`` of ``kid``, or None; safe from any thread
        (a load replaces the whole mapping at once)."""
        keys = self._keys
        return None if keys is None else keys.get(kid)

    def refetch(self):
        """Fetch the JWKS again for an unknown kid, rate-limited; the
        Deferred fires (never fails) once it is over, at once when no fetch
        is allowed now."""
        return self._refresh() if self._may_refetch() else succeed(None)

    # --- verifying ----------------------------------------------------------

    def verify(self, token, meeting_id):
        if self._keys is None:
            return fail(NoJwks())
        try:
            alg, kid = read_header(token)
        except InvalidToken as e:
            return fail(e)
        if kid in self._keys:
            return maybeDeferred(self._check, token, alg, kid, meeting_id)
        d = self.refetch()
        return d.addCallback(lambda _: self._check(token, alg, kid, meeting_id))

    def _check(self, token, alg, kid, meeting_id):
        claims = verify_signature(token, alg, self.key(kid))
        return check_claims(claims, meeting_id, self._audience, self._clock.seconds(), self._skew,
                            self._max_lifetime)
