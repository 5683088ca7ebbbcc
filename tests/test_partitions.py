"""Ownership when the network and Redis misbehave, with real processes: two
``twistd mc``, one ``redis-server``, the tests' fault proxy between one MC
and Redis, the fake GC and real participants. Each ends with exactly one MC
accepting joins to the meeting."""

import time

import pytest

from mc.testing.daemon import wait_for
from mc.testing.fakegc import assign_meeting
from mc.testing.faultproxy import FaultProxy
from mc.testing.participant import LoopThread, SyncParticipant
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
