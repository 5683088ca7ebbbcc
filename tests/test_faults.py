"""Fault injection with real processes (the MC under twistd, redis-server, the
fake GC) and a hypothesis-driven race of two MCs on one Redis."""

import json
import re
import shutil
import threading
import time

import grpc
import psutil
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads

from mc.assignment import AssignmentService
from mc.lease import Lease
from mc.meetings import MeetingRegistry
from mc.ops.health import Health
from mc.ops.metrics import Metrics
from mc.ownership import OwnershipService
from mc.proto import gc_mc_pb2 as pb
from mc.redis.keys import generation_key, mh_key, state_key
from mc.testing.daemon import wait_for
from mc.testing.doubles import ScriptedGcClient
from mc.testing.fakegc import assign_meeting
from mc.testing.redisproc import RedisProcess
from tests.configs import make_config
from tests.conftest import E2E_GC_TOKEN

MH = [("mh-1", "https://mh-1.example:4433", "")]


class Stream:
    """Assigns fresh meetings one after another from a thread, recording
    ``(meeting_id, started, ended, outcome)``; outcome is the response or the
    gRPC status code."""

    def __init__(self, target, prefix="s"):
        self.target = target
        self.prefix = prefix
        self.results = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)

    def _run(self):
        n = 0
        while not self._stop.is_set():
            meeting_id = f"{self.prefix}-{n}"
            n += 1
            started = time.monotonic()
            try:
                outcome = assign_meeting(self.target, meeting_id, MH, E2E_GC_TOKEN, timeout=3)
            except grpc.RpcError as e:
                outcome = e.code()
            self.results.append((meeting_id, started, time.monotonic(), outcome))
            self._stop.wait(0.01)

    def count(self, predicate, since=0.0):
        return sum(1 for _, s, _, o in list(self.results) if s >= since and predicate(o))


def accepted(outcome):
    return isinstance(outcome, pb.AssignMeetingWithMhResponse) and outcome.accepted


def unhealthy(outcome):
    return (isinstance(outcome, pb.AssignMeetingWithMhResponse) and not outcome.accepted
            and outcome.rejection_reason == pb.REJECTION_REASON_UNHEALTHY)


@pytest.fixture
def durable_redis():
    """A redis-server of its own whose data survive SIGKILL and restart."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    server = RedisProcess(persist=True).start()
    yield server
    server.cleanup()


def test_redis_killed_during_assignments_then_restarted(mc_procs, fake_gc, durable_redis):
    # A claim in flight at the kill is read back within 2 x 1 s, inside the
    # stream's 3 s call deadline: every outcome is seen.
    mc = mc_procs(redis_url=durable_redis.url, env={"MC_REDIS_TIMEOUT_SECONDS": "1"})
    wait_for(mc.ready, 20, what="MC ready")
    with Stream(mc.grpc_target) as stream:
        wait_for(lambda: stream.count(accepted) >= 10, 10, what="accepts before the kill")
        durable_redis.kill()
        killed = time.monotonic()
        fake_gc.wait_for(lambda: any(h.request.health == pb.UNHEALTHY
                                     for h in fake_gc.heartbeats("fast")), timeout=10)
        wait_for(lambda: stream.count(unhealthy, since=killed) >= 5, 10, what="UNHEALTHY")
        restarting = time.monotonic()
        durable_redis.start()
        wait_for(lambda: stream.count(accepted, since=restarting) >= 5, 20,
                 what="accepts again after the restart")
    assert mc.alive()
    away = [r for r in stream.results if r[1] >= killed and r[2] <= restarting]
    assert away and not any(accepted(o) for *_, o in away), "never accepts while Redis is away"
    assert all(accepted(o) or unhealthy(o) for *_, o in away)
    taken = [m for m, *_, o in stream.results if accepted(o)]
    for meeting_id in taken:
        generation = durable_redis.command("GET", generation_key(meeting_id))
        assert generation is not None, meeting_id
        assert durable_redis.hgetall(state_key(meeting_id))["generation"] == generation
        assert durable_redis.hgetall(state_key(meeting_id))["mc_id"] == mc.mc_id
    assert mc.metric("mc_meetings_current") == len(taken)


def test_a_frozen_redis_is_unhealthy_at_once_and_accepting_again_when_it_thaws(
        mc_procs, fake_gc):
    fast = 1.0  # what the fake GC hands out (see the fake_gc fixture)
    server = RedisProcess().start()
    try:
        mc = mc_procs(redis_url=server.url, env={"MC_REDIS_TIMEOUT_SECONDS": "1"})
        wait_for(mc.ready, 20, what="MC ready")
        with Stream(mc.grpc_target, prefix="fz") as stream:
            wait_for(lambda: stream.count(accepted) >= 5, 10, what="accepts before the freeze")
            server.pause()  # SIGSTOP: connections stay open, nothing answers
            frozen = time.monotonic()
            try:
                wait_for(lambda: mc.http("/readyz")[0] == 503, fast, interval=0.02,
                         what="/readyz 503 within one fast interval")
                down = time.monotonic()
                assert json.loads(mc.http("/readyz")[1]) == {
                    "ready": False, "reason": "redis unreachable", "gc": "registered"}
                told = fake_gc.wait_for(lambda: [h for h in fake_gc.heartbeats("fast")
                                                 if h.monotonic >= frozen
                                                 and h.request.health == pb.UNHEALTHY],
                                        timeout=5)
                assert told[0].monotonic - down <= fast + 0.1, "the next fast heartbeat"
                wait_for(lambda: stream.count(unhealthy, since=frozen) >= 10, 5,
                         what="assignments answered UNHEALTHY")
                wait_for(lambda: time.monotonic() - frozen >= 2.5, 3, what="a longer freeze")
            finally:
                server.resume()
            thawed = time.monotonic()
            wait_for(lambda: stream.count(accepted, since=thawed) >= 5, 10,
                     what="accepts after the thaw")
        back = min(s for _, s, _, o in stream.results if s >= thawed and accepted(o))
        assert back - thawed <= 1.0, "accepting again by itself at the first answered probe"
        during = [(e - s, o) for _, s, e, o in stream.results if frozen <= s and e <= thawed]
        assert during and not any(accepted(o) for _, o in during)
        assert all(unhealthy(o) for _, o in during), during
        # The one in flight at the freeze is read back once its claim can no
        # longer land (its 1 s deadline, then the read-back's): the rest at once.
        assert sum(1 for took, _ in during if took >= 1.0) <= 1, during
        assert all(took < 2 * 1.0 + 1.0 for took, _ in during), during
        arrivals = [h.monotonic for h in fake_gc.heartbeats("fast")
                    if frozen - fast <= h.monotonic <= thawed + fast]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert gaps and max(gaps) <= fast + 0.1, f"fast heartbeats late: {gaps}"
        assert mc.alive()
    finally:
        server.cleanup()


def test_gc_restarted_empty_gets_a_registration_within_one_fast_interval(mc_procs, fake_gc):
    mc = mc_procs()
    wait_for(mc.ready, 20, what="MC ready")
    fake_gc.stop()
    # Long enough for grpc's reconnect backoff to grow past the fast interval.
    wait_for(lambda: 'kind="fast",outcome="error"} 4.0' in mc.http("/metrics")[1], 10,
             what="four failed heartbeats")
    fake_gc.forget_all()
    fake_gc.clear()
    fake_gc.start()
    back = time.monotonic()
    registered = fake_gc.wait_for(
        lambda: [r for r in fake_gc.registrations() if r.status == "OK"], timeout=10)
    fast_interval = 1.0  # what the fake GC hands out (see the fake_gc fixture)
    assert registered[0].monotonic - back <= fast_interval + 0.5
    wait_for(mc.ready, 10, what="MC ready again")


def test_a_gc_slower_than_the_deadline_piles_nothing_up(mc_procs, fake_gc):
    deadline = 0.4
    mc = mc_procs(env={"MC_GC_DEADLINE_SECONDS": str(deadline)})
    wait_for(mc.ready, 20, what="MC ready")
    fake_gc.set_delay(2.0)
    fake_gc.clear()
    proc = psutil.Process(mc.pid)
    fake_gc.wait_for(lambda: len(fake_gc.heartbeats()) >= 4, timeout=10)
    threads, rss = proc.num_threads(), proc.memory_info().rss
    fake_gc.wait_for(lambda: len(fake_gc.heartbeats()) >= 10, timeout=20)
    assert proc.num_threads() <= threads + 1
    assert proc.memory_info().rss <= rss + 8 * 2**20
    for kind in ("fast", "comprehensive"):
        arrivals = [h.monotonic for h in fake_gc.heartbeats(kind)]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert all(gap >= deadline * 0.9 for gap in gaps), f"{kind} heartbeats overlap: {gaps}"
    assert re.search(r'mc_gc_heartbeats_total\{dialect="(v1|legacy)",kind="fast",outcome="error"\}',
                     mc.http("/metrics")[1])
    assert mc.alive()


# --- two MCs racing for the same meetings on one Redis ----------------------

class Stack:
    """One MC's assignment path on its own store; the MH id names the MC."""

    def __init__(self, mc_id, store):
        self.mc_id = mc_id
        self.config = make_config(environ={"MC_ID": mc_id})
        self.registry = MeetingRegistry(100, 100000, 1, reactor)
        self.ownership = OwnershipService(self.config, store, self.registry, ScriptedGcClient(),
                                          reactor, Metrics(), lambda: 30.0,
                                          Lease(reactor, lambda: 3600.0))
        self.service = AssignmentService(
            self.config, store, self.registry, Health(lambda: store.connected, 0.5),
            self.ownership, reactor, Metrics())
        self.mh = ((f"mh-of-{mc_id}", "https://mh.example:4433", ""),)

    def assign(self, meeting_id):
        return self.service.assign(meeting_id, self.mh, "gc-race")

    def check_ownership(self):
        return self.ownership.check()


RACE = st.lists(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 3)),
                         min_size=1, max_size=6), min_size=1, max_size=6)


@pytest_twisted.ensureDeferred
async def test_two_mcs_racing_end_with_one_owner_per_meeting(redis, make_store):
    stores = {"a": await make_store(), "b": await make_store()}

    # hypothesis drives examples from a thread; each runs on the reactor.
    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(RACE)
    def race(batches):
        examples.append(batches)
        threads.blockingCallFromThread(
            reactor, lambda: defer.ensureDeferred(run_race(redis, stores, batches)))

    examples = []
    await threads.deferToThread(race)
    assert len(examples) >= 20


async def run_race(redis, stores, batches):
    redis.command("FLUSHALL")
    mcs = {k: Stack(f"mc-race-{k}", store) for k, store in stores.items()}
    for mc in mcs.values():
        mc.ownership.startService()
        mc.service.startService()
    try:
        for batch in batches:  # each batch's claims are in flight together
            answers = await defer.gatherResults(
                [mcs[k].assign(f"race-{m}") for k, m in batch])
            # A claim issued before another MC's claim that reached Redis
            # first is stale: refused, it changes nothing.
            assert all(a in ((True, None), (False, "UNHEALTHY")) for a in answers), answers
        meetings = {f"race-{m}" for batch in batches for _, m in batch}
        for meeting_id in meetings:
            top = int(redis.command("GET", generation_key(meeting_id)))
            holders = [mc for mc in mcs.values()
                       if (m := mc.registry.get(meeting_id)) and m.generation == top]
            assert len(holders) == 1, (meeting_id, top)
            state = redis.hgetall(state_key(meeting_id))
            assert state["mc_id"] == holders[0].mc_id and state["generation"] == str(top)
            assert holders[0].mh[0][0] in redis.command("GET", mh_key(meeting_id))
        for mc in mcs.values():
            await mc.check_ownership()
        hosted = [mc.service.hosted() for mc in mcs.values()]
        assert not hosted[0] & hosted[1], "a meeting hosted by two MCs"
        assert hosted[0] | hosted[1] == meetings
    finally:
        for mc in mcs.values():
            await mc.service.stopService()
            await mc.ownership.stopService()
