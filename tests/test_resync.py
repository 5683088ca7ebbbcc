"""A replica lost and back (with the full resync that follows) under a real
``twistd mc`` that needs one replica acknowledgement per claim: claims are
refused at once while no replica is online (never left waiting in WAIT),
readiness goes down once and up once (no flapping), and claims are accepted
again once the replica is back. The same for a replica that stays connected
through a slow full resync (it counts only once online), and beside another
online replica claims go on being accepted."""

import re
import threading
import time

from mc.testing.daemon import wait_for
from mc.testing.redisproc import RedisProcess
from tests.test_faults import Stream, accepted, unhealthy
from tests.test_sentinel import FAST_SYNC, link_up

#: Seconds the replica stays away.
AWAY = 2.0


def test_a_replica_away_refuses_claims_fast_and_readiness_does_not_flap(mc_procs, fake_gc):
    primary = RedisProcess().start()
    replica = RedisProcess(args=("--replicaof", "127.0.0.1", str(primary.port)))
    try:
        replica.start()
        wait_for(lambda: link_up(replica, primary), 20, what="replication")
        mc = mc_procs(redis_url=primary.url, env={"MC_REDIS_REPLICA_ACKS": "1"})
        wait_for(mc.ready, 20, what="MC ready")
        readiness, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                readiness.append(mc.http("/readyz", timeout=2)[0] == 200)
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with Stream(mc.grpc_target, prefix="rs") as stream:
            wait_for(lambda: stream.count(accepted) >= 3, 10, what="accepts before")
            replica.kill()  # back empty after AWAY s: a full resync
            cut = time.monotonic()
            time.sleep(AWAY)
            replica.start()
            wait_for(lambda: link_up(replica, primary), 30, what="the resync")
            synced = time.monotonic()
            wait_for(lambda: stream.count(accepted, since=synced) >= 3, 20,
                     what="accepts after the resync")
        stop.set()
        sampler.join(5)
        during = [(e - s, o) for _, s, e, o in stream.results if cut <= s and e <= synced]
        assert during and all(unhealthy(o) for _, o in during), (
            synced - cut, [(s - cut, e - cut, o) for _, s, e, o in stream.results])
        assert all(took < 0.5 for took, _ in during), "refused at once, not after a WAIT"
        flips = sum(1 for a, b in zip(readiness, readiness[1:], strict=False) if a != b)
        assert readiness[0] and readiness[-1] and flips == 2, readiness
    finally:
        replica.cleanup()
        primary.cleanup()


#: Seconds the primary waits before a diskless full sync: the replica it
#: resyncs stays connected but not online (``wait_bgsave``) that long.
SYNC_DELAY = 3


def replica_state(primary, replica):
    """The replica's state as the primary sees it (online, wait_bgsave,
    send_bulk, ...), or None while it is not attached."""
    found = re.search(rf"slave\d+:ip=[^,]+,port={replica.port},state=(\w+)",
                      primary.command("INFO", "replication"))
    return found and found.group(1)


def resyncing(primary, replica):
    """Make the attached replica forget its link and ask for a full resync,
    which the primary starts only after SYNC_DELAY s; returns once the
    primary sees it connected but syncing."""
    primary.command("CONFIG", "SET", "repl-diskless-sync-delay", str(SYNC_DELAY))
    replica.command("REPLICAOF", "NO", "ONE")
    replica.command("REPLICAOF", "127.0.0.1", str(primary.port))
    wait_for(lambda: replica_state(primary, replica) in ("wait_bgsave", "send_bulk"), 5,
             what="the resync to start")


def synced(primary, replica):
    primary.command("SET", "replication-probe", "1")
    return (replica_state(primary, replica) == "online"
            and "master_link_status:up" in replica.command("INFO", "replication"))


def test_a_replica_in_full_resync_counts_only_once_online(mc_procs, fake_gc):
    """A replica connected but still in its full resync acknowledges nothing:
    with another replica online claims are accepted throughout; as the only
    one, claims are refused at once (an unavailable store, the connection kept),
    readiness goes down once and comes back once."""
    primary = RedisProcess(args=FAST_SYNC).start()
    a, b = (RedisProcess(args=("--replicaof", "127.0.0.1", str(primary.port))) for _ in "ab")
    try:
        for replica in (a, b):
            replica.start()
            wait_for(lambda r=replica: synced(primary, r), 20, what="replication")
        mc = mc_procs(redis_url=primary.url, env={"MC_REDIS_REPLICA_ACKS": "1"})
        wait_for(mc.ready, 20, what="MC ready")
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.monotonic(), mc.http("/readyz", timeout=2)[0] == 200))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with Stream(mc.grpc_target, prefix="fr") as stream:
            wait_for(lambda: stream.count(accepted) >= 3, 10, what="accepts before")
            resyncing(primary, a)  # b online
            cut = time.monotonic()
            wait_for(lambda: synced(primary, a), 10 + SYNC_DELAY, what="a's resync beside b")
            both = (cut, time.monotonic())
            b.command("REPLICAOF", "NO", "ONE")
            wait_for(lambda: replica_state(primary, b) is None, 5, what="b detached")
            resyncing(primary, a)  # the only replica
            cut = time.monotonic()
            wait_for(lambda: synced(primary, a), 10 + SYNC_DELAY, what="a's resync alone")
            alone = (cut, time.monotonic())
            wait_for(lambda: stream.count(accepted, since=alone[1]) >= 3, 20,
                     what="accepts after the resync")
        stop.set()
        sampler.join(5)

        def claims(since, until):
            return [(e - s, o) for _, s, e, o in stream.results if since <= s and e <= until]

        timeline = [(round(s - both[0], 2), round(e - s, 3), o) for _, s, e, o in stream.results]
        assert min(both[1] - both[0], alone[1] - alone[0]) >= SYNC_DELAY - 1, (both, alone)
        beside = claims(*both)
        assert beside and all(accepted(o) for _, o in beside), timeline
        refused = claims(*alone)
        assert refused and all(unhealthy(o) for _, o in refused), timeline
        assert all(took < 0.5 for took, _ in refused), "refused at once, not after a WAIT"
        beside_ready = [ready for t, ready in samples if both[0] <= t <= both[1]]
        assert beside_ready and all(beside_ready), beside_ready
        assert "connection lost" not in mc.log(), "Redis never marked down"
        readiness = [ready for _, ready in samples]
        flips = sum(1 for x, y in zip(readiness, readiness[1:], strict=False) if x != y)
        assert readiness[0] and readiness[-1] and flips == 2, readiness
        down = next(t for t, ready in samples if not ready)
        back = next(t for t, ready in samples if t > down and ready)
        print(f"resync beside b {both[1] - both[0]:.2f} s, {len(beside)} accepted; alone "
              f"{alone[1] - alone[0]:.2f} s, {len(refused)} refused, slowest "
              f"{max(t for t, _ in refused) * 1000:.0f} ms; not ready {down - alone[0]:+.2f} s "
              f"after it began, ready again {back - alone[1]:.2f} s "
              f"after the sync; readiness flips {flips}")
    finally:
        for proc in (a, b, primary):
            proc.cleanup()
