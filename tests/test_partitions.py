"""Ownership when the network and Redis misbehave, with real processes: two
``twistd mc``, one ``redis-server``, the tests' fault proxy between one MC
and Redis, the fake GC and real participants: a partition and its healing, a
lost claim reply, an evicted generation key, a rollback to an older
snapshot, a join during an idle end. Each ends with exactly one MC accepting
joins to the meeting (none once it ended)."""

import time

import pytest

from mc.redis import scripts
from mc.testing.daemon import wait_for
from mc.testing.fakegc import assign_meeting
from mc.testing.faultproxy import FaultProxy
from mc.testing.participant import LoopThread, SyncParticipant
from mc.testing.redisproc import RedisProcess
from tests.conftest import E2E_GC_TOKEN
from tests.test_participants import assignable, error_of, join

MH = [("mh-1", "https://mh-1.example:4433", "")]

#: The lease of the MC behind the proxy; the fake GC's fast interval is 1 s.
LEASE = 1.5


@pytest.fixture
def loop():
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def proxy(redis):
    p = FaultProxy(("127.0.0.1", redis.port))
    yield p
    p.close()


def answer(loop, mc, fake_gc, meeting_id, name):
    """How ``mc`` answers a join of ``meeting_id`` sent to it directly:
    ``"joined"``, ``"redirect:<reason>"`` or the error code."""
    token = fake_gc.issuer.mint(meeting_id, f"user-{name}")
    p = SyncParticipant.join(loop, mc.wt_url, meeting_id, token, name)
    if p.joined is not None:
        return "joined"
    redirects = [m for m in p.messages if m.HasField("redirect_to_mc")]
    if redirects:
        return f"redirect:{redirects[0].redirect_to_mc.reason}"
    return error_of(p)[0]


def hosts(loop, mcs, fake_gc, meeting_id):
    """The ids of the MCs that admit a join of ``meeting_id``."""
    return [mc.mc_id for mc in mcs if answer(loop, mc, fake_gc, meeting_id, "Probe") == "joined"]


def test_a_partitioned_mc_stops_serving_within_its_lease_and_serves_again_when_healed(
        mc_procs, fake_gc, loop, proxy):
    a = mc_procs(mc_id="mc-a", redis_url=proxy.url(),
                 env={"MC_OWNERSHIP_LEASE_SECONDS": str(LEASE)})
    assignable(fake_gc, a)
    ann = join(loop, fake_gc, "pt-1", "Ann")
    assert fake_gc.placement("pt-1") == "mc-a"
    b = mc_procs(mc_id="mc-b")
    assignable(fake_gc, b)
    bea = join(loop, fake_gc, "pt-2", "Bea")  # placed on the least loaded: B
    assert fake_gc.placement("pt-2") == "mc-b"

    proxy.blackhole()  # A reaches the GC and its people, not Redis
    cut = time.monotonic()
    redirect = ann.expect("redirect_to_mc", timeout=LEASE + 5).redirect_to_mc
    assert (redirect.new_mc_endpoint, redirect.meeting_id, redirect.reason) == (
        "", "pt-1", "moved")
    assert time.monotonic() - cut <= LEASE + 1.0, "within the stated bound"
    assert answer(loop, a, fake_gc, "pt-1", "Cy") == "redirect:moved", "joins refused"
    again = join(loop, fake_gc, "pt-1", "Ann")  # the GC places it afresh: on B
    assert again.joined is not None and fake_gc.placement("pt-1") == "mc-b"
    assert hosts(loop, [a, b], fake_gc, "pt-1") == ["mc-b"]
    assert "redirect_to_mc" not in bea.kinds(), "nobody else is redirected"

    proxy.set_pass()
    healed = time.monotonic()
    wait_for(a.ready, 10, what="A ready again")
    assert time.monotonic() - healed <= 6.0
    wait_for(lambda: a.metric("mc_meetings_current") == 0.0, 5,
             what="A dropping the meeting B claimed (its write-back is fenced)")
    assert hosts(loop, [a, b], fake_gc, "pt-1") == ["mc-b"]
    assert "redirect_to_mc" not in again.kinds() + bea.kinds()
    assert assign_meeting(a.grpc_target, "pt-3", MH, E2E_GC_TOKEN).accepted, "A serves again"


def evalsha_of(script):
    """A fault-proxy predicate: the command runs ``script``."""
    sha = script.sha.encode()
    return lambda args: args[0].upper() == b"EVALSHA" and args[1] == sha


def test_a_lost_claim_reply_is_read_back_and_the_meeting_has_one_host(
        mc_procs, fake_gc, loop, proxy, redis):
    b = mc_procs(mc_id="mc-b")
    assignable(fake_gc, b)
    bea = join(loop, fake_gc, "lc-1", "Bea")
    assert fake_gc.placement("lc-1") == "mc-b"
    a = mc_procs(mc_id="mc-a", redis_url=proxy.url(), env={"MC_REDIS_TIMEOUT_SECONDS": "1"})
    wait_for(a.ready, 20, what="A ready")

    # The GC moves the meeting to A; A's claim runs in Redis, its reply is lost.
    proxy.drop_replies(evalsha_of(scripts.CLAIM_AND_WRITE))
    started = time.monotonic()
    assert assign_meeting(a.grpc_target, "lc-1", MH, E2E_GC_TOKEN).accepted, "read back: ours"
    assert proxy.dropped == 1
    assert time.monotonic() - started < 10.0, "within the GC's call deadline"
    assert redis.hgetall("meeting:lc-1:state")["mc_id"] == "mc-a"
    assert bea.expect("redirect_to_mc", timeout=10).redirect_to_mc.reason == "moved"
    wait_for(lambda: b.metric("mc_meetings_current") == 0.0, 10, what="B dropping it")
    assert hosts(loop, [a, b], fake_gc, "lc-1") == ["mc-a"]


def test_an_evicted_generation_key_does_not_repeat_a_generation(mc_procs, fake_gc, loop, redis):
    a = mc_procs(mc_id="mc-a")
    assignable(fake_gc, a)
    ann = join(loop, fake_gc, "ev-1", "Ann")
    b = mc_procs(mc_id="mc-b")
    wait_for(b.ready, 20, what="B ready")
    redis.command("DEL", "meeting:ev-1:generation")  # evicted (or deleted) while A hosts it
    assert assign_meeting(b.grpc_target, "ev-1", MH, E2E_GC_TOKEN).accepted
    assert ann.expect("redirect_to_mc", timeout=10).redirect_to_mc.reason == "moved"
    assert hosts(loop, [a, b], fake_gc, "ev-1") == ["mc-b"]


def test_a_rollback_to_an_older_snapshot_ends_with_one_host(mc_procs, fake_gc, loop, tmp_path):
    server = RedisProcess(dir=str(tmp_path)).start()  # RDB by hand (SAVE), no AOF
    try:
        a = mc_procs(mc_id="mc-a", redis_url=server.url)
        b = mc_procs(mc_id="mc-b", redis_url=server.url)
        for mc in (a, b):
            wait_for(mc.ready, 20, what=f"{mc.mc_id} ready")
        assert assign_meeting(a.grpc_target, "rb-1", MH, E2E_GC_TOKEN).accepted
        server.command("SAVE")  # the snapshot names A
        assert assign_meeting(b.grpc_target, "rb-1", MH, E2E_GC_TOKEN).accepted
        wait_for(lambda: a.metric("mc_meetings_current") == 0.0, 10, what="A dropping it")
        bea = SyncParticipant.join(loop, b.wt_url, "rb-1",
                                   fake_gc.issuer.mint("rb-1", "user-Bea"), "Bea")
        assert bea.joined is not None

        server.kill()  # Redis restarts from the older snapshot: B's claim is gone
        server.start()
        assert server.hgetall("meeting:rb-1:state")["mc_id"] == "mc-a"
        # The GC places the meeting afresh, on A: its claim must not repeat B's
        # generation, and B, whose writes Redis lost, must notice and yield.
        wait_for(a.ready, 20, what="A ready again")
        assert assign_meeting(a.grpc_target, "rb-1", MH, E2E_GC_TOKEN).accepted
        assert bea.expect("redirect_to_mc", timeout=10).redirect_to_mc.reason == "moved"
        wait_for(lambda: b.metric("mc_meetings_current") == 0.0, 10, what="B yielding")
        assert hosts(loop, [a, b], fake_gc, "rb-1") == ["mc-a"]
    finally:
        server.cleanup()


def test_a_join_during_the_idle_end_is_redirected_and_the_end_is_clean(
        mc_procs, fake_gc, loop, proxy):
    a = mc_procs(mc_id="mc-a", redis_url=proxy.url(), env={"MC_MEETING_IDLE_SECONDS": "1"})
    wait_for(a.ready, 20, what="A ready")
    proxy.hold_replies(evalsha_of(scripts.DELETE))  # the end's delete stays in flight
    assert assign_meeting(a.grpc_target, "ie-1", MH, E2E_GC_TOKEN).accepted
    wait_for(lambda: proxy.held == 1, 10, interval=0.01, what="the end's delete in flight")
    try:
        assert answer(loop, a, fake_gc, "ie-1", "Late") == "redirect:moved", "not admitted"
    finally:
        proxy.release()
    fake_gc.wait_for(lambda: [r for r in fake_gc.meeting_ends()
                              if r.request.meeting_id == "ie-1"], timeout=10)
    assert a.metric("mc_meetings_current") == 0.0
    assert hosts(loop, [a], fake_gc, "ie-1") == [], "ended: nobody hosts it"
