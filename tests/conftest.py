"""Fixtures around a real redis-server and RedisFencedStore on the real reactor."""

import shutil

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from mc.config import parse_redis_url
from mc.store import RedisFencedStore
from mc.testing.redisproc import RedisProcess
from tests.helpers import wait_until


@pytest.fixture(scope="session")
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
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
    """``await make_store(url=None, **kw)``: a started, connected store; all
    of them are stopped at teardown."""
    stores = []

    async def make(url=None, **kw):
        store = RedisFencedStore(parse_redis_url("REDIS_URL", url or redis.url), reactor, **kw)
        stores.append(store)
        store.startService()
        await wait_until(lambda: store.connected, timeout=10, what=f"{store!r} to connect")
        return store

    yield lambda url=None, **kw: defer.ensureDeferred(make(url, **kw))
    for store in stores:
        if store.running:
            await store.stopService()
