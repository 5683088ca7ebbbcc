"""The MC's service identity: the bearer token it sends to GCs and MHs.

With ``AC_ENDPOINT`` the token comes from the Auth Controller by OAuth 2.0
client credentials and is renewed well before it expires; the current token
stays in use until it expires while renewals fail, and an expired one is
never sent. An AC that is down at start does not stop the MC: it starts
without a token (``/readyz``: ``no service token``) and registers with the GC
once one comes. Without ``AC_ENDPOINT``, a static token from the settings
(``StaticIdentity``), for deployments without an AC.

The token lives in a ``Secret`` and reaches nothing but the metadata of a
call: no log line, repr or metric label.
"""

import json
import math
from io import BytesIO

import jwt
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from zope.interface import implementer

from mc.backoff import retry_policy
from mc.config import MAX_TOKEN_BYTES, TOKEN_RE, Secret
from mc.httpbody import read_capped
from mc.interfaces import IServiceIdentity

TOKEN_PATH = "/api/v1/auth/service/token"
#: The AC's answer is a few hundred bytes; anything past this is not one.
MAX_RESPONSE_BYTES = 64 * 1024
CONNECT_TIMEOUT = 5.0
#: The whole request, connect to last byte.
REQUEST_TIMEOUT = 10.0
#: A token is renewed ``RENEW_BEFORE`` seconds before it expires (the
#: McServiceTokenExpiring alert pages at 10 minutes left, so renewal failing
#: for 5 minutes shows before it matters), but a short one at the latest at
#: ``SHORT_RENEW_SHARE`` of its life and any one at the latest at
#: ``LATEST_RENEW_SHARE`` of it: a 20 s token at 10 s, a 1 h one at 45 min,
#: a day-long one at 80 %.
RENEW_BEFORE = 900.0
SHORT_RENEW_SHARE = 0.5
LATEST_RENEW_SHARE = 0.8
#: A token this close to its expiry is not sent any more: it could expire
#: on the way.
SEND_MARGIN = 1.0
#: The longest life believed: a longer ``expires_in`` is cut to this.
MAX_LIFE = 86400.0

OUTCOMES = ("ok", "rejected", "invalid", "error")


class TokenRefused(Exception):
    """The AC refused the credentials (HTTP 401 or 403)."""


class BadTokenResponse(Exception):
    """The AC's answer is no usable token; the message says why, never the body."""


class TokenRequestFailed(Exception):
    """The AC answered another HTTP status."""


def renewal_delay(life):
    """Seconds after its issue that a token living ``life`` seconds is renewed."""
    left = max(life * (1 - LATEST_RENEW_SHARE), min(RENEW_BEFORE, life * SHORT_RENEW_SHARE))
    return life - left


def _positive_number(value):
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value > 0)


def parse_token_response(body):
    """``(Secret(token), life in seconds)`` from the AC's 200 body; raise
    BadTokenResponse unless it is a JSON object with a printable
    ``access_token`` of at most 8192 bytes that is a JWT carrying ``exp``, a
    Bearer ``token_type`` and a positive ``expires_in``. The life is
    ``expires_in``, or the JWT's own ``exp - iat`` when that is shorter
    (counted on our clock from now, so a skewed AC clock does not matter)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise BadTokenResponse("not JSON") from None
    if not isinstance(document, dict):
        raise BadTokenResponse("not a JSON object")
    token = document.get("access_token")
    if (not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES
            or not TOKEN_RE.fullmatch(token)):
        raise BadTokenResponse("access_token missing or not a bearer token")
    if str(document.get("token_type", "Bearer")).lower() != "bearer":
        raise BadTokenResponse("token_type is not Bearer")
    expires_in = document.get("expires_in")
    if not _positive_number(expires_in):
        raise BadTokenResponse("expires_in missing or not a positive number")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise BadTokenResponse("access_token is not a JWT") from None
    exp, iat = claims.get("exp"), claims.get("iat")
    if not _positive_number(exp):
        raise BadTokenResponse("the token carries no exp")
    life = min(float(expires_in), MAX_LIFE)
    if _positive_number(iat) and exp > iat:
        life = min(life, float(exp - iat))
    return Secret(token), life


class ClientCredentials:
    """``request(client_id, client_secret)``: a Deferred of the AC's token
    response body (200 only, at most ``MAX_RESPONSE_BYTES``) from
    ``POST {ac_endpoint}/api/v1/auth/service/token``. Fails with
    TokenRefused (401, 403), TokenRequestFailed (another status), or the
    network's error. The caller bounds the time."""

    def __init__(self, reactor, ac_endpoint, agent=None):
        self._url = (ac_endpoint.rstrip("/") + TOKEN_PATH).encode("ascii")
        self._agent = agent or Agent(reactor, connectTimeout=CONNECT_TIMEOUT)

    def __repr__(self):
        return f"<ClientCredentials {self._url.decode()}>"

    def request(self, client_id, client_secret):
        body = json.dumps({"grant_type": "client_credentials", "client_id": client_id,
                           "client_secret": client_secret.reveal()}).encode()
        headers = Headers({b"content-type": [b"application/json"],
                           b"accept": [b"application/json"]})
        d = self._agent.request(b"POST", self._url, headers, FileBodyProducer(BytesIO(body)))
        return d.addCallback(self._answer)

    @staticmethod
    def _answer(response):
        finished = read_capped(response, MAX_RESPONSE_BYTES, "the AC's answer")
        if response.code == 200:
            return finished

        def refuse(_):
            if response.code in (401, 403):
                raise TokenRefused(f"HTTP {response.code}")
            raise TokenRequestFailed(f"HTTP {response.code}")

        return finished.addCallback(refuse)


def _metadata(token):
    return (("authorization", "Bearer " + token.reveal()),)


@implementer(IServiceIdentity)
class StaticIdentity:
    """A static token from MC_SERVICE_TOKEN(_FILE): always ready, never
    expiring; ``use_token`` puts a token rotated by SIGHUP in use."""

    ready = True

    def __init__(self, token):
        self._token = token

    def __repr__(self):
        return "<StaticIdentity, redacted>"

    def use_token(self, token):
        self._token = token

    def metadata(self):
        return _metadata(self._token)

    def when_ready(self):
        return defer.succeed(None)

    def expiry_seconds(self):
        return None


@implementer(IServiceIdentity)
class AcIdentity(Service):
    """The token from the Auth Controller, renewed (see ``renewal_delay``)
    and retried after a failure with the MC's backoff (1 s doubling to 30 s,
    jittered), never waiting past half of the current token's remaining
    life, so that a renewal that failed is tried again before it expires.

    ``request(client_id, client_secret)`` is ``ClientCredentials.request``
    (or a double). ``on_refresh(outcome)`` is called after each attempt
    with one of ``OUTCOMES``. ``clock``: time and timers. ``timeout``:
    seconds a request may take, connect to last byte."""

    name = "service-identity"
    log = Logger()

    def __init__(self, client_id, client_secret, request, clock, on_refresh=None, retry=None,
                 timeout=REQUEST_TIMEOUT):
        self._timeout = timeout
        self._client_id = client_id
        self._secret = client_secret
        self._request = request
        self._clock = clock
        self._on_refresh = on_refresh
        self._retry = retry or retry_policy()
        self._token = None
        self._expires_at = None
        self._attempt = 0
        self._refused = False
        self._inflight = None
        self._next = None
        self._expiry = None
        self._waiters = []

    def __repr__(self):
        return f"<AcIdentity client_id={self._client_id!r} ready={self.ready}>"

    # --- IServiceIdentity ---------------------------------------------------

    @property
    def ready(self):
        return self._valid_for() > SEND_MARGIN

    def metadata(self):
        return _metadata(self._token) if self.ready else None

    def when_ready(self):
        if self.ready:
            return defer.succeed(None)
        waiter = defer.Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def expiry_seconds(self):
        return self._valid_for()

    def _valid_for(self):
        if self._expires_at is None:
            return 0.0
        return max(0.0, self._expires_at - self._clock.seconds())

    # --- life cycle -------------------------------------------------------

    def startService(self):
        super().startService()
        self._refresh()

    def stopService(self):
        super().stopService()
        for call in (self._next, self._expiry):
            if call is not None and call.active():
                call.cancel()
        self._next = self._expiry = None
        if self._inflight is not None:
            self._inflight.cancel()

    def use_client_secret(self, secret):
        """Use ``secret`` (rotated, read again on SIGHUP) from the next
        request on; when the AC refused the previous one or no token is held,
        that request is now."""
        if secret == self._secret:
            return
        self._secret = secret
        self.log.info("client secret for the Auth Controller replaced")
        if self.running and self._inflight is None and (self._refused or not self.ready):
            self._attempt = 0
            if self._next is not None and self._next.active():
                self._next.cancel()
            self._refresh()

    # --- renewing ---------------------------------------------------------

    def _refresh(self):
        self._next = None
        if not self.running:
            return
        d = defer.maybeDeferred(self._request, self._client_id, self._secret)
        d.addTimeout(self._timeout, self._clock)
        d.addCallback(parse_token_response)
        self._inflight = d
        d.addCallbacks(self._obtained, self._failed)
        d.addErrback(lambda f: self.log.failure("service token bookkeeping failed", f))

    def _obtained(self, token_and_life):
        self._inflight = None
        token, life = token_and_life
        now = self._clock.seconds()
        self._token, self._expires_at = token, now + life
        self._attempt, self._refused = 0, False
        delay = renewal_delay(life)
        self._schedule(delay)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self._clock.callLater(life, self._expired)
        self._report("ok")
        self.log.info("service token obtained from the Auth Controller: valid {life:g}s, "
                      "renewed in {delay:g}s", life=life, delay=delay)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed(self, failure):
        self._inflight = None
        if failure.check(defer.CancelledError) and not self.running:
            return
        if failure.check(TokenRefused):
            outcome, why = "rejected", f"credentials refused ({failure.getErrorMessage()})"
        elif failure.check(BadTokenResponse):
            outcome, why = "invalid", failure.getErrorMessage()
        elif failure.check(defer.TimeoutError, defer.CancelledError):
            outcome, why = "error", f"no answer within {self._timeout:g}s"
        else:
            outcome, why = "error", f"{failure.type.__name__}: {failure.getErrorMessage()}"
        self._refused = outcome == "rejected"
        delay = self._retry(self._attempt)
        self._attempt += 1
        if self.ready:
            delay = min(delay, max(1.0, self._valid_for() / 2))
        self._schedule(delay)
        self._report(outcome)
        self.log.warn("no service token from the Auth Controller: {why}; {held}, trying again "
                      "in {delay:.1f}s", why=why, delay=delay,
                      held=f"the current one is valid {self._valid_for():.0f}s more"
                      if self.ready else "none held")

    def _schedule(self, delay):
        if self.running:
            self._next = self._clock.callLater(delay, self._refresh)

    def _expired(self):
        self._expiry = None
        self.log.error("the service token expired before a new one came: calls to the GC "
                       "and the media handlers wait for the Auth Controller")

    def _report(self, outcome):
        if self._on_refresh is not None:
            self._on_refresh(outcome)
