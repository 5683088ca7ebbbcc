"""Binding tokens: what lets a participant whose connection dropped take its
place back, and nobody else.

A token is a fresh nonce and an HMAC-SHA256 over the correlation id, the
participant id and that nonce, keyed per meeting by HKDF-SHA256(secret,
salt=meeting id, info="session-binding"). The participant keeps a ``Proof``
of its latest token only: that nonce and the meeting key that signed it. So
an older token never works again, and a rotated secret goes on verifying
exactly as long as some participant still holds a token it signed (the key
lives in those proofs, and nowhere else once the secret is replaced).
"""

import base64
import hmac
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 16
MAC_BYTES = 32
INFO = b"session-binding"


def _meeting_key(secret, meeting_id):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=meeting_id.encode(),
                info=INFO).derive(secret)


def _mac(key, correlation_id, participant_id, nonce):
    msg = b"\x00".join((correlation_id.encode(), participant_id.encode(), nonce))
    return hmac.new(key, msg, "sha256").digest()


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Proof:
    """What a participant keeps of its latest binding token: the nonce and
    the meeting key of the secret that signed it."""

    __slots__ = ("nonce", "_key")

    def __init__(self, nonce, key):
        self.nonce = nonce
        self._key = key

    def __repr__(self):
        return "<binding Proof, redacted>"

    def verify(self, token, correlation_id, participant_id):
        """True when ``token`` is the one this proof was issued with, for
        these ids (compared in constant time)."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            return False
        if len(raw) != NONCE_BYTES + MAC_BYTES:
            return False
        ok_nonce = hmac.compare_digest(raw[:NONCE_BYTES], self.nonce)
        expected = _mac(self._key, correlation_id, participant_id, self.nonce)
        return hmac.compare_digest(raw[NONCE_BYTES:], expected) and ok_nonce


class BindingKeys:
    """Issues binding tokens with one secret (raw bytes)."""

    def __init__(self, secret):
        if not secret:
            raise ValueError("a binding secret is needed")
        self._secret = secret

    def __repr__(self):
        return "<BindingKeys, redacted>"

    def issue(self, meeting_id, correlation_id, participant_id):
        """``(token, proof)``: keep the proof; only its token verifies."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        key = _meeting_key(self._secret, meeting_id)
        return _b64(nonce + _mac(key, correlation_id, participant_id, nonce)), Proof(nonce, key)


def new_correlation_id():
    return "c-" + secrets.token_hex(12)
