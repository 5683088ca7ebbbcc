"""The wiring: makeService builds one tree whose children start in dependency
order and stop in reverse, each stop awaited; checked in-process on the real
reactor against real Redis and the fake GC."""

import platform
from importlib import metadata

import pytest
import pytest_twisted
from twisted.application.service import IServiceCollection
from twisted.internet import defer, reactor, threads
from zope.interface.verify import verifyObject

from mc.interfaces import (
    ICallAuthorizer,
    IFencedStore,
    IGcClient,
    IServiceIdentity,
    ISystemProbe,
    ITokenVerifier,
)
from mc.participants.engine import NAME as QUIC_ENGINE
from mc.tap import Options, makeService
from mc.testing.fakegc import FakeGc, assign_meeting
from tests.configs import PARTICIPANT_ENV, TEST_CERT, TEST_GC_TOKEN, TEST_SERVICE_TOKEN
from tests.helpers import wait_until

ORDER = ["http", "redis-store", "health-monitor", "ownership", "meetings", "jwks", "joins",
         "mh-registration",
         "webtransport", "grpc", "gc-liaison", "reload", "watch", "lifecycle", "python-gc"]


@pytest.fixture
def gc():
    fake = FakeGc(TEST_SERVICE_TOKEN).start()
    yield fake
    fake.stop()


def options(redis, gc, *extra):
    o = Options(environ={"MC_SERVICE_TOKEN": TEST_SERVICE_TOKEN, "MC_GC_TOKENS": TEST_GC_TOKEN,
                         **PARTICIPANT_ENV})
    o.parseOptions(["--mc-id", "mc-tree-1", "--redis-url", redis.url, "--gc-url", gc.url,
                    "--grpc-listen", "127.0.0.1:0", "--grpc-advertise", "http://127.0.0.1:1",
                    "--health-listen", "127.0.0.1:0", "--webtransport-listen", "127.0.0.1:0",
                    "--webtransport-advertise", "https://127.0.0.1:1/", *extra])
    return o


def test_tree_shape_and_seams(redis, gc):
    root = makeService(options(redis, gc), reactor)
    assert root.name == "mc"
    IServiceCollection(root)
    assert [s.name for s in root] == ORDER
    verifyObject(IFencedStore, root.store)
    verifyObject(IGcClient, root.gc_client)
    verifyObject(ICallAuthorizer, root.grpc.authorizer)
    verifyObject(IServiceIdentity, root.identity)
    verifyObject(ISystemProbe, root.monitor._probe)
    verifyObject(ITokenVerifier, root.tokens)
    assert "AllowAll" not in repr(root.grpc.authorizer)


def test_every_secret_and_certificate_file_is_watched(redis, gc, tmp_path):
    """What any reload reads, the watcher watches: the client secret for
    the Auth Controller too, and the gRPC server's certificate and key."""
    secret, tokens = tmp_path / "client-secret", tmp_path / "gc-tokens"
    secret.write_text("client-secret-Z1")
    tokens.write_text(TEST_GC_TOKEN)
    o = Options(environ={"AC_ENDPOINT": "http://127.0.0.1:1", "MC_CLIENT_ID": "mc-tree-1",
                         "MC_CLIENT_SECRET_FILE": str(secret), "MC_GC_TOKENS_FILE": str(tokens),
                         "MC_GRPC_TLS_CERT_PATH": TEST_CERT.cert_path,
                         "MC_GRPC_TLS_KEY_PATH": TEST_CERT.key_path, **PARTICIPANT_ENV})
    o.parseOptions(["--redis-url", redis.url, "--gc-url", gc.url, "--grpc-listen",
                    "127.0.0.1:0", "--grpc-advertise", "https://127.0.0.1:1",
                    "--webtransport-advertise", "https://127.0.0.1:1/"])
    root = makeService(o, reactor)
    assert set(root.watcher._paths) == {str(secret), str(tokens), TEST_CERT.cert_path,
                                        TEST_CERT.key_path}
    assert root.watcher._paths == root.reloader.paths


def test_build_info_names_the_version_python_and_quic_engine(redis, gc):
    root = makeService(options(redis, gc), reactor)
    (family,) = [f for f in root.metrics.registry.collect() if f.name == "mc_build_info"]
    (sample,) = family.samples
    assert sample.value == 1
    assert sample.labels == {"version": metadata.version("mc"),
                             "python": platform.python_version(),
                             "quic_engine": f"{QUIC_ENGINE}-{metadata.version(QUIC_ENGINE)}"}


def test_insecure_no_auth_wires_allow_all(redis, gc):
    root = makeService(options(redis, gc, "--insecure-no-auth"), reactor)
    assert repr(root.grpc.authorizer) == "<AllowAll>"


@pytest_twisted.ensureDeferred
async def test_starts_in_order_serves_and_stops_in_reverse(redis, gc):
    root = makeService(options(redis, gc), reactor)
    events = []
    for child in root:
        start, stop = child.startService, child.stopService

        def started(start=start, name=child.name):
            events.append(("start", name))
            return start()

        def stopped(stop=stop, name=child.name):
            events.append(("stop", name))
            d = defer.maybeDeferred(stop)
            d.addCallback(lambda _: events.append(("stopped", name)))
            return d

        child.startService, child.stopService = started, stopped
    root.startService()
    try:
        assert events == [("start", n) for n in ORDER]
        await wait_until(lambda: root.liaison.registered and root.store.connected, timeout=10)
        target = f"127.0.0.1:{root.grpc.port}"
        r = await threads.deferToThread(
            assign_meeting, target, "tree-meeting-1",
            [("mh-1", "https://mh.example:4433", "")], TEST_GC_TOKEN)
        assert r.accepted
        assert redis.command("GET", "meeting:tree-meeting-1:generation") == str(
            root.registry.get("tree-meeting-1").generation)
    finally:
        del events[:]
        await root.stopService()
    expected = []
    for name in reversed(ORDER):
        expected += [("stop", name), ("stopped", name)]
    assert events == expected
    assert not any(s.running for s in root)
    assert not root.store.connected
