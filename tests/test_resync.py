"""A replica lost and back (with the full resync that follows) under a real
``twistd mc`` that needs one replica acknowledgement per claim: claims are
refused at once while no replica is online (never left waiting in WAIT),
readiness goes down once and up once (no flapping), and claims are accepted
again once the replica is back."""

import threading
import time

from mc.testing.daemon import wait_for
from mc.testing.redisproc import RedisProcess
from tests.test_faults import Stream, accepted, unhealthy
from tests.test_sentinel import link_up

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
