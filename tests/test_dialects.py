"""Both dialects against a real fake GC that changes its own while the
client runs: MC_GC_API auto follows call by call, v1 and legacy hold to
theirs; the service token of an AC-backed identity is checked by the fake as
a v1 GC checks it."""

import pytest
import pytest_twisted
from fixtures_gc import TOKEN, fast_request, register_request
from twisted.internet import reactor

from mc import config as mc_config
from mc.ac.identity import AcIdentity, ClientCredentials, StaticIdentity
from mc.config import Secret
from mc.errors import GcCallError
from mc.gc.gcclient import GrpcGcClient
from mc.testing.ac import AcDouble
from mc.testing.fakegc import FakeGc
from tests.configs import PARTICIPANT_ENV


def config(gc, api):
    return mc_config.load({"gc-url": gc.url, "insecure-no-auth": True,
                           "grpc-listen": "127.0.0.1:50052", "gc-api": api},
                          {"MC_SERVICE_TOKEN": TOKEN, **PARTICIPANT_ENV})


class Calls:
    def __init__(self):
        self.seen = []

    def __call__(self, method, dialect, outcome):
        self.seen.append((method, dialect, outcome))


@pytest.fixture
def fake():
    gc = FakeGc(TOKEN, dialect="v1").start()
    yield gc
    gc.stop()


def client_for(gc, api, identity=None, calls=None):
    cfg = config(gc, api)
    return GrpcGcClient(cfg, identity or StaticIdentity(cfg.service_token), reactor,
                        deadline=5.0, on_call=calls)


async def error_of(d):
    with pytest.raises(GcCallError) as info:
        await d
    return info.value


@pytest_twisted.ensureDeferred
async def test_auto_follows_an_upgrade_and_a_rollback_call_by_call(fake):
    calls = Calls()
    client = client_for(fake, "auto", calls=calls)
    try:
        assert client.dialect == "v1"
        assert (await client.register(register_request())).accepted
        fake.set_dialect("legacy")  # rolled back under the running MC
        await client.fast_heartbeat(fast_request())
        assert client.dialect == "legacy"
        await client.fast_heartbeat(fast_request())
        assert fake.unserved("v1") == 1  # only the first call after the change
        fake.set_dialect("v1")  # upgraded again
        await client.fast_heartbeat(fast_request())
        assert client.dialect == "v1" and fake.unserved("legacy") == 1
        assert [r.dialect for r in fake.requests()] == ["v1", "legacy", "legacy", "v1"]
        assert calls.seen == [
            ("RegisterMC", "v1", "ok"), ("FastHeartbeat", "v1", "UNIMPLEMENTED"),
            ("FastHeartbeat", "legacy", "ok"), ("FastHeartbeat", "legacy", "ok"),
            ("FastHeartbeat", "legacy", "UNIMPLEMENTED"), ("FastHeartbeat", "v1", "ok")]
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_fleet_mixing_both_is_served_whichever_answers(fake):
    fake.set_dialect("both")
    client = client_for(fake, "auto")
    try:
        await client.register(register_request())
        assert [r.dialect for r in fake.requests()] == ["v1"]
    finally:
        client.close()


@pytest.mark.parametrize("api, other", [("v1", "legacy"), ("legacy", "v1")])
@pytest_twisted.ensureDeferred
async def test_a_fixed_dialect_never_tries_the_other(fake, api, other):
    fake.set_dialect(api)
    client = client_for(fake, api)
    try:
        await client.register(register_request())
        fake.set_dialect(other)
        error = await error_of(client.fast_heartbeat(fast_request()))
        assert (error.code, error.dialect) == ("UNIMPLEMENTED", api)
        assert fake.unserved(other) == 0 and client.dialect == api
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_only_unimplemented_is_retried_in_the_other_dialect(fake):
    calls = Calls()
    client = client_for(fake, "auto", calls=calls)
    fake.set_dialect("legacy")
    try:
        await client.register(register_request())
        fake.set_dialect("v1")
        fake.stop()
        error = await error_of(client.fast_heartbeat(fast_request()))
        assert error.code == "UNAVAILABLE"  # not retried: only UNIMPLEMENTED is
        assert calls.seen[-1] == ("FastHeartbeat", "legacy", "UNAVAILABLE")
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_the_ac_token_is_checked_as_a_v1_gc_checks_it():
    ac = AcDouble(lifetime=60).serve()
    ac.add_client("mc-1", "s3cret")
    ac.add_client("an-mh", "mh-secret", service_type="media-handler")
    gc = FakeGc((), ac=ac, dialect="v1").start()
    calls = Calls()
    identities = []
    try:
        for client_id, secret in (("mc-1", "s3cret"), ("an-mh", "mh-secret")):
            identity = AcIdentity(client_id, Secret(secret),
                                  ClientCredentials(reactor, ac.url).request, reactor)
            identities.append(identity)
            identity.startService()
            await identity.when_ready()
        mc, mh = (client_for(gc, "auto", identity=i, calls=calls) for i in identities)
        assert (await mc.register(register_request())).accepted
        error = await error_of(mh.register(register_request()))
        assert error.code == "PERMISSION_DENIED"  # an MH's token is no MC's
        mc.close()
        mh.close()
    finally:
        for identity in identities:
            identity.stopService()
        gc.stop()
        ac.stop()


@pytest_twisted.ensureDeferred
async def test_no_token_no_call(fake):
    calls = Calls()  # an identity that was never started holds no token
    identity = AcIdentity("mc-1", Secret("x"), ClientCredentials(reactor, "http://127.0.0.1:9")
                          .request, reactor)
    client = client_for(fake, "auto", identity=identity, calls=calls)
    try:
        error = await error_of(client.register(register_request()))
        assert (error.code, error.dialect) == ("UNAUTHENTICATED", None)
        assert fake.requests() == [] and calls.seen == [("RegisterMC", "none", "NO_TOKEN")]
    finally:
        client.close()
