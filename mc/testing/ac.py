"""AcDouble: a real-network Auth Controller for tests, the demo and users.

It serves, on 127.0.0.1, what the platform's AC serves to services:

- ``POST /api/v1/auth/service/token``: OAuth 2.0 client credentials (a JSON
  body, or HTTP Basic with a form body), answering a short-lived EdDSA
  service JWT (``sub``, ``exp``, ``iat``, ``scope``, ``service_type``);
- ``GET /.well-known/jwks.json``: the JWKS of its ``TokenIssuer``, the same
  keys that sign meeting tokens (so one ``AC_JWKS_URL`` serves both).

Keys rotate with ``issuer.rotate()``; ``fail(mode, count)`` makes the token
endpoint misbehave the ways an AC can: ``401``, ``500``, ``not_json``,
``oversized`` (a 65 KiB body), ``no_exp`` (a JWT without ``exp``) and
``hang`` (no answer until ``recover()`` or ``stop()``). ``mint`` makes
service tokens of any shape for the doubles of the MC's callers, and
``check`` verifies a caller's token the way the platform's services do, so
the fake GC and the MH double accept only what a real peer would.
"""

import base64
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

import jwt

from mc.testing.issuer import TokenIssuer
from mc.testing.loopback_http import LoopbackHttp

TOKEN_PATH = "/api/v1/auth/service/token"
JWKS_PATH = "/.well-known/jwks.json"
DEFAULT_LIFETIME = 3600
#: Scopes the platform's AC grants each kind of service.
SCOPES = {
    "global-controller": "service.write.mc service.write.gc",
    "meeting-controller": "service.write.gc service.write.mh",
    "media-handler": "service.write.mc service.write.gc",
}
MODES = ("401", "500", "not_json", "oversized", "no_exp", "hang")
MAX_TOKEN_BYTES = 8192
SKEW = 5.0
OK, UNAUTHENTICATED, PERMISSION_DENIED = "ok", "unauthenticated", "permission_denied"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] != JWKS_PATH:
            self._send(404, {"error": "not_found"})
            return
        self._send(200, self.server.owner._thd_jwks())

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 64 * 1024))
        status, payload = self.server.owner._thd_token_answer(self.headers, body)
        if isinstance(payload, bytes):
            self._send_bytes(status, payload)
        else:
            self._send(status, payload)

    def _send(self, status, document):
        self._send_bytes(status, json.dumps(document).encode())

    def _send_bytes(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class AcDouble:
    """The Auth Controller double. ``issuer``: its keys (default a new
    ``TokenIssuer``); ``lifetime``: seconds each issued token lives. Clients
    are added with ``add_client``. Thread-safe."""

    def __init__(self, issuer=None, lifetime=DEFAULT_LIFETIME, now=time.time):
        self.issuer = issuer if issuer is not None else TokenIssuer()
        self.lifetime = lifetime
        self._now = now
        self._lock = threading.Lock()
        self._clients = {}
        self._mode = None
        self._remaining = None
        self._released = threading.Event()
        self._issued = []
        self._requests = 0
        self._jwks_requests = 0
        self._http = LoopbackHttp(_Handler, self, "ac-http")

    def __repr__(self):
        return f"<AcDouble {self.url} clients={len(self._clients)}>"

    # -- clients and tokens -------------------------------------------------

    def add_client(self, client_id, secret, service_type="meeting-controller", scope=None):
        """Accept ``client_id`` with ``secret``; its tokens carry
        ``service_type`` and ``scope`` (default: what the platform grants)."""
        with self._lock:
            self._clients[client_id] = (secret, service_type, scope or SCOPES[service_type])

    def set_secret(self, client_id, secret):
        """The client's secret was rotated at the AC."""
        with self._lock:
            _, service_type, scope = self._clients[client_id]
            self._clients[client_id] = (secret, service_type, scope)

    def claims(self, service_type, sub=None, scope=None, lifetime=None):
        """A valid service token's claims."""
        now = int(self._now())
        return {"sub": sub or f"{service_type}-client", "iat": now,
                "exp": now + (self.lifetime if lifetime is None else lifetime),
                "scope": SCOPES[service_type] if scope is None else scope,
                "service_type": service_type, "jti": secrets.token_hex(8)}

    def mint(self, service_type, *, key=None, header=None, drop=(), **overrides):
        """A service token of ``service_type``, valid by default; ``key``,
        ``header``, ``drop`` and ``overrides`` as ``TokenIssuer.mint`` takes
        them (an ``alg: none``, HS256-with-the-public-key, unknown-key,
        expired or wrong-scope token is one argument away)."""
        claims = self.claims(service_type)
        claims.update(overrides)
        for name in drop:
            claims.pop(name, None)
        return self.issuer.sign(claims, key=key, header=header)

    def issued(self):
        """``(client_id, monotonic time)`` of each token handed out."""
        with self._lock:
            return list(self._issued)

    @property
    def jwks_requests(self):
        """JWKS requests answered so far."""
        with self._lock:
            return self._jwks_requests

    def _thd_jwks(self):
        with self._lock:
            self._jwks_requests += 1
        return self.issuer.jwks()

    @property
    def requests(self):
        """Token requests answered (or held) so far."""
        with self._lock:
            return self._requests

    def check(self, authorization, scope, service_type):
        """How a platform service judges ``authorization`` (the raw metadata
        value) for a service taking ``scope`` and ``service_type``: ``ok``,
        ``unauthenticated`` or ``permission_denied``. Written apart from the
        MC's own check, so that each tests the other."""
        if not isinstance(authorization, str) or not authorization.startswith("Bearer "):
            return UNAUTHENTICATED
        token = authorization[len("Bearer "):]
        if not token or len(token.encode()) > MAX_TOKEN_BYTES:
            return UNAUTHENTICATED
        try:
            header = jwt.get_unverified_header(token)
            jwks = {k["kid"]: k for k in self.issuer.jwks()["keys"]}
            jwk = jwks.get(header.get("kid"))
            if jwk is None or header.get("alg") != jwk["alg"]:
                return UNAUTHENTICATED
            claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]],
                                options={"verify_exp": False, "verify_iat": False,
                                         "require": ["exp", "iat"]})
        except (jwt.PyJWTError, ValueError, TypeError):
            return UNAUTHENTICATED
        now = self._now()
        if not claims["exp"] > now - SKEW or claims["iat"] > now + SKEW:
            return UNAUTHENTICATED
        if scope not in str(claims.get("scope", "")).split():
            return PERMISSION_DENIED
        if claims.get("service_type") != service_type:
            return PERMISSION_DENIED
        return OK

    # -- failure modes ------------------------------------------------------

    def fail(self, mode, count=None):
        """Answer the next ``count`` token requests (None: all, until
        ``recover``) the way ``mode`` says (one of ``MODES``)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self._mode, self._remaining = mode, count
            self._released.clear()

    def recover(self):
        """Answer token requests properly again (held ones are let go)."""
        with self._lock:
            self._mode = self._remaining = None
            self._released.set()

    def _thd_mode(self):
        with self._lock:
            self._requests += 1
            mode = self._mode
            if mode is not None and self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._mode = self._remaining = None
            return mode

    # -- serving ------------------------------------------------------------

    def _thd_credentials(self, headers, body):
        """``(client_id, secret)`` from HTTP Basic or the JSON / form body."""
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(
                    authorization[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None, None, None
            form = parse_qs(body.decode("utf-8", "replace"))
            return form.get("grant_type", [None])[0], client_id, secret
        try:
            document = json.loads(body)
        except ValueError:
            return None, None, None
        if not isinstance(document, dict):
            return None, None, None
        return (document.get("grant_type"), document.get("client_id"),
                document.get("client_secret"))

    def _thd_token_answer(self, headers, body):
        mode = self._thd_mode()
        if mode == "hang":
            self._released.wait(120)
            return 503, {"error": "unavailable"}
        if mode == "500":
            return 500, {"error": "internal_error"}
        if mode == "not_json":
            return 200, b"<html>surely not a token</html>"
        if mode == "oversized":
            return 200, b'{"access_token": "' + b"x" * (65 * 1024) + b'"}'
        grant_type, client_id, secret = self._thd_credentials(headers, body)
        with self._lock:
            client = self._clients.get(client_id)
        if (mode == "401" or grant_type != "client_credentials" or client is None
                or not isinstance(secret, str)
                or not secrets.compare_digest(secret.encode(), client[0].encode())):
            return 401, {"error": "invalid_client"}
        _, service_type, scope = client
        claims = self.claims(service_type, sub=client_id, scope=scope)
        if mode == "no_exp":
            del claims["exp"]
        token = self.issuer.sign(claims)
        with self._lock:
            self._issued.append((client_id, time.monotonic()))
        return 200, {"access_token": token, "token_type": "Bearer",
                     "expires_in": self.lifetime, "scope": scope}

    @property
    def url(self):
        """The AC's base URL (``AC_ENDPOINT``) while serving."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self):
        """``AC_JWKS_URL``."""
        return self.url + JWKS_PATH

    @property
    def port(self):
        return self._http.port

    def serve(self, port=None):
        """Serve from a daemon thread; ``port`` None reuses the last one (0
        the first time: any free port). Idempotent."""
        self._http.start(port)
        return self

    def stop(self):
        self._released.set()
        self._http.stop()

    def __enter__(self):
        return self.serve()

    def __exit__(self, *exc):
        self.stop()
