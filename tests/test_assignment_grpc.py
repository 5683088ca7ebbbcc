"""AssignMeetingWithMh end to end: a real gRPC client (the fake GC's helper,
run in a thread), the real gRPC server, the assignment service and the real
store on a real redis-server, all on the real reactor."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from mc.ac.service_tokens import AllowAll
from mc.assignment import AssignmentService
from mc.gc.grpcserver import GrpcServerService
from mc.lease import Lease
from mc.meetings import MeetingRegistry
from mc.ops.health import Health
from mc.ops.metrics import Metrics
from mc.ownership import OwnershipService
from mc.proto import gc_mc_pb2 as pb
from mc.testing.doubles import ScriptedGcClient, static_token_check
from mc.testing.fakegc import FakeGc, assign_meeting
from tests.configs import TEST_GC_TOKEN, TEST_SERVICE_TOKEN, make_config
from tests.fixtures_gc import static_client
from tests.helpers import wait_until

PRIMARY = ("mh-a", "https://mh-a.example:4433", "")
BACKUP = ("mh-b", "https://mh-b.example:4433/wt", "")
MH = [PRIMARY, BACKUP]
ADVERTISED = "http://mc-test-1.example:50052"


class Mc:
    """One MC's assignment path, started; ``target`` is its gRPC host:port."""

    def __init__(self, store, gc_client, ownership_interval, token_check=None, **flags):
        flags.setdefault("grpc_listen", "127.0.0.1:0")
        self.config = make_config(**flags)
        self.store = store
        self.gc = gc_client
        self.registry = MeetingRegistry(self.config.max_meetings, self.config.max_participants,
                                        self.config.participant_estimate, reactor)
        self.health = Health(lambda: store.connected, self.config.lag_threshold)
        self.metrics = Metrics()
        self.ownership = OwnershipService(self.config, store, self.registry, gc_client, reactor,
                                          self.metrics, lambda: ownership_interval,
                                          Lease(reactor, lambda: 3600.0))
        self.service = AssignmentService(self.config, store, self.registry, self.health,
                                         self.ownership, reactor, self.metrics)
        self.server = GrpcServerService(self.config.grpc_listen, self.service,
                                        token_check
                                        or static_token_check(self.config.gc_tokens, reactor),
                                        reactor, grace=1.0)
        self.ownership.startService()
        self.service.startService()
        self.server.startService()
        self.target = f"127.0.0.1:{self.server.port}"

    def call(self, meeting_id="meeting-1", mh=MH, token=TEST_GC_TOKEN, **kw):
        """The GC's call, in a thread; fires with the response or fails with RpcError."""
        return threads.deferToThread(assign_meeting, self.target, meeting_id, mh, token,
                                     timeout=5, **kw)

    def count(self, status, reason=""):
        return self.metrics.assignments.labels(status, reason)._value.get()

    async def stop(self):
        await self.server.stopService()
        await self.service.stopService()
        await self.ownership.stopService()
        self.gc.close()


@pytest_twisted.async_yield_fixture
async def make_mc(make_store):
    """``await make_mc(**config_flags)``; ``gc=FakeGc`` sends the GC calls to it,
    ``store=`` shares a store, ``ownership_interval=`` seconds (default 30)."""
    made = []

    async def make(gc=None, store=None, ownership_interval=30.0, **flags):
        if gc is not None:
            flags["gc_url"] = gc.url
        store = store or await make_store()
        client = ScriptedGcClient()
        if gc is not None:
            client = static_client(make_config(gc_url=gc.url), deadline=5.0)
        mc = Mc(store, client, ownership_interval, **flags)
        made.append(mc)
        return mc

    yield make
    for mc in reversed(made):
        await mc.stop()


async def rpc_error(d):
    with pytest.raises(grpc.RpcError) as info:
        await d
    return info.value.code(), info.value.details()


def keys(redis):
    """The contract's keys (the MC's own recovery index, mc:*, aside)."""
    return sorted(redis.command("KEYS", "meeting:*"))


@pytest_twisted.ensureDeferred
async def test_accept_writes_exactly_the_contract_keys(redis, make_mc):
    mc = await make_mc()
    before = int(time.time())
    response = await mc.call("meeting-1", MH)
    await_after = int(time.time())
    assert response == pb.AssignMeetingWithMhResponse(accepted=True)
    single = await mc.call("meeting-2", [PRIMARY])
    assert single.accepted

    assert keys(redis) == [f"meeting:{m}:{k}" for m in ("meeting-1", "meeting-2")
                           for k in ("generation", "mh", "state")]
    generation = mc.registry.get("meeting-1").generation
    assert generation >= before * 1e6, "seeded from Redis's clock"
    assert redis.command("GET", "meeting:meeting-1:generation") == str(generation)
    mh = json.loads(redis.command("GET", "meeting:meeting-1:mh"))
    assert before <= mh["assigned_at"] <= await_after and isinstance(mh["assigned_at"], int)
    assert mh == {"primary_mh_id": "mh-a", "primary_endpoint": "https://mh-a.example:4433",
                  "backup_mh_id": "mh-b", "backup_endpoint": "https://mh-b.example:4433/wt",
                  "assigned_at": mh["assigned_at"]}
    state = redis.hgetall("meeting:meeting-1:state")
    assert state.pop("claim_id") and int(state.pop("claimed_at")) >= before * 1000
    assert state.pop("mh_grpc_endpoints")  # the MHs' gRPC endpoints (the v1 dialect's)
    assert state == {
        "mc_id": "mc-test-1", "generation": str(generation), "grpc_endpoint": ADVERTISED,
        "assigned_at": str(mh["assigned_at"])}
    mh2 = json.loads(redis.command("GET", "meeting:meeting-2:mh"))
    assert (mh2["backup_mh_id"], mh2["backup_endpoint"]) == (None, None)

    assert mc.service.hosted() == {"meeting-1", "meeting-2"}
    assert mc.count("accepted") == 2
    assert mc.metrics.assignment_duration._sum.get() > 0


@pytest_twisted.ensureDeferred
async def test_at_capacity_on_meetings(redis, make_mc):
    mc = await make_mc(max_meetings=1)
    assert (await mc.call("meeting-1")).accepted
    response = await mc.call("meeting-2")
    assert response == pb.AssignMeetingWithMhResponse(
        accepted=False, rejection_reason=pb.REJECTION_REASON_AT_CAPACITY)
    assert not any(k.startswith("meeting:meeting-2") for k in keys(redis))
    assert mc.count("rejected", "AT_CAPACITY") == 1


@pytest_twisted.ensureDeferred
async def test_at_capacity_on_participants(redis, make_mc):
    mc = await make_mc(max_participants=10, participant_estimate=10)
    assert (await mc.call("meeting-1")).accepted
    m = mc.registry.get("meeting-1")
    p = m.admit("user-1", "Ann", None, time.time(), lambda: "participant-1")
    response = await mc.call("meeting-2")
    assert response.rejection_reason == pb.REJECTION_REASON_AT_CAPACITY
    m.leave(p, "VOLUNTARY", time.time())
    assert (await mc.call("meeting-2")).accepted


@pytest_twisted.ensureDeferred
async def test_draining(redis, make_mc):
    mc = await make_mc()
    mc.health.set_draining(True)
    response = await mc.call("meeting-1")
    assert response == pb.AssignMeetingWithMhResponse(
        accepted=False, rejection_reason=pb.REJECTION_REASON_DRAINING)
    assert keys(redis) == []


@pytest_twisted.ensureDeferred
async def test_unhealthy_while_redis_is_down_then_accepting_again(redis, make_mc):
    mc = await make_mc()
    redis.stop()
    try:
        await wait_until(lambda: not mc.store.connected, timeout=5, what="Redis to drop")
        response = await mc.call("meeting-1")
        assert response == pb.AssignMeetingWithMhResponse(
            accepted=False, rejection_reason=pb.REJECTION_REASON_UNHEALTHY)
    finally:
        redis.start()
    await wait_until(lambda: mc.store.connected, timeout=10, what="Redis to reconnect")
    assert (await mc.call("meeting-1")).accepted
    assert redis.command("GET", "meeting:meeting-1:generation") == str(
        mc.registry.get("meeting-1").generation)


@pytest_twisted.ensureDeferred
async def test_store_failure_after_reserving_gives_the_slot_back(redis, make_mc, make_store):
    mc = await make_mc(store=await make_store(reply_timeout=0.3), max_meetings=1)
    redis.pause()
    try:
        response = await mc.call("meeting-1")
    finally:
        redis.resume()
    assert response.rejection_reason == pb.REJECTION_REASON_UNHEALTHY
    assert len(mc.registry) == 0 and not mc.registry.pending("meeting-1")
    await wait_until(lambda: mc.store.connected, timeout=10, what="Redis to answer")
    assert (await mc.call("meeting-2")).accepted


@pytest_twisted.ensureDeferred
async def test_every_authentication_failure_is_unauthenticated_and_writes_nothing(
        redis, make_mc):
    mc = await make_mc()
    cases = {
        "missing": dict(token=None),
        "lowercase scheme": dict(authorization="bearer " + TEST_GC_TOKEN),
        "other scheme": dict(authorization="Basic " + TEST_GC_TOKEN),
        "no space": dict(authorization="Bearer" + TEST_GC_TOKEN),
        "two spaces": dict(authorization="Bearer  " + TEST_GC_TOKEN),
        "empty token": dict(authorization="Bearer "),
        "empty header": dict(authorization=""),
        "oversized": dict(authorization="Bearer " + "x" * 8193),
        "unknown token": dict(token="not-the-token"),
        "prefix of the token": dict(token=TEST_GC_TOKEN[:-1]),
        "service token": dict(token=TEST_SERVICE_TOKEN),
        "invalid request too": dict(token="nope", meeting_id="bad id!"),
    }
    for case, kw in cases.items():
        code, details = await rpc_error(mc.call(**kw))
        assert code == grpc.StatusCode.UNAUTHENTICATED, case
        assert TEST_GC_TOKEN not in details
    assert keys(redis) == []
    assert len(mc.registry) == 0 and mc.count("accepted") == 0


@pytest_twisted.ensureDeferred
async def test_every_validation_failure_is_invalid_argument_and_writes_nothing(redis, make_mc):
    mc = await make_mc()
    cases = [
        ("meeting_id", dict(meeting_id="meeting 1")),
        ("meeting_id", dict(meeting_id="meeting/1")),
        ("meeting_id", dict(meeting_id="m" * 256)),
        ("meeting_id", dict(meeting_id="")),
        ("meeting_id", dict(meeting_id="meeting-1\n")),
        ("mh_assignments", dict(mh=[])),
        ("mh_assignments", dict(mh=[(f"mh-{i}", f"https://mh-{i}.example", "")
                                    for i in range(17)])),
        ("mh_assignments[0].mh_id", dict(mh=[("", PRIMARY[1], "")])),
        ("mh_assignments[1].mh_id", dict(mh=[PRIMARY, ("x" * 256, BACKUP[1], "")])),
        ("mh_assignments[0].webtransport_endpoint",
         dict(mh=[("mh-a", "ftp://mh-a.example", "")])),
        ("mh_assignments[1].webtransport_endpoint",
         dict(mh=[PRIMARY, ("mh-b", "wss://mh-b.example:4433", "")])),
        ("mh_assignments[1].webtransport_endpoint", dict(mh=[PRIMARY, ("mh-b", "", "")])),
        ("mh_assignments[1].grpc_endpoint",
         dict(mh=[PRIMARY, ("mh-b", BACKUP[1], "grpc://mh-b.example:50052")])),
        ("mh_assignments[0].webtransport_endpoint",
         dict(mh=[("mh-a", "https://" + "h" * 250, "")])),
        ("request", dict(gc_id="g" * 70_000)),
    ]
    for field, kw in cases:
        code, details = await rpc_error(mc.call(**kw))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, kw)
        assert details.startswith(field + ":"), (field, details)
    # Far beyond the cap, grpcio refuses the bytes before they are parsed.
    code, _ = await rpc_error(mc.call(gc_id="g" * 300_000))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert keys(redis) == []
    assert len(mc.registry) == 0 and mc.count("accepted") == 0


@pytest_twisted.ensureDeferred
async def test_the_same_meeting_twice_keeps_one_slot_and_its_generation(redis, make_mc):
    mc = await make_mc(max_meetings=1)
    assert (await mc.call("meeting-1", [PRIMARY])).accepted
    first = mc.registry.get("meeting-1").generation
    assert (await mc.call("meeting-1", [BACKUP, PRIMARY])).accepted
    assert len(mc.registry) == 1 and mc.registry.get("meeting-1").generation == first
    assert redis.command("GET", "meeting:meeting-1:generation") == str(first)
    assert redis.hgetall("meeting:meeting-1:state")["generation"] == str(first)
    assert json.loads(redis.command("GET", "meeting:meeting-1:mh"))["primary_mh_id"] == "mh-b"

    # Many at once: all join the one accept or re-assert; still one slot.
    responses = await threads.deferToThread(
        _race, [lambda: assign_meeting(mc.target, "meeting-1", MH, TEST_GC_TOKEN)] * 10)
    assert all(r.accepted for r in responses)
    assert len(mc.registry) == 1 and mc.registry.get("meeting-1").generation == first
    assert redis.command("GET", "meeting:meeting-1:generation") == str(first)


def _race(calls):
    """Run ``calls`` in threads released together; return their results."""
    start = threading.Barrier(len(calls))

    def run(call):
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


@pytest_twisted.ensureDeferred
async def test_concurrent_calls_race_for_the_last_slot(redis, make_mc):
    mc = await make_mc(max_meetings=1)
    calls = [lambda i=i: assign_meeting(mc.target, f"meeting-{i}", MH, TEST_GC_TOKEN)
             for i in range(30)]
    responses = await threads.deferToThread(_race, calls)
    accepted = [i for i, r in enumerate(responses) if r.accepted]
    assert len(accepted) == 1
    assert all(r.rejection_reason == pb.REJECTION_REASON_AT_CAPACITY
               for r in responses if not r.accepted)
    assert mc.service.hosted() == {f"meeting-{accepted[0]}"}
    assert len(keys(redis)) == 3


@pytest_twisted.ensureDeferred
async def test_a_second_claim_fences_the_first_mc_out_within_one_interval(
        redis, make_mc, make_store):
    interval = 0.5
    first = await make_mc(ownership_interval=interval)
    second = await make_mc(store=await make_store(), environ={"MC_ID": "mc-test-2"})
    assert (await first.call("meeting-1")).accepted
    first_generation = first.registry.get("meeting-1").generation

    assert (await second.call("meeting-1")).accepted
    claimed = time.monotonic()
    generation = second.registry.get("meeting-1").generation
    assert generation > first_generation
    assert redis.command("GET", "meeting:meeting-1:generation") == str(generation)
    await wait_until(lambda: "meeting-1" not in first.service.hosted(), timeout=interval + 1,
                     what="the first MC to drop the meeting")
    assert time.monotonic() - claimed <= interval
    assert first.metrics.fenced_out._value.get() == 1
    assert len(first.registry) == 0

    state = redis.hgetall("meeting:meeting-1:state")
    assert state["mc_id"] == "mc-test-2" and state["generation"] == str(generation)
    await task.deferLater(reactor, 2 * interval, lambda: None)
    assert redis.hgetall("meeting:meeting-1:state") == state
    assert second.service.hosted() == {"meeting-1"}


@pytest_twisted.ensureDeferred
async def test_idle_meeting_ends_and_reaches_the_gc(redis, make_mc):
    fake = FakeGc([TEST_SERVICE_TOKEN]).start()
    try:
        mc = await make_mc(gc=fake, meeting_idle=1, max_meetings=1)
        assert (await mc.call("meeting-1")).accepted
        await wait_until(lambda: fake.meeting_ends(), timeout=5, what="NotifyMeetingEnded")
        [ended] = fake.meeting_ends()
        assert ended.status == "OK"
        assert ended.request == pb.NotifyMeetingEndedRequest(meeting_id="meeting-1",
                                                             region="us-east-1")
        assert mc.service.hosted() == frozenset()
        assert keys(redis) == ["meeting:meeting-1:generation", "meeting:meeting-1:state"]
        assert redis.hgetall("meeting:meeting-1:state")["ended"] == "1", "a tombstone"
        assert mc.metrics.meetings_ended.labels("idle")._value.get() == 1
        assert (await mc.call("meeting-2")).accepted  # the slot was freed
    finally:
        await threads.deferToThread(fake.stop)


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_the_server_and_frees_the_port(redis, make_mc):
    mc = await make_mc()
    port = mc.server.port
    await mc.server.stopService()
    code, _ = await rpc_error(mc.call("meeting-1"))
    assert code == grpc.StatusCode.UNAVAILABLE
    again = GrpcServerService(f"127.0.0.1:{port}", mc.service,
                              static_token_check(mc.config.gc_tokens, reactor), reactor)
    again.startService()
    try:
        assert again.port == port
    finally:
        await again.stopService()
    mc.server.startService()  # for the fixture's teardown


@pytest_twisted.ensureDeferred
async def test_binding_a_taken_port_fails_clearly(redis, make_mc):
    mc = await make_mc()
    other = GrpcServerService(f"127.0.0.1:{mc.server.port}", mc.service,
                              static_token_check(mc.config.gc_tokens, reactor), reactor)
    with pytest.raises(Exception, match="could not bind"):
        other.startService()
    assert not other.running


class StuckAssignment:
    """An assignment service whose answers never come."""

    def __init__(self):
        self.calls = 0
        self.cancelled = 0

    def assign(self, meeting_id, mh_assignments, gc_id):
        self.calls += 1
        return defer.Deferred(self._cancelled)

    def _cancelled(self, d):
        self.cancelled += 1


@pytest_twisted.ensureDeferred
async def test_a_stuck_decision_is_bounded_by_the_deadline_or_the_cap(redis):
    stuck = StuckAssignment()
    server = GrpcServerService("127.0.0.1:0", stuck, AllowAll(), reactor, max_workers=2,
                               grace=0.5, max_wait=0.3)
    server.startService()
    try:
        target = f"127.0.0.1:{server.port}"
        for timeout in (0.5, None):  # the caller's deadline, then none: the cap
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                await threads.deferToThread(assign_meeting, target, "meeting-1", MH, None,
                                            timeout=timeout)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 2
        await wait_until(lambda: stuck.cancelled == 2, timeout=2,
                         what="the stuck calls to be cancelled")
        assert stuck.calls == 2
    finally:
        await server.stopService()
