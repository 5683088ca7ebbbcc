"""Restart recovery: the MC's index of its meetings in Redis, kept by the Lua
scripts, and a restarted MC hosting again the meetings it still owns."""

import json
import signal

import pytest_twisted

from mc.errors import StoreUnavailable
from mc.proto import gc_mc_pb2 as pb
from mc.redis import scripts
from mc.redis.claims import Claim, claim_call, new_claim_id
from mc.redis.keys import generation_key, meetings_index_key, state_key
from mc.redis.store import KEY_TTL, claim_and_write_call
from mc.testing.daemon import wait_for
from mc.testing.fakegc import assign_meeting
from tests.conftest import E2E_GC_TOKEN
from tests.helpers import wait_until
from tests.test_assignment import Rig, result_of

MH = [("mh-1", "https://mh-1.example:4433", ""),
      ("mh-2", "https://mh-2.example:4433", "")]
RECORD = {"primary_mh_id": "mh-1", "primary_endpoint": "https://mh-1.example:4433",
          "backup_mh_id": "mh-2", "backup_endpoint": "https://mh-2.example:4433",
          "assigned_at": 1700000000}


def index(redis, mc_id):
    return sorted(redis.command("SMEMBERS", meetings_index_key(mc_id)))


def claim_as(redis, meeting_id, mc_id):
    """Another MC's accept, through the real script, from a blocking test."""
    keys, values = claim_and_write_call(meeting_id, mc_id, RECORD, {}, new_claim_id())
    keys, args = claim_call(mc_id, [Claim(meeting_id, keys, values)], 0, 1, KEY_TTL)
    reply = redis.command("EVAL", scripts.CLAIM_AND_WRITE.source, len(keys), *keys, *args)
    assert reply[1][0] == scripts.OK
    return reply[1][1]


@pytest_twisted.ensureDeferred
async def test_the_index_follows_ownership_atomically(redis, make_store):
    store = await make_store()
    await store.claim_and_write("m1", "mc-a", RECORD, {})
    assert index(redis, "mc-a") == ["m1"]
    await store.claim_and_write("m1", "mc-b", RECORD, {})
    assert index(redis, "mc-a") == [] and index(redis, "mc-b") == ["m1"]
    g = await store.claim_and_write("m1", "mc-b", RECORD, {})
    assert index(redis, "mc-b") == ["m1"]
    assert await store.delete("m1", g, "mc-b") == g
    assert index(redis, "mc-b") == []


@pytest_twisted.ensureDeferred
async def test_recovery_hands_over_only_owned_meetings_before_reporting_connected(
        redis, make_store):
    writer = await make_store()
    g = {}
    for m in ("m1", "m2", "m3", "m4"):
        g[m] = await writer.claim_and_write(m, "mc-a", RECORD, {})
    await writer.claim_and_write("m2", "mc-b", RECORD, {})  # taken by another MC
    redis.command("INCR", generation_key("m3"))  # a claim in flight elsewhere: it moved on
    redis.command("SADD", meetings_index_key("mc-a"), "m5")  # no keys at all
    redis.command("SET", "meeting:m4:mh", "not json")

    seen = []
    store = await make_store(start=False)
    store.recover_on_connect("mc-a", lambda owned: seen.append((owned, store.connected)))
    store.startService()
    await wait_until(lambda: store.connected, timeout=10, what="recovery")
    assert seen == [([("m1", g["m1"], RECORD, ())], False)], "handed over before 'connected'"
    assert index(redis, "mc-a") == ["m1", "m4"], "m4 stays: it is ours, only unreadable"
    assert index(redis, "mc-b") == ["m2"]
    assert redis.hgetall(state_key("m2"))["mc_id"] == "mc-b", "others' keys left alone"


def test_recovered_meetings_are_claimed_afresh_within_capacity():
    rig = Rig(max_meetings=2)
    for i in (1, 2, 3):
        rig.store.generations[f"m{i}"] = 10 * i  # what the previous life held
    d = rig.service.recovered([(f"m{i}", 10 * i, RECORD, ()) for i in (3, 1, 2)])
    assert result_of(d) is None
    assert rig.service.hosted() == {"m1", "m2"}
    m = rig.registry.get("m2")
    assert m.generation == 21, "claimed afresh: a process still alive with the old one is fenced"
    assert m.mh_assignments == tuple(MH)
    assert rig.store.state["m2"]["mc_id"] == "mc-test-1"
    rig.store.script["claim_and_write"].append(StoreUnavailable("down"))
    rig.registry.remove("m1")
    result_of(rig.service.recovered([("m1", 11, RECORD, ())]))
    assert "m1" not in rig.service.hosted() and not rig.registry.pending("m1")


@pytest_twisted.ensureDeferred
async def test_recovery_gives_back_the_mhs_grpc_urls_the_owner_stored(redis, make_store):
    """The fleet's ``mh`` record has no gRPC URL: the owner keeps them in its
    state, so a restarted MC can register its meetings with their MHs."""
    writer = await make_store()
    urls = ["https://mh-1.internal:50051", ""]
    await writer.claim_and_write("m1", "mc-a", RECORD,
                                 {"mh_grpc_endpoints": json.dumps(urls)})
    await writer.claim_and_write("m2", "mc-a", RECORD, {"mh_grpc_endpoints": "[1, {}]"})
    seen = []
    store = await make_store(start=False)
    store.recover_on_connect("mc-a", seen.append)
    store.startService()
    await wait_until(lambda: store.connected, timeout=10, what="recovery")
    owned = {o[0]: o for o in seen[0]}
    assert owned["m1"][3] == tuple(urls)
    assert owned["m2"][3] == (), "an unreadable list is no URL, not a failed recovery"

    rig = Rig()
    rig.service.recovered([owned["m1"]])
    m = rig.registry.get("m1")
    assert m.mh_assignments == (("mh-1", "https://mh-1.example:4433", urls[0]),
                                ("mh-2", "https://mh-2.example:4433", ""))
    assert json.loads(rig.store.state["m1"]["mh_grpc_endpoints"]) == urls, "written again"


def test_a_killed_mc_restarted_with_its_id_hosts_its_meetings_again(mc_procs, fake_gc, redis):
    first = mc_procs(env={"MC_MAX_MEETINGS": "3"})
    wait_for(first.ready, 20, what="first MC ready")
    for m in ("r1", "r2", "r3"):
        assert assign_meeting(first.grpc_target, m, MH, E2E_GC_TOKEN).accepted
    r1 = redis.command("GET", generation_key("r1"))
    first.signal(signal.SIGKILL)
    wait_for(lambda: not first.alive(), 10, what="SIGKILL")
    r2 = claim_as(redis, "r2", "mc-other")  # the GC moved r2 meanwhile

    fake_gc.clear()
    second = mc_procs(env={"MC_MAX_MEETINGS": "3"})
    wait_for(second.ready, 20, what="restarted MC ready")
    placeable = (pb.HEALTHY, pb.DEGRADED)  # DEGRADED: a busy test machine
    fake_gc.wait_for(lambda: [h for h in fake_gc.heartbeats("fast") if h.status == "OK"
                              and h.request.health in placeable], timeout=10)
    healthy = [h.request.capacity.current_meetings for h in fake_gc.heartbeats("fast")
               if h.request.health in placeable]
    assert healthy and set(healthy) == {2}, "healthy only once it hosts them again"
    assert second.metric("mc_meetings_current") == 2.0

    reclaimed = redis.command("GET", generation_key("r1"))
    assert int(reclaimed) > int(r1), "claimed afresh at the restart"
    r = assign_meeting(second.grpc_target, "r1", MH, E2E_GC_TOKEN)
    assert r.accepted
    assert redis.command("GET", generation_key("r1")) == reclaimed, "re-assignment keeps it"
    assert redis.hgetall(state_key("r2"))["mc_id"] == "mc-other"
    assert redis.command("GET", generation_key("r2")) == str(r2)
    assert index(redis, "mc-e2e-1") == ["r1", "r3"]
    assert "hosting 2 meetings again" in second.log()
