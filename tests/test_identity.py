"""The MC's service identity from the Auth Controller: the renewal schedule
and the failure handling on a Clock, the AC's answers parsed, and the real
client-credentials request against the AC double over HTTP, with every way
an AC can fail."""

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from mc.ac.identity import (
    AcIdentity,
    BadTokenResponse,
    ClientCredentials,
    StaticIdentity,
    TokenRefused,
    TokenRequestFailed,
    parse_token_response,
    renewal_delay,
)
from mc.config import Secret
from mc.httpbody import BodyTooLarge
from mc.interfaces import IServiceIdentity
from mc.testing.ac import AcDouble
from tests.helpers import wait_until

SECRET = Secret("mc-client-secret-Z9")


def jwt_like(**claims):
    """An unsigned JWT-shaped token (the MC never verifies its own token)."""
    import base64

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'EdDSA', 'kid': 'k'})}.{part(claims)}.c2ln"


def answer(life=20, token=None, **fields):
    token = token or jwt_like(sub="mc", iat=1000, exp=1000 + life)
    return json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": life,
                       **fields}).encode()


class ScriptedAc:
    """``request`` of AcIdentity, answered from a script: bytes (the 200
    body), an exception, or ``"hold"`` (a Deferred the test may fire)."""

    def __init__(self):
        self.script = []
        self.calls = []
        self.held = []

    def request(self, client_id, secret):
        self.calls.append((client_id, secret.reveal()))
        outcome = self.script.pop(0) if self.script else answer()
        if outcome == "hold":
            d = defer.Deferred()
            self.held.append(d)
            return d
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)


class Rig:
    def __init__(self):
        self.clock = task.Clock()
        self.ac = ScriptedAc()
        self.outcomes = []
        self.identity = AcIdentity("mc-1", SECRET, self.ac.request, self.clock,
                                   on_refresh=self.outcomes.append, retry=lambda n: 2.0 ** n)

    def advance(self, seconds, step=0.25):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)


@pytest.fixture
def rig():
    r = Rig()
    yield r
    if r.identity.running:
        r.identity.stopService()


def test_renewal_is_well_before_expiry():
    assert renewal_delay(20) == 10
    assert renewal_delay(599) <= 0.8 * 599
    assert renewal_delay(600) == 300
    assert renewal_delay(3600) == 2700  # 15 minutes before expiry
    assert renewal_delay(86400) == pytest.approx(0.8 * 86400)  # never later than at 80 %


def test_static_identity_is_always_ready_and_rotates():
    identity = StaticIdentity(Secret("static-1"))
    verifyObject(IServiceIdentity, identity)
    assert identity.metadata() == (("authorization", "Bearer static-1"),)
    identity.use_token(Secret("static-2"))
    assert identity.metadata() == (("authorization", "Bearer static-2"),)
    assert identity.expiry_seconds() is None and "static-2" not in repr(identity)


def test_token_at_start_then_renewed_at_half_its_life_without_a_gap(rig):
    verifyObject(IServiceIdentity, rig.identity)
    waiting = rig.identity.when_ready()
    rig.identity.startService()
    assert waiting.called and rig.identity.ready
    (header,) = rig.identity.metadata()
    assert header[0] == "authorization" and header[1].startswith("Bearer ")
    assert rig.ac.calls == [("mc-1", SECRET.reveal())]
    for n in range(2, 8):
        rig.advance(10)
        assert len(rig.ac.calls) == n
        assert rig.identity.ready and rig.identity.expiry_seconds() > 9
    assert rig.outcomes == ["ok"] * 7


def test_failures_keep_the_token_until_it_expires_and_retry_before(rig):
    rig.identity.startService()
    rig.ac.script = [TokenRequestFailed("HTTP 500")] * 3
    rig.advance(10)  # the renewal fails; retries 1 s, 2 s, then half the life left (3.5 s)
    assert rig.identity.ready
    rig.advance(6)
    assert rig.outcomes == ["ok", "error", "error", "error"]
    assert rig.identity.ready
    rig.advance(1)
    assert rig.identity.ready and len(rig.ac.calls) == 5  # the fourth attempt worked
    assert rig.identity.expiry_seconds() > 15


def test_an_expired_token_is_never_sent(rig):
    rig.identity.startService()
    rig.ac.script = [TokenRefused("HTTP 401")] * 100
    sent = []
    while rig.clock.seconds() < 40:
        rig.clock.advance(0.1)
        metadata = rig.identity.metadata()
        if metadata is not None:
            sent.append(rig.clock.seconds())
    assert max(sent) < 20 - 1 + 0.11  # the token lived 20 s; none sent in its last second
    assert not rig.identity.ready and rig.identity.expiry_seconds() == 0
    assert set(rig.outcomes[1:]) == {"rejected"}
    # Without a token, the backoff grows to its cap: 1, 2, 4, ... 30 s.
    assert len(rig.ac.calls) < 12


def test_ac_down_at_start_then_up(rig):
    rig.ac.script = [TokenRequestFailed("HTTP 503")] * 3
    waiting = rig.identity.when_ready()
    rig.identity.startService()
    assert not rig.identity.ready and rig.identity.metadata() is None
    assert not waiting.called
    rig.advance(1 + 2 + 4 + 0.5)
    assert waiting.called and rig.identity.ready
    assert rig.outcomes == ["error", "error", "error", "ok"]


def test_a_request_never_answered_times_out_and_is_retried(rig):
    rig.ac.script = ["hold"]
    rig.identity.startService()
    rig.advance(10.5)
    assert rig.outcomes == ["error"]
    assert rig.ac.held[0].called  # cancelled by the timeout
    rig.advance(1.5)
    assert rig.identity.ready


def test_a_new_client_secret_is_tried_at_once_after_a_refusal(rig):
    rig.ac.script = [TokenRefused("HTTP 401")]
    rig.identity.startService()
    assert rig.outcomes == ["rejected"]
    rig.identity.use_client_secret(Secret("rotated-secret"))
    assert rig.identity.ready and rig.ac.calls[-1] == ("mc-1", "rotated-secret")
    rig.identity.use_client_secret(Secret("rotated-secret"))  # the same: nothing to do
    assert len(rig.ac.calls) == 2


def test_stop_cancels_what_is_pending(rig):
    rig.ac.script = ["hold"]
    rig.identity.startService()
    rig.identity.stopService()
    assert rig.ac.held[0].called
    assert rig.clock.getDelayedCalls() == []


def test_the_token_never_reaches_a_repr_or_a_log(rig):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        rig.identity.startService()
        rig.ac.script = [TokenRefused("HTTP 401"), BadTokenResponse("not JSON")]
        rig.advance(12)
    finally:
        globalLogPublisher.removeObserver(events.append)
    token = rig.identity.metadata()[0][1][len("Bearer "):]
    text = repr(rig.identity) + "".join(repr(e) for e in events)
    assert token not in text and SECRET.reveal() not in text


@pytest.mark.parametrize("body, why", [
    (b"<html>", "not JSON"),
    (b"[1]", "not a JSON object"),
    (json.dumps({"token_type": "Bearer", "expires_in": 5}).encode(), "access_token"),
    (answer(token="x" * 8193), "access_token"),
    (answer(token="has space"), "access_token"),
    (answer(token_type="mac"), "token_type"),
    (json.dumps({"access_token": jwt_like(exp=5), "expires_in": 0}).encode(), "expires_in"),
    (json.dumps({"access_token": jwt_like(exp=5), "expires_in": True}).encode(), "expires_in"),
    (json.dumps({"access_token": jwt_like(exp=5), "expires_in": "60"}).encode(), "expires_in"),
    (json.dumps({"access_token": "not-a-jwt", "expires_in": 60}).encode(), "not a JWT"),
    (json.dumps({"access_token": jwt_like(iat=5), "expires_in": 60}).encode(), "no exp"),
])
def test_unusable_answers_are_refused(body, why):
    with pytest.raises(BadTokenResponse, match=why):
        parse_token_response(body)


def test_the_life_is_the_shorter_of_expires_in_and_the_jwt_own():
    token, life = parse_token_response(answer(life=3600, token=jwt_like(iat=100, exp=160)))
    assert life == 60 and "Secret" in repr(token)
    assert parse_token_response(answer(life=30))[1] == 30


# --- the real request, over HTTP, against the AC double ---------------------------


@pytest.fixture
def ac():
    double = AcDouble(lifetime=20).serve()
    double.add_client("mc-1", SECRET.reveal())
    yield double
    double.stop()


async def request_outcome(ac_double):
    try:
        return parse_token_response(
            await ClientCredentials(reactor, ac_double.url).request("mc-1", SECRET))
    except Exception as e:
        return e


@pytest_twisted.ensureDeferred
async def test_client_credentials_get_a_service_token(ac):
    token, life = await request_outcome(ac)
    assert life == 20
    assert ac.check("Bearer " + token.reveal(), "service.write.gc",
                    "meeting-controller") == "ok"
    assert [client for client, _ in ac.issued()] == ["mc-1"]


@pytest.mark.parametrize("mode, error", [
    ("401", TokenRefused), ("500", TokenRequestFailed), ("not_json", BadTokenResponse),
    ("oversized", BodyTooLarge), ("no_exp", BadTokenResponse),
])
@pytest_twisted.ensureDeferred
async def test_every_ac_failure_is_a_clear_error(ac, mode, error):
    ac.fail(mode, count=1)
    outcome = await request_outcome(ac)
    assert isinstance(outcome, error), outcome
    assert SECRET.reveal() not in str(outcome)
    assert not isinstance(await request_outcome(ac), Exception)  # and then it works


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_refused(ac):
    ac.set_secret("mc-1", "another")
    assert isinstance(await request_outcome(ac), TokenRefused)


@pytest_twisted.ensureDeferred
async def test_an_ac_never_answering_and_an_ac_down(ac):
    outcomes = []
    identity = AcIdentity("mc-1", SECRET, ClientCredentials(reactor, ac.url).request, reactor,
                          on_refresh=outcomes.append, retry=lambda n: 0.2, timeout=0.5)
    ac.fail("hang")
    identity.startService()
    try:
        await wait_until(lambda: outcomes[:1] == ["error"], 5, "the timeout")
        assert not identity.ready
        ac.lifetime = 4
        ac.recover()
        await identity.when_ready()
        assert identity.ready and 2 < identity.expiry_seconds() <= 4
        ac.stop()  # down: connection refused
        count = len(outcomes)
        await wait_until(lambda: len(outcomes) > count, 5, "a refused connection")
        assert outcomes[-1] == "error"
        assert identity.ready  # the current token stays until it expires
    finally:
        identity.stopService()
