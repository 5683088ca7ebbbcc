"""Meeting-token verification: every bad token refused, the JWKS fetched over
HTTP and from a file, refreshed on a Clock, refetched for unknown kids at most
every 10 s, and the last good one kept through failures."""

import hmac
import json

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from mc.errors import InvalidToken, NoJwks
from mc.interfaces import ITokenVerifier
from mc.participants import tokens
from mc.participants.tokens import JwksFetcher, TokenVerifier, parse_jwks, redact_url
from mc.testing.issuer import SigningKey, TokenIssuer, b64url
from tests.helpers import wait_until

NOW = 1_800_000_000
MEETING = "meeting-1"
URL = "https://ac.example/jwks.json?sig=s3cret"


def result_of(d):
    """The result of a Deferred that has already fired; a failure is raised."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class FakeFetch:
    """The verifier's ``fetch``: answers with the issuer's live JWKS, or what
    a test scripts (bytes, an exception, or None to stay pending)."""

    def __init__(self, issuer):
        self.issuer = issuer
        self.urls = []
        self.pending = []
        self.script = []

    def __call__(self, url):
        self.urls.append(url)
        answer = self.script.pop(0) if self.script else json.dumps(self.issuer.jwks()).encode()
        if answer is None:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def release(self):
        """Answer every pending fetch with the live JWKS."""
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(json.dumps(self.issuer.jwks()).encode())


class Env:
    def __init__(self, audience=None, skew=5, script=(), retry=None):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.issuer = TokenIssuer(audience=audience, now=self.clock.seconds)
        self.fetch = FakeFetch(self.issuer)
        self.fetch.script.extend(script)
        self.outcomes = []
        self.verifier = TokenVerifier(URL, audience, skew, self.clock,
                                      on_refresh=self.outcomes.append, fetch=self.fetch,
                                      retry=retry or (lambda attempt: 2.0 ** attempt))
        self.verifier.startService()

    def verify(self, token, meeting_id=MEETING):
        return result_of(self.verifier.verify(token, meeting_id))

    def refused(self, token, meeting_id=MEETING):
        with pytest.raises(InvalidToken) as info:
            self.verify(token, meeting_id)
        return info.value.why


@pytest.fixture
def env():
    e = Env()
    yield e
    e.verifier.stopService()


def test_provides_the_interface_and_reports_its_state(env):
    assert verifyObject(ITokenVerifier, env.verifier)
    assert env.verifier.name == "jwks"
    assert env.verifier.ready
    assert env.verifier.age() == 0
    env.clock.advance(7)
    assert env.verifier.age() == 7
    assert env.outcomes == ["ok"]
    assert env.fetch.urls == [URL]
    assert "s3cret" not in repr(env.verifier)


def test_a_valid_token_gives_its_claims(env):
    claims = env.verify(env.issuer.mint(MEETING, "user-1", home_org_id="org-2"))
    assert claims["sub"] == "user-1"
    assert claims["meeting_id"] == MEETING
    assert claims["home_org_id"] == "org-2"
    assert claims["capabilities"] == ["audio", "video"]


def test_es256_and_both_participant_types_and_roles_are_accepted(env):
    env.verify(env.issuer.mint(MEETING, "u", key=env.issuer.es256))
    for participant_type in ("member", "external"):
        for role in ("host", "participant"):
            env.verify(env.issuer.mint(MEETING, "u", participant_type=participant_type, role=role))
    env.verify(env.issuer.mint(MEETING, "u", capabilities=[]))


def _tampered(token):
    head, payload, signature = token.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    return f"{head}.{payload}.{flipped}{signature[1:]}"


def _hmac_under_eddsa_header(issuer):
    """An EdDSA header, but an HMAC signature keyed with the public key."""
    head, payload, _ = issuer.mint(MEETING, "u").split(".")
    signing_input = f"{head}.{payload}".encode()
    signature = hmac.digest(issuer.current.public_pem(), signing_input, "sha256")
    return f"{head}.{payload}.{b64url(signature)}"


def _signed(issuer, payload):
    """``payload`` bytes under a valid EdDSA header, properly signed."""
    head = issuer.mint(MEETING, "u").split(".")[0]
    signing_input = f"{head}.{b64url(payload)}".encode()
    return f"{signing_input.decode()}.{b64url(issuer.current.sign(signing_input))}"


def _payload_swapped(issuer):
    good = issuer.mint(MEETING, "u").split(".")
    other = issuer.mint(MEETING, "u", role="host").split(".")
    return f"{good[0]}.{other[1]}.{good[2]}"


def minted(*args, **kw):
    """A maker of a token for MEETING and user "u" with these mint arguments."""
    return lambda issuer: issuer.mint(MEETING, "u", *args, **kw)


NOT_A_NUMBER = "iat or exp missing or not a number"
MISSING = {
    "sub": "sub missing or not a string", "token_type": "token_type is not meeting",
    "meeting_id": "meeting_id does not match",
    "meeting_org_id": "meeting_org_id missing or not a string",
    "participant_type": "bad participant_type", "role": "bad role",
    "capabilities": "capabilities not a list of strings", "iat": NOT_A_NUMBER,
    "exp": NOT_A_NUMBER, "jti": "jti missing or not a string",
}

#: name -> (the reason logged, a maker of the token from the issuer)
BAD_TOKENS = {
    "expired": ("expired", minted(iat=NOW - 600, exp=NOW - 60)),
    "iat in the future": ("iat in the future", minted(iat=NOW + 60, exp=NOW + 600)),
    "other meeting": ("meeting_id does not match", lambda i: i.mint("meeting-2", "u")),
    "wrong token_type": ("token_type is not meeting", minted(token_type="access")),
    "alg none": ("alg not allowed", minted(header={"alg": "none"})),
    "alg None spelled": ("alg not allowed", minted(header={"alg": "None"})),
    "HS256 keyed with the public key": (
        "alg not allowed", lambda i: i.mint(MEETING, "u", key=i.current.public_pem())),
    "HS256 keyed with the JWK x": (
        "alg not allowed",
        lambda i: i.mint(MEETING, "u", key=i.current.public_jwk()["x"].encode())),
    "HMAC signature under an EdDSA header": ("bad signature", _hmac_under_eddsa_header),
    "RS256": ("alg not allowed", minted(header={"alg": "RS256"})),
    "ES384": ("alg not allowed", minted(header={"alg": "ES384"})),
    "EdDSA header on the ES256 key": (
        "key type does not match alg",
        lambda i: i.mint(MEETING, "u", key=i.es256, header={"alg": "EdDSA"})),
    "ES256 header on the EdDSA key": ("key type does not match alg",
                                      minted(header={"alg": "ES256"})),
    "unknown kid": ("unknown kid", lambda i: i.mint(MEETING, "u", key=SigningKey())),
    "no kid": ("no kid", minted(header={"kid": None})),
    "empty kid": ("no kid", minted(header={"kid": ""})),
    "kid not a string": ("malformed header", minted(header={"kid": 7})),
    "known kid, other key": (
        "bad signature", lambda i: i.mint(MEETING, "u", key=SigningKey(kid=i.current.kid))),
    "crit header": ("malformed header", minted(header={"crit": ["exp"]})),
    "tampered signature": ("bad signature", lambda i: _tampered(i.mint(MEETING, "u"))),
    "payload swapped": ("bad signature", _payload_swapped),
    "no signature": ("bad signature", lambda i: i.mint(MEETING, "u").rsplit(".", 1)[0] + "."),
    "two segments": ("malformed header", lambda i: i.mint(MEETING, "u").rsplit(".", 1)[0]),
    "garbage": ("malformed header", lambda i: "not.a.token"),
    "empty": ("malformed header", lambda i: ""),
    "not ascii": ("malformed", lambda i: i.mint(MEETING, "u") + "é"),
    "bytes": ("not a string", lambda i: i.mint(MEETING, "u").encode()),
    "oversized": ("oversized", minted(padding="x" * 8192)),
    "payload not an object": ("malformed token", lambda i: _signed(i, b"[1]")),
    "bad participant_type": ("bad participant_type", minted(participant_type="guest")),
    "bad role": ("bad role", minted(role="admin")),
    "role a list": ("bad role", minted(role=["host"])),
    "sub not a string": ("sub missing or not a string", minted(sub=42)),
    "sub a list": ("sub missing or not a string", lambda i: i.mint(MEETING, ["u"])),
    "empty sub": ("sub missing or not a string", lambda i: i.mint(MEETING, "")),
    "meeting_id not a string": ("meeting_id does not match", minted(meeting_id=[MEETING])),
    "meeting_org_id null": ("meeting_org_id missing or not a string",
                            minted(meeting_org_id=None)),
    "capabilities a string": ("capabilities not a list of strings",
                              minted(capabilities="audio")),
    "capabilities with a number": ("capabilities not a list of strings",
                                   minted(capabilities=["audio", 1])),
    "exp a string": (NOT_A_NUMBER, minted(exp=str(NOW + 300))),
    "exp a bool": (NOT_A_NUMBER, minted(exp=True)),
    "iat a string": (NOT_A_NUMBER, minted(iat=str(NOW))),
    "jti a number": ("jti missing or not a string", minted(jti=5)),
    "home_org_id a number": ("home_org_id not a string", minted(home_org_id=5)),
    "nbf a minute ahead": ("not valid yet", minted(nbf=NOW + 60)),
    "nbf a string": ("nbf not a number", minted(nbf=str(NOW))),
    "valid for 30 days": ("valid for too long", minted(iat=NOW, exp=NOW + 30 * 86400)),
    **{f"no {claim}": (why, minted(drop=(claim,))) for claim, why in MISSING.items()},
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_every_bad_token_is_refused_for_its_reason_without_leaking_it(env, name):
    expected, make = BAD_TOKENS[name]
    token = make(env.issuer)
    why = env.refused(token)
    assert why == expected
    if isinstance(token, str) and len(token) > 20:
        for part in token.split("."):
            if len(part) > 8:
                assert part not in why


def test_a_nan_exp_is_refused(env):
    claims = env.issuer.claims(MEETING, "u")
    claims["exp"] = float("nan")
    # NaN is not JSON; PyJWT's decoder accepts it, so the claim check must not.
    assert env.refused(_signed(env.issuer, json.dumps(claims).encode())) == NOT_A_NUMBER


def test_8192_bytes_is_the_limit(env):
    base = len(env.issuer.mint(MEETING, "u", padding=""))
    # base64url: 3 bytes of claim -> 4 characters of token.
    fitting = env.issuer.mint(MEETING, "u", padding="x" * ((8192 - base) * 3 // 4 - 3))
    assert 8100 < len(fitting) <= 8192
    env.verify(fitting)
    assert env.refused(fitting + "A" * (8193 - len(fitting))) == "oversized"


@pytest.mark.parametrize(("skew", "claims", "ok"), [
    (5, {"exp": NOW - 4}, True),
    (5, {"exp": NOW - 5}, False),
    (5, {"exp": NOW - 4.999}, True),
    (5, {"iat": NOW + 5}, True),
    (5, {"iat": NOW + 5.001}, False),
    (0, {"exp": NOW + 1}, True),
    (0, {"exp": NOW}, False),
    (0, {"iat": NOW}, True),
    (0, {"iat": NOW + 1}, False),
    (30, {"iat": NOW + 30, "exp": NOW - 29}, True),
    (5, {"nbf": NOW + 5}, True),
    (5, {"nbf": NOW + 5.001}, False),
    (5, {"nbf": NOW - 3600}, True),
    (5, {"iat": NOW - 1000, "exp": NOW + 86400 - 1000}, True),
    (5, {"iat": NOW - 1000, "exp": NOW + 86400 - 999}, False),
])
def test_clock_skew_boundaries(skew, claims, ok):
    e = Env(skew=skew)
    token = e.issuer.mint(MEETING, "u", **claims)
    if ok:
        e.verify(token)
    else:
        e.refused(token)


def test_the_injected_clock_decides_expiry(env):
    token = env.issuer.mint(MEETING, "u")  # exp = NOW + 300
    env.verify(token)
    env.clock.advance(300 + 4)
    env.verify(token)
    env.clock.advance(1)
    assert env.refused(token) == "expired"


def test_audience_is_required_and_equal_only_when_configured():
    e = Env(audience="mc.example")
    e.verify(e.issuer.mint(MEETING, "u"))
    assert e.refused(e.issuer.mint(MEETING, "u", drop=("aud",))) == "aud does not match"
    e.refused(e.issuer.mint(MEETING, "u", aud="other.example"))
    e.refused(e.issuer.mint(MEETING, "u", aud=["mc.example"]))

    off = Env(audience=None)
    off.verify(off.issuer.mint(MEETING, "u", aud="anything"))
    off.verify(off.issuer.mint(MEETING, "u", aud=["a", "b"]))
    off.verify(off.issuer.mint(MEETING, "u"))


# --- the JWKS on a Clock ------------------------------------------------------

def test_no_jwks_before_the_first_load_then_ready():
    e = Env(script=[None])
    token = e.issuer.mint(MEETING, "u")
    assert not e.verifier.ready
    assert e.verifier.age() is None
    with pytest.raises(NoJwks):
        e.verify(token)
    e.fetch.release()
    assert e.verifier.ready
    assert e.verify(token)["sub"] == "u"


def test_first_fetch_failures_retry_sooner_then_every_300s():
    e = Env(script=[OSError("refused"), b"not json", b'{"keys": []}'],
            retry=lambda attempt: 1.0 + attempt)
    assert e.outcomes == ["error"]
    assert not e.verifier.ready
    e.clock.advance(1)   # attempt 0: 1 s
    assert e.outcomes == ["error", "error"]
    e.clock.advance(1.9)
    assert len(e.fetch.urls) == 2
    e.clock.advance(0.1)  # attempt 1: 2 s
    assert e.outcomes == ["error", "error", "error"]
    e.clock.advance(3)   # attempt 2: 3 s
    assert e.outcomes[-1] == "ok"
    assert e.verifier.ready
    e.clock.advance(299)
    assert len(e.fetch.urls) == 4
    e.clock.advance(1)
    assert len(e.fetch.urls) == 5
    e.verifier.stopService()


def test_the_default_retry_is_the_mc_backoff():
    clock = Clock()
    fetches = []
    verifier = TokenVerifier(URL, None, 5, clock,
                             fetch=lambda url: fetches.append(url) or defer.fail(OSError()))
    verifier.startService()
    clock.advance(1.0)  # the first retry comes within 1 s (0.75-1 s with the spread)
    assert len(fetches) == 2
    verifier.stopService()
    assert clock.getDelayedCalls() == []


def test_refresh_every_300s_follows_a_rotation(env):
    old_token = env.issuer.mint(MEETING, "u")
    env.issuer.rotate()
    new_token = env.issuer.mint(MEETING, "u")
    env.clock.advance(299)
    env.verify(old_token)
    env.clock.advance(1)
    assert len(env.fetch.urls) == 2
    env.verify(new_token)
    assert env.refused(old_token) == "unknown kid"  # dropped from the JWKS


def test_rotation_keeping_the_old_key(env):
    old_token = env.issuer.mint(MEETING, "u")
    env.issuer.rotate(keep_old=True)
    env.clock.advance(300)
    env.verify(old_token)
    env.verify(env.issuer.mint(MEETING, "u"))


def test_unknown_kid_refetches_at_most_every_10s(env):
    env.issuer.rotate()
    token = env.issuer.mint(MEETING, "u")
    env.clock.advance(9)
    assert env.refused(token) == "unknown kid"  # the start-up fetch was 9 s ago
    assert len(env.fetch.urls) == 1
    env.clock.advance(1)
    env.verify(token)
    assert len(env.fetch.urls) == 2
    stranger = env.issuer.mint(MEETING, "u", key=SigningKey())
    for _ in range(5):
        assert env.refused(stranger) == "unknown kid"
    assert len(env.fetch.urls) == 2
    env.clock.advance(10)
    assert env.refused(stranger) == "unknown kid"
    assert len(env.fetch.urls) == 3
    assert env.outcomes == ["ok", "ok", "ok"]


def test_concurrent_unknown_kids_share_one_fetch(env):
    env.issuer.rotate()
    env.clock.advance(10)
    env.fetch.script.append(None)
    tokens_ = [env.issuer.mint(MEETING, f"u{n}") for n in range(3)]
    ds = [env.verifier.verify(t, MEETING) for t in tokens_]
    assert len(env.fetch.urls) == 2
    assert not any(d.called for d in ds)
    env.fetch.release()
    assert [result_of(d)["sub"] for d in ds] == ["u0", "u1", "u2"]
    assert len(env.fetch.urls) == 2


def test_a_known_kid_never_waits_for_a_fetch_in_flight(env):
    env.fetch.script.append(None)
    env.clock.advance(300)
    assert env.fetch.pending
    env.verify(env.issuer.mint(MEETING, "u"))


@pytest.mark.parametrize("answer", [
    OSError("connection refused"),
    ValueError("HTTP 500"),
    b"<html>oops</html>",
    b'{"keys": "nope"}',
    b'{"keys": []}',
    b'{"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}]}',
    b"[]",
    b"",
])
def test_a_failed_or_unusable_refresh_keeps_the_last_good_jwks(env, answer):
    token = env.issuer.mint(MEETING, "u")
    env.fetch.script.append(answer)
    with capturedLogs() as events:
        env.clock.advance(300)
    assert env.outcomes == ["ok", "error"]
    assert env.verifier.ready
    assert env.verifier.age() == 300
    env.verify(token)
    (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warning["url"] == "https://ac.example/jwks.json"
    assert "s3cret" not in repr(warning)
    env.clock.advance(300)
    assert env.outcomes[-1] == "ok"
    assert env.verifier.age() == 0


def test_a_hung_fetch_times_out_after_5s(env):
    env.fetch.script.append(None)
    env.clock.advance(300)
    (pending,) = env.fetch.pending
    env.clock.advance(4.9)
    assert not pending.called
    env.clock.advance(0.1)
    assert pending.called  # cancelled
    assert env.outcomes == ["ok", "error"]
    env.clock.advance(300)
    assert env.outcomes == ["ok", "error", "ok"]


def test_a_failing_observer_or_fetch_does_not_stop_the_refresh():
    clock = Clock()
    calls = []

    def fetch(url):
        calls.append(url)
        raise RuntimeError("synchronous bug")

    def observer(outcome):
        raise RuntimeError("metrics bug")

    verifier = TokenVerifier(URL, None, 5, clock, on_refresh=observer, fetch=fetch,
                             retry=lambda attempt: 1.0)
    with capturedLogs():
        verifier.startService()
        clock.advance(1)
        clock.advance(1)
    assert len(calls) == 3
    verifier.stopService()


def test_stop_cancels_the_timer_and_the_fetch_in_flight(env):
    env.clock.advance(300)
    env.fetch.script.append(None)
    env.clock.advance(300)
    (pending,) = env.fetch.pending
    with capturedLogs() as events:
        env.verifier.stopService()
    assert pending.called
    assert env.clock.getDelayedCalls() == []
    assert env.outcomes == ["ok", "ok"]  # a stop is not an error
    assert not [e for e in events if e["log_level"] >= LogLevel.warn]
    # Stopped: an unknown kid no longer fetches.
    env.refused(env.issuer.mint(MEETING, "u", key=SigningKey()))
    assert len(env.fetch.urls) == 3


def test_bad_urls_are_refused_at_construction():
    for url in ("ftp://x/jwks", "jwks.json", "http:///jwks", "http://h:port/x",
                "file://remote-host/etc/jwks"):
        with pytest.raises(ValueError):
            TokenVerifier(url, None, 5, Clock(), fetch=lambda u: None)


def test_redact_url():
    assert redact_url("https://user:pw@ac.example:8443/k/jwks.json?sig=x#f") == \
        "https://ac.example:8443/k/jwks.json"
    assert redact_url("http://[::1]:80/j?x") == "http://[::1]:80/j"
    assert redact_url("file:///etc/mc/jwks.json") == "file:///etc/mc/jwks.json"


# --- JWKS parsing -----------------------------------------------------------

def _doc(*keys):
    return json.dumps({"keys": list(keys)}).encode()


def test_parse_jwks_keeps_only_usable_signing_keys():
    ed, es = SigningKey("EdDSA"), SigningKey("ES256")
    good = [ed.public_jwk(), es.public_jwk()]
    ignored = [
        {**SigningKey().public_jwk(), "kid": None},
        {k: v for k, v in SigningKey().public_jwk().items() if k != "kid"},
        {**SigningKey().public_jwk(), "kid": "k" * 257},
        {**SigningKey().public_jwk(), "alg": "ES256"},
        {**SigningKey().public_jwk(), "use": "enc"},
        {**SigningKey().public_jwk(), "d": "private"},
        {**SigningKey().public_jwk(), "crv": "X25519"},
        {**SigningKey().public_jwk(), "kty": ["OKP"]},
        {**SigningKey().public_jwk(), "x": "too-short"},
        {**SigningKey().public_jwk(), "x": "!!!!" * 11},
        {**SigningKey("ES256").public_jwk(), "crv": "P-384"},
        {**SigningKey("ES256").public_jwk(), "y": b64url(b"\x01" * 32)},  # off the curve
        {**SigningKey("ES256").public_jwk(), "y": None},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        "not an object",
        {**SigningKey().public_jwk(), "kid": ed.kid},  # duplicate kid: the first wins
    ]
    keys = parse_jwks(_doc(*good, *ignored))
    assert sorted(keys) == sorted([ed.kid, es.kid])
    assert keys[ed.kid][0] == "EdDSA"
    assert keys[es.kid][0] == "ES256"


def test_parse_jwks_caps_the_number_of_keys():
    filler = [{"kty": "RSA", "kid": f"r{n}"} for n in range(tokens.MAX_KEYS)]
    with pytest.raises(ValueError):
        parse_jwks(_doc(*filler, SigningKey().public_jwk()))
    assert len(parse_jwks(_doc(*filler[1:], SigningKey().public_jwk()))) == 1


@pytest.mark.parametrize("data", [
    b"", b"null", b"[]", b'{"keys": {}}', b'{"nokeys": []}', b'{"keys": []}', b"\xff",
    b"[" * 100000,
])
def test_parse_jwks_refuses_unusable_documents(data):
    with pytest.raises(ValueError):
        parse_jwks(data)


def test_issuer_repr_hides_the_private_key():
    issuer = TokenIssuer()
    private = issuer.current._private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())
    for text in (repr(issuer), repr(issuer.current), repr(issuer.es256), json.dumps(issuer.jwks())):
        assert b64url(private) not in text
        assert "PRIVATE" not in text


# --- the real reactor: HTTP and file:// ---------------------------------------

@pytest.fixture
def issuer():
    with TokenIssuer() as i:
        yield i


def _started(url, **kw):
    verifier = TokenVerifier(url, None, 5, reactor, **kw)
    verifier.startService()
    return verifier


@pytest_twisted.ensureDeferred
async def test_http_jwks_verifies_and_follows_a_rotation(issuer, monkeypatch):
    monkeypatch.setattr(tokens, "REFETCH_SPACING", 0.2)
    outcomes = []
    verifier = _started(issuer.url + "?sig=s3cret", on_refresh=outcomes.append)
    try:
        await wait_until(lambda: verifier.ready, timeout=5, what="JWKS loaded")
        claims = await verifier.verify(issuer.mint(MEETING, "user-1"), MEETING)
        assert claims["sub"] == "user-1"
        await verifier.verify(issuer.mint(MEETING, "u", key=issuer.es256), MEETING)

        issuer.rotate()
        await deferLater(reactor, 0.25, lambda: None)  # past the (shortened) refetch spacing
        claims = await verifier.verify(issuer.mint(MEETING, "user-2"), MEETING)
        assert claims["sub"] == "user-2"
        assert outcomes == ["ok", "ok"]
        assert issuer.http_requests == 2
    finally:
        verifier.stopService()


@pytest_twisted.ensureDeferred
async def test_http_failures_keep_nothing_then_recover(issuer):
    issuer.set_http_response(500, b"internal error")
    outcomes = []
    verifier = _started(issuer.url, on_refresh=outcomes.append,
                              retry=lambda attempt: 0.05)
    try:
        await wait_until(lambda: len(outcomes) >= 2, timeout=5, what="two failed fetches")
        assert not verifier.ready
        with pytest.raises(NoJwks):
            await verifier.verify(issuer.mint(MEETING, "u"), MEETING)
        issuer.set_http_response(200, b"{garbage")
        await wait_until(lambda: issuer.http_requests >= 4, timeout=5)
        assert not verifier.ready
        issuer.set_http_response()
        await wait_until(lambda: verifier.ready, timeout=5, what="JWKS loaded")
        assert set(outcomes) == {"error", "ok"}
        await verifier.verify(issuer.mint(MEETING, "u"), MEETING)
    finally:
        verifier.stopService()


@pytest_twisted.ensureDeferred
async def test_fetcher_http_status_refused_and_connection_refused(issuer):
    fetch = JwksFetcher(reactor)
    assert json.loads(await fetch(issuer.url)) == issuer.jwks()
    issuer.set_http_response(404, b"not here")
    with pytest.raises(ValueError, match="HTTP 404"):
        await fetch(issuer.url)
    port = issuer.port
    issuer.stop_serving()
    with pytest.raises(ConnectionRefusedError):
        await fetch(f"http://127.0.0.1:{port}/jwks.json")


@pytest_twisted.ensureDeferred
async def test_fetcher_caps_a_declared_body(issuer):
    issuer.set_http_response(200, b"x" * 2048)
    with pytest.raises(ValueError, match="larger than 1024"):
        await JwksFetcher(reactor, max_bytes=1024)(issuer.url)
    assert len(await JwksFetcher(reactor, max_bytes=2048)(issuer.url)) == 2048


class _Streaming(Resource):
    """A chunked body with no length, as a misbehaving server might send."""

    isLeaf = True

    def __init__(self, chunks):
        super().__init__()
        self.chunks = chunks

    def render_GET(self, request):
        for chunk in self.chunks:
            request.write(chunk)
        request.finish()
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_fetcher_caps_a_streamed_body():
    big = _Streaming([b"y" * 600] * 4)
    port = reactor.listenTCP(0, Site(big), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/jwks"
        with pytest.raises(ValueError, match="larger than 1024"):
            await JwksFetcher(reactor, max_bytes=1024)(url)
        assert len(await JwksFetcher(reactor, max_bytes=4096)(url)) == 2400
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_file_jwks_loads_caps_and_follows_a_rewrite(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens, "REFETCH_SPACING", 0.0)
    issuer = TokenIssuer()
    path = tmp_path / "jwks dir" / "jwks.json"
    path.parent.mkdir()
    issuer.write_jwks(path)
    verifier = _started(path.as_uri())
    try:
        await wait_until(lambda: verifier.ready, timeout=5, what="JWKS loaded")
        await verifier.verify(issuer.mint(MEETING, "u"), MEETING)
        issuer.rotate()
        issuer.write_jwks(path)
        await verifier.verify(issuer.mint(MEETING, "u"), MEETING)
    finally:
        verifier.stopService()

    fetch = JwksFetcher(reactor, max_bytes=64)
    with pytest.raises(ValueError, match="larger than 64"):
        await fetch(path.as_uri())
    with pytest.raises(FileNotFoundError):
        await fetch((tmp_path / "missing.json").as_uri())
