"""Binding tokens: what lets a participant whose connection dropped take its
place back, and nobody else.

A token is a fresh nonce and an HMAC-SHA256 over the correlation id, the
participant id and that nonce, keyed per meeting by HKDF-SHA256(secret,
salt=meeting id, info="session-binding"). Only the latest nonce of a
participant is kept, so an older token never works again. Verification tries
the current secret and then the previous ones (a rotation keeps reconnects
working), each compared in constant time.
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


class BindingKeys:
    """Issues and checks binding tokens. ``secrets`` are raw bytes, newest
    first; only the newest signs."""

    def __init__(self, *keys):
        if not keys:
            raise ValueError("at least one binding secret is needed")
        self._secrets = tuple(keys)

    def __repr__(self):
        return f"<BindingKeys {len(self._secrets)} secrets, redacted>"

    def rotated(self, new_secret):
        """The keys after a rotation: ``new_secret`` signs, the one it
        replaces still verifies."""
        return BindingKeys(new_secret, self._secrets[0])

    def issue(self, meeting_id, correlation_id, participant_id):
        """``(token, nonce)``: keep the nonce; only its token verifies."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        mac = _mac(_meeting_key(self._secrets[0], meeting_id), correlation_id, participant_id,
                   nonce)
        return _b64(nonce + mac), nonce

    def verify(self, token, meeting_id, correlation_id, participant_id, nonce):
        """True when ``token`` was issued with ``nonce`` for these ids."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            return False
        if len(raw) != NONCE_BYTES + MAC_BYTES or nonce is None:
            return False
        ok = hmac.compare_digest(raw[:NONCE_BYTES], nonce)
        for secret in self._secrets:
            expected = _mac(_meeting_key(secret, meeting_id), correlation_id, participant_id,
                            nonce)
            ok_mac = hmac.compare_digest(raw[NONCE_BYTES:], expected)
            if ok and ok_mac:
                return True
        return False


def new_correlation_id():
    return "c-" + secrets.token_hex(12)
