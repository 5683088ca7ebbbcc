"""The Redis pool always comes back, and the liveness probe is never queued
behind a blocking command: a real redis-server, the tests' fault proxy and
the store on the real reactor."""

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.task import deferLater

from mc.errors import ReplicasShort
from mc.testing.daemon import wait_for
from mc.testing.faultproxy import FaultProxy
from mc.testing.redisproc import RedisProcess
from tests.helpers import wait_until
from tests.test_recovery import RECORD
from tests.test_sentinel import FAST_SYNC, link_up


def clients(redis):
    return len(redis.command("CLIENT", "LIST").splitlines())


@pytest.fixture
def proxy(redis):
    p = FaultProxy(("127.0.0.1", redis.port))
    yield p
    p.close()


@pytest_twisted.ensureDeferred
async def test_connections_whose_set_up_timed_out_are_retried_until_redis_answers(
        redis, proxy, make_store):
    store = await make_store(proxy.url(), reply_timeout=0.3, connect_timeout=0.3)
    settled = clients(redis)
    proxy.blackhole()  # new connections are accepted and never answered
    await wait_until(lambda: not store.connected, timeout=3, what="down")
    proxy.reset()  # every connection dropped: each set-up from now on fails or times out
    await deferLater(reactor, 0.5, lambda: None)
    proxy.blackhole()
    await deferLater(reactor, 2.0, lambda: None)  # several set-ups time out (SELECT unanswered)
    proxy.set_pass()
    await wait_until(lambda: store.connected, timeout=5, what="back after the heal")
    assert await store.claim_and_write("pool-1", "mc-a", RECORD, {}) >= 1
    await wait_until(lambda: clients(redis) >= settled, timeout=5, what="every connection back")


@pytest_twisted.ensureDeferred
async def test_a_frozen_redis_leaves_every_connection_coming_back(redis, make_store):
    store = await make_store(reply_timeout=0.3)
    settled = clients(redis)
    redis.pause()
    try:
        await wait_until(lambda: not store.connected, timeout=3, what="down")
        await deferLater(reactor, 1.5, lambda: None)  # replies time out, connections drop
    finally:
        redis.resume()
    await wait_until(lambda: store.connected, timeout=5, what="back after the thaw")
    await wait_until(lambda: clients(redis) >= settled, timeout=5, what="every connection back")


@pytest_twisted.ensureDeferred
async def test_the_probe_is_not_queued_behind_a_wait(make_store):
    primary = RedisProcess(args=FAST_SYNC).start()
    replica = RedisProcess(args=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        wait_for(lambda: link_up(replica, primary), 10, what="replication")
        store = await make_store(primary.url, replica_timeout=1.5, pool_size=1,
                                 probe_every=lambda: 0.1, replica_acks=1)
        unreachable = []
        sampler = task.LoopingCall(lambda: store.reachable or unreachable.append(1))
        sampler.start(0.02)
        replica.pause()  # WAIT blocks the one pooled connection for 1.5 s each time
        try:
            for n in range(2):
                with pytest.raises(ReplicasShort):
                    await store.claim_and_write(f"w{n}", "mc-a", RECORD, {})
        finally:
            replica.resume()
            sampler.stop()
        assert not unreachable, "the probe answered on its own connection all along"
        assert not store.connected, "replicas short: unavailable for claims (and health)"
    finally:
        replica.cleanup()
        primary.cleanup()
