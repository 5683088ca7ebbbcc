"""Fixtures around a real redis-server, RedisFencedStore on the real reactor,
the fake GC and ``twistd mc`` subprocesses."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

from mc.config import parse_redis_url
from mc.proto import gc_mc_pb2 as pb
from mc.redis.store import RedisFencedStore
from mc.testing.daemon import McProcess
from mc.testing.fakegc import FakeGc
from mc.testing.participant import LoopThread
from mc.testing.redisproc import RedisProcess
from tests.helpers import wait_until


@pytest.fixture(scope="session")
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    server = RedisProcess().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis(redis_server):
    """The session's redis-server, running and empty."""
    if not redis_server.running:
        redis_server.start()
    redis_server.command("FLUSHALL")
    return redis_server


@pytest_twisted.async_yield_fixture
async def make_store(redis):
    """``await make_store(url=None, start=True, **kw)``: a started, connected
    store (with ``start=False`` one not started yet); all of them are stopped
    at teardown."""
    stores = []

    async def make(url=None, start=True, **kw):
        store = RedisFencedStore(parse_redis_url("REDIS_URL", url or redis.url), reactor, **kw)
        stores.append(store)
        if start:
            store.startService()
            await wait_until(lambda: store.connected, timeout=10, what=f"{store!r} to connect")
        return store

    yield lambda url=None, **kw: defer.ensureDeferred(make(url, **kw))
    for store in stores:
        if store.running:
            await store.stopService()


E2E_SERVICE_TOKEN = "e2e-service-token-Q7"
E2E_GC_TOKEN = "e2e-gc-token-W3"


@pytest.fixture
def fake_gc():
    """A started FakeGc asking for 1 s / 3 s heartbeats; its join flow calls
    MCs with the token they accept and mints meeting tokens from its JWKS."""
    gc = FakeGc(E2E_SERVICE_TOKEN, mc_token=E2E_GC_TOKEN,
                placeable=(pb.HEALTHY, pb.DEGRADED))  # DEGRADED: a busy test machine
    gc.set_intervals(1000, 3000)
    gc.start()
    yield gc
    gc.stop()


@pytest.fixture
def mc_procs(tmp_path, redis, fake_gc):
    """``mc_procs(mc_id=..., env=..., redis_url=...)``: a started ``twistd mc``
    subprocess against ``redis`` and ``fake_gc``, each in its own directory;
    all of them are stopped at teardown."""
    started = []

    def start(mc_id="mc-e2e-1", env=None, redis_url=None, **kw):
        workdir = tmp_path / f"{mc_id}-{len(started)}"
        workdir.mkdir()
        # A lease of a few fast intervals: a busy test machine must not make
        # an MC send its people away; the fault tests set their own.
        env = {"MC_SHUTDOWN_GRACE_SECONDS": "1", "MC_OWNERSHIP_LEASE_SECONDS": "3",
               **(env or {})}
        kw.setdefault("jwks_url", fake_gc.jwks_url)
        mc = McProcess(workdir, fake_gc.url, redis_url or redis.url, E2E_SERVICE_TOKEN,
                       E2E_GC_TOKEN, mc_id=mc_id, env=env, **kw)
        started.append(mc.start())
        return mc

    yield start
    for mc in started:
        mc.stop()


@pytest.fixture
def events():
    """Every log event published during the test."""
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


@pytest.fixture
def loop():
    """An asyncio loop on its own thread, for the participant clients."""
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """``scripts/install.sh`` (the image's install steps) run once into a
    fresh directory: the virtualenv's path. pip's cache keeps it quick."""
    prefix = tmp_path_factory.mktemp("install") / "venv"
    script = Path(__file__).resolve().parent.parent / "scripts" / "install.sh"
    r = subprocess.run([str(script), str(prefix)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr
    return prefix
