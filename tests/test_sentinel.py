"""Redis under Sentinel: a real primary, a replica and three sentinels on
loopback; claims made durable on a replica with WAIT; the MC following a
failover by itself, with no generation ever going backwards."""

import re
import shutil
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from mc.config import parse_redis_url
from mc.errors import ReplicasShort, StoreUnavailable
from mc.redis.keys import generation_key, state_key
from mc.testing.daemon import wait_for
from mc.testing.redisproc import RedisProcess, SentinelProcess
from tests.helpers import wait_until
from tests.test_faults import Stream, accepted
from tests.test_recovery import RECORD

FAST_SYNC = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


def fields(flat):
    return dict(zip(flat[::2], flat[1::2], strict=True))


def link_up(replica, primary):
    """Replicating, as both ends see it: after a full sync the replica starts
    acknowledging (what WAIT counts) only with its first REPLCONF ACK."""
    primary.command("SET", "replication-probe", "1")
    info = primary.command("INFO", "replication")
    return ("master_link_status:up" in replica.command("INFO", "replication")
            and re.search(r"slave0:.*state=online,offset=[1-9]", info))


class Ha:
    """A primary, one replica and three sentinels; ``url`` names the sentinels."""

    def __init__(self):
        self.primary = RedisProcess(args=FAST_SYNC).start()
        self.replica = RedisProcess(args=(*FAST_SYNC, "--replicaof", "127.0.0.1",
                                          str(self.primary.port))).start()
        self.sentinels = []
        wait_for(lambda: link_up(self.replica, self.primary), 10, what="replication")
        self.sentinels = [SentinelProcess(self.primary).start() for _ in range(3)]
        wait_for(self.settled, 15, what="sentinels to find each other and the replica")
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/mymaster/0"

    def settled(self):
        for s in self.sentinels:
            master = fields(s.command("SENTINEL", "master", "mymaster"))
            if master["num-other-sentinels"] != "2" or master["num-slaves"] != "1":
                return False
        return True

    def promoted(self):
        return all(s.primary_port() == self.replica.port for s in self.sentinels) and \
            "role:master" in self.replica.command("INFO", "replication")

    def old_primary_back(self):
        """The killed primary restarts (empty); the sentinels make it a
        replica of the promoted one, so claims have a replica again."""
        if not self.primary.running:
            self.primary.start()

    def cleanup(self):
        for server in (*self.sentinels, self.replica, self.primary):
            server.cleanup()


@pytest.fixture
def ha():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    cluster = Ha()
    yield cluster
    cluster.cleanup()


def test_sentinel_urls_parse_and_never_show_the_password():
    t = parse_redis_url("REDIS_URL", "redis+sentinel://:pw-S3cr3t@10.0.0.1:26380,h2,[::1]:5"
                                     "/mymaster/2")
    assert t.sentinels == (("10.0.0.1", 26380), ("h2", 26379), ("::1", 5))
    assert (t.service, t.db, t.password.reveal()) == ("mymaster", 2, "pw-S3cr3t")
    assert str(t) == "redis+sentinel://:<redacted>@10.0.0.1:26380,h2:26379,[::1]:5/mymaster/2"
    assert "pw-S3cr3t" not in repr(t)
    for bad in ("redis+sentinel:///m", "redis+sentinel://h:99999/m", "redis+sentinel://h/",
                "redis+sentinel://h/m/x", "redis+sentinel://a b/m"):
        with pytest.raises(ValueError):
            parse_redis_url("REDIS_URL", bad)


@pytest_twisted.ensureDeferred
async def test_a_claim_no_replica_acknowledges_fails(make_store):
    primary = RedisProcess(args=FAST_SYNC).start()
    replica = RedisProcess(args=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        wait_for(lambda: link_up(replica, primary), 10, what="replication")
        store = await make_store(primary.url, replica_timeout=0.5, replica_acks=1)
        g = await store.claim_and_write("w1", "mc-a", RECORD, {})
        assert replica.command("GET", generation_key("w1")) == str(g), "on the replica on 'ok'"
        replica.pause()
        try:
            with pytest.raises(ReplicasShort, match="reached 0 of the 1 replicas"):
                await store.claim_and_write("w1", "mc-a", RECORD, {})
            assert not store.connected, "an unavailable store for health"
        finally:
            replica.resume()
    finally:
        replica.cleanup()
        primary.cleanup()


@pytest_twisted.ensureDeferred
async def test_claims_follow_a_failover_and_generations_never_go_backwards(ha, make_store):
    store = await make_store(ha.url, replica_acks=1)
    acked = {}  # meeting id -> generations acknowledged, in order
    killed_at = None
    deadline = time.monotonic() + 40
    n = 0
    while sum(map(len, acked.values())) < 80:
        assert time.monotonic() < deadline, "the store did not follow the failover"
        meeting_id = f"f{n % 4}"
        try:
            generation = await store.claim_and_write(meeting_id, "mc-a", RECORD, {})
        except StoreUnavailable:
            if killed_at is not None and ha.promoted():
                ha.old_primary_back()  # no claim counts without a replica to hold it
            await deferLater(reactor, 0.05, lambda: None)
            continue
        n += 1
        acked.setdefault(meeting_id, []).append(generation)
        if killed_at is None and n == 30:
            ha.primary.kill()
            killed_at = n
    assert ha.promoted()
    for meeting_id, generations in acked.items():
        assert generations == sorted(set(generations)), f"{meeting_id} went backwards"
        assert int(ha.replica.command("GET", generation_key(meeting_id))) == generations[-1]
    await wait_until(lambda: store.connected, timeout=5)


def test_the_mc_goes_on_with_the_promoted_replica(ha, mc_procs):
    mc = mc_procs(redis_url=ha.url)
    wait_for(mc.ready, 20, what="MC ready")
    with Stream(mc.grpc_target, prefix="ha") as stream:
        wait_for(lambda: stream.count(accepted) >= 10, 10, what="accepts before the kill")
        ha.primary.kill()
        killed = time.monotonic()
        wait_for(ha.promoted, 20, what="failover")
        ha.old_primary_back()
        wait_for(lambda: stream.count(accepted, since=killed) >= 10, 30,
                 what="accepts on the promoted replica")
    assert mc.alive()
    for meeting_id, *_, outcome in stream.results:
        if accepted(outcome):
            assert ha.replica.command("GET", generation_key(meeting_id)) is not None, meeting_id
            assert ha.replica.hgetall(state_key(meeting_id))["mc_id"] == mc.mc_id


@pytest_twisted.ensureDeferred
async def test_the_previous_owner_is_told_only_of_a_durable_claim(make_store):
    primary = RedisProcess(args=FAST_SYNC).start()
    replica = RedisProcess(args=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        wait_for(lambda: link_up(replica, primary), 10, what="replication")
        store = await make_store(primary.url, replica_timeout=0.3, replica_acks=1)
        a = await store.claim_and_write("d1", "mc-a", RECORD, {})
        assert await store.news("mc-a") == (True, [])
        replica.pause()
        try:
            with pytest.raises(ReplicasShort):
                await store.claim_and_write("d1", "mc-b", RECORD, {})
        finally:
            replica.resume()
        state = primary.hgetall(state_key("d1"))
        assert (state["mc_id"], state["pending"], state["prev_mc_id"]) == ("mc-b", "1", "mc-a")
        assert primary.command("HGETALL", "mc:mc-a:lost") == [], "mc-a was not told"
        wait_for(lambda: link_up(replica, primary), 10, what="replication again")
        assert not store.connected, "unavailable for health while the replicas fell short"
        c = await store.claim_and_write("d1", "mc-c", RECORD, {})
        assert store.connected, "a durable claim shows the replicas are back"
        assert c > a
        _, lost = await store.news("mc-a")
        assert lost == [("d1", c)], "the last confirmed owner is told, past the unconfirmed one"
        assert primary.command("HGETALL", "mc:mc-b:lost") == []
        assert "pending" not in primary.hgetall(state_key("d1"))
    finally:
        replica.cleanup()
        primary.cleanup()
