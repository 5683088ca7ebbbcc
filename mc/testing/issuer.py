"""A real meeting-token issuer, standing in for the Auth Controller in tests
and the demo: its own keys, their JWKS (as a dict, a file, or over HTTP from
any process), key rotation, and ``mint`` for valid tokens and every kind of
bad one.

Tokens are signed here by hand rather than with PyJWT, so that tests can make
what PyJWT refuses to make (``alg: none``, HS256 keyed with a public key)
and so that the MC's PyJWT-based checks are tested against a second
implementation.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from mc.testing.loopback_http import LoopbackHttp

DEFAULT_LIFETIME = 300
_HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKey:
    """A private key (``EdDSA``: Ed25519, ``ES256``: P-256) with its kid; the
    private half never appears in a repr."""

    def __init__(self, alg="EdDSA", kid=None):
        if alg == "EdDSA":
            self._private = ed25519.Ed25519PrivateKey.generate()
        elif alg == "ES256":
            self._private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported alg {alg!r}")
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{secrets.token_hex(6)}"

    def __repr__(self):
        return f"<SigningKey {self.alg} kid={self.kid}>"

    def public_jwk(self):
        public = self._private.public_key()
        if self.alg == "EdDSA":
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": self.kid,
                    "alg": self.alg, "use": "sig"}
        numbers = public.public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": b64url(numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.y.to_bytes(32, "big")), "kid": self.kid, "alg": self.alg,
                "use": "sig"}

    def public_pem(self):
        """The public key as PEM: the HMAC secret of the classic alg-confusion attack."""
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, signing_input):
        if self.alg == "EdDSA":
            return self._private.sign(signing_input)
        r, s = decode_dss_signature(self._private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class _JwksHandler(BaseHTTPRequestHandler):
    """Answers every GET with the issuer's JWKS (or its scripted answer)."""

    def do_GET(self):
        status, body = self.server.owner._thd_http_answer()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # tests read their own output, not a line per JWKS fetch


class TokenIssuer:
    """Keys, JWKS and tokens. ``current`` (EdDSA) signs by default; ``es256``
    is a published P-256 key (None with ``es256=False``). ``audience``: the
    ``aud`` put in every token (None: none). ``now``: the time source for
    ``iat``/``exp``. Thread-safe: the HTTP server reads what tests change."""

    def __init__(self, es256=True, audience=None, lifetime=DEFAULT_LIFETIME, now=time.time):
        self.current = SigningKey("EdDSA")
        self.es256 = SigningKey("ES256") if es256 else None
        self.audience = audience
        self.lifetime = lifetime
        self._now = now
        self._lock = threading.Lock()
        self._published = [k for k in (self.current, self.es256) if k is not None]
        self._http_override = None
        self._http_requests = 0
        self._http = LoopbackHttp(_JwksHandler, self, "jwks-http")

    def __repr__(self):
        return f"<TokenIssuer kids={self.kids()} serving={self._http.serving}>"

    # -- keys ------------------------------------------------------------

    def kids(self):
        with self._lock:
            return [k.kid for k in self._published]

    def jwks(self):
        with self._lock:
            return {"keys": [k.public_jwk() for k in self._published]}

    def write_jwks(self, path):
        """Write the JWKS to ``path`` atomically: a reader sees the old file
        or the new one, never half of one."""
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".jwks-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.jwks(), f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def rotate(self, keep_old=False):
        """A new EdDSA key becomes ``current``; the old one leaves the JWKS
        unless ``keep_old``. Returns the new key."""
        new = SigningKey("EdDSA")
        with self._lock:
            old, self.current = self.current, new
            self._published = [k for k in self._published if keep_old or k is not old] + [new]
        return new

    # -- tokens ----------------------------------------------------------

    def claims(self, meeting_id, sub, /):
        """A valid meeting token's claims, as ``mint`` starts from."""
        now = int(self._now())
        claims = {
            "sub": sub, "token_type": "meeting", "meeting_id": meeting_id,
            "meeting_org_id": "org-1", "participant_type": "member", "role": "participant",
            "capabilities": ["audio", "video"], "iat": now, "exp": now + self.lifetime,
            "jti": secrets.token_hex(16),
        }
        if self.audience is not None:
            claims["aud"] = self.audience
        return claims

    def mint(self, meeting_id, sub, /, *, key=None, header=None, drop=(), **overrides):
        """A compact JWS for ``meeting_id`` and ``sub``, valid by default.

        ``overrides`` replace or add claims, ``sub`` and ``meeting_id``
        included (None is sent as JSON null); ``drop`` names claims to remove.
        ``key``: the SigningKey to sign with (default ``current``; an
        unpublished ``SigningKey()`` makes an unknown-kid or wrong-key token),
        or bytes for an HMAC ``alg``. ``header`` replaces or adds header
        fields (None removes one); the final ``alg`` decides the signing:
        ``none`` leaves the signature empty, ``HS*`` needs bytes ``key``,
        anything else signs with the key's own algorithm (so ``{"alg":
        "ES256"}`` on an EdDSA key makes a mismatch).
        """
        claims = self.claims(meeting_id, sub)
        claims.update(overrides)
        for name in drop:
            claims.pop(name, None)
        return self.sign(claims, key=key, header=header)

    def sign(self, claims, key=None, header=None):
        """``claims`` as a compact JWS: ``key`` and ``header`` as ``mint``
        takes them (so any claims, a service token's too, can be signed
        well or badly)."""
        key = self.current if key is None else key
        base_kid = self.current.kid if isinstance(key, bytes) else key.kid
        base_alg = "HS256" if isinstance(key, bytes) else key.alg
        fields = {"alg": base_alg, "kid": base_kid, "typ": "JWT", **(header or {})}
        fields = {k: v for k, v in fields.items() if v is not None}
        signing_input = (b64url(json.dumps(fields, separators=(",", ":")).encode()) + "."
                         + b64url(json.dumps(claims, separators=(",", ":")).encode())).encode()
        alg = fields.get("alg")
        if alg == "none":
            signature = b""
        elif alg in _HMAC_HASHES:
            if not isinstance(key, bytes):
                raise ValueError(f"{alg} needs a bytes key")
            signature = hmac.new(key, signing_input, _HMAC_HASHES[alg]).digest()
        elif isinstance(key, bytes):
            raise ValueError(f"a bytes key signs only HMAC, not {alg!r}")
        else:
            signature = key.sign(signing_input)
        return signing_input.decode("ascii") + "." + b64url(signature)

    # -- HTTP ------------------------------------------------------------

    @property
    def url(self):
        """The JWKS URL while serving (a query string or another path serves it too)."""
        return f"http://127.0.0.1:{self.port}/jwks.json"

    @property
    def http_requests(self):
        """JWKS requests answered so far."""
        with self._lock:
            return self._http_requests

    def set_http_response(self, status=200, body=None):
        """Answer HTTP requests with ``status`` and ``body`` bytes instead of
        the JWKS (a failing or garbage-serving Auth Controller); no arguments:
        the JWKS again."""
        with self._lock:
            self._http_override = None if body is None and status == 200 else (status, body or b"")

    @property
    def port(self):
        return self._http.port

    def serve(self, port=None):
        """Serve the JWKS on 127.0.0.1 from a daemon thread; ``port`` None
        reuses the last one (0 the first time: any free port). Idempotent."""
        self._http.start(port)
        return self

    def stop_serving(self):
        self._http.stop()

    def __enter__(self):
        return self.serve()

    def __exit__(self, *exc):
        self.stop_serving()

    def _thd_http_answer(self):
        with self._lock:
            self._http_requests += 1
            override = self._http_override
        if override is not None:
            return override
        return 200, json.dumps(self.jwks()).encode()
