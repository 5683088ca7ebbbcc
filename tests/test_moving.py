"""Participants survive, in real ``twistd mc`` processes: a lost connection
holds its place for the grace, a reconnect with the binding token takes it
back unseen, a drain moves everyone to another MC through the GC's join flow,
a meeting claimed elsewhere sends its people there, SIGTERM with people on
board ends in seconds, and a flood of idle handshakes from one address
locks nobody out."""

import contextlib
import signal
import time

import pytest

from mc.proto import signaling_pb2 as pb
from mc.testing.daemon import wait_for
from mc.testing.fakegc import assign_meeting
from mc.testing.participant import LoopThread, SyncParticipant
from mc.testing.wtclient import connect
from tests.conftest import E2E_GC_TOKEN
from tests.test_participants import assignable, error_of, join, participants_heartbeat

MH = [("mh-1", "https://mh-1.example:4433", "")]


@pytest.fixture
def loop():
    thread = LoopThread()
    yield thread
    thread.stop()


def rejoin(loop, fake_gc, meeting_id, name, previous, sub=None, **kw):
    """Join again with ``previous``'s correlation id and latest binding token."""
    placed = fake_gc.join(meeting_id, sub or f"user-{name}")
    r = previous.joined
    kw.setdefault("correlation_id", r.correlation_id)
    kw.setdefault("binding_token", r.binding_token)
    return SyncParticipant.join(loop, placed.webtransport_endpoint, meeting_id, placed.token,
                                name, **kw)


def join_flaky(loop, fake_gc, meeting_id, name):
    """A participant whose client asks for a 1 s QUIC idle timeout, so that
    the MC notices within a second when it vanishes."""
    placed = fake_gc.join(meeting_id, f"user-{name}")
    return SyncParticipant.join(loop, placed.webtransport_endpoint, meeting_id, placed.token,
                                name, idle_timeout=1.0)


def test_a_vanished_participant_holds_its_place_then_times_out(mc_procs, fake_gc, loop):
    mc = mc_procs(env={"MC_DISCONNECT_GRACE_PERIOD_SECONDS": "3"})
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "mv-1", "Ann")
    bob = join_flaky(loop, fake_gc, "mv-1", "Bob")
    ann.expect("participant_joined")
    vanished = time.monotonic()
    bob.vanish()
    wait_for(lambda: mc.metric("mc_webtransport_sessions_current") == 1.0, 10,
             what="the MC noticing the idle timeout")
    assert mc.metric("mc_participants_current") == 2.0  # still holding its place
    participants_heartbeat(fake_gc, 2)
    left = ann.expect("participant_left", timeout=10).participant_left
    assert (left.participant_id, left.reason) == (bob.participant_id, pb.TIMEOUT)
    assert time.monotonic() - vanished >= 3.0
    participants_heartbeat(fake_gc, 1)


def test_reconnect_within_the_grace_and_every_bad_one(mc_procs, fake_gc, loop):
    mc = mc_procs(env={"MC_DISCONNECT_GRACE_PERIOD_SECONDS": "4"})
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "mv-2", "Ann")
    bob = join_flaky(loop, fake_gc, "mv-2", "Bob")
    ann.expect("participant_joined")
    bob.vanish()

    mallory = rejoin(loop, fake_gc, "mv-2", "Mallory", bob)  # another user's meeting token
    assert mallory.joined is None and error_of(mallory)[0] == "UNAUTHORIZED"

    again = rejoin(loop, fake_gc, "mv-2", "Bob", bob)
    r = again.joined
    assert r is not None, again.kinds()
    assert (r.participant_id, r.user_id, r.correlation_id) == (
        bob.joined.participant_id, bob.joined.user_id, bob.joined.correlation_id)
    assert r.binding_token != bob.joined.binding_token
    assert [p.name for p in r.existing_participants] == ["Ann"]

    stale = rejoin(loop, fake_gc, "mv-2", "Bob", bob)  # the binding token used already
    assert stale.joined is None and error_of(stale)[0] == "UNAUTHORIZED"
    time.sleep(5)  # past the first grace: the reconnect ended it
    assert "participant_left" not in ann.kinds() and ann.kinds().count("participant_joined") == 1
    assert mc.metric("mc_participants_current") == 2.0
    assert mc.metric('mc_reconnects_total{outcome="accepted"}') == 1.0
    assert mc.metric('mc_reconnects_total{outcome="refused"}') == 2.0


def test_reconnect_after_the_grace_is_refused(mc_procs, fake_gc, loop):
    mc = mc_procs(env={"MC_DISCONNECT_GRACE_PERIOD_SECONDS": "1"})
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "mv-3", "Ann")
    bob = join_flaky(loop, fake_gc, "mv-3", "Bob")
    bob.vanish()
    assert ann.expect("participant_left", timeout=10).participant_left.reason == pb.TIMEOUT
    late = rejoin(loop, fake_gc, "mv-3", "Bob", bob)
    assert late.joined is None and error_of(late)[0] == "UNAUTHORIZED"
    assert mc.metric("mc_participants_current") == 1.0


def test_drain_moves_everyone_to_another_mc_without_ending_the_meeting(mc_procs, fake_gc, loop,
                                                                       redis):
    first = mc_procs(mc_id="mc-first")
    assignable(fake_gc, first)
    people = {name: join(loop, fake_gc, "mv-4", name) for name in ("Ann", "Bob")}
    second = mc_procs(mc_id="mc-second")
    assignable(fake_gc, second)

    first.signal(signal.SIGUSR2)
    for p in people.values():
        redirect = p.expect("redirect_to_mc", timeout=10).redirect_to_mc
        assert (redirect.new_mc_endpoint, redirect.meeting_id, redirect.reason) == (
            "", "mv-4", "draining")
        p.wait_closed()
    moved = {name: join(loop, fake_gc, "mv-4", name) for name in people}
    assert fake_gc.placement("mv-4") == "mc-second"
    assert all(p.joined is not None for p in moved.values())
    assert redis.command("HGET", "meeting:mv-4:state", "mc_id") == "mc-second"
    wait_for(lambda: first.metric("mc_meetings_current") == 0.0, 10,
             what="the first MC to drop the meeting")
    assert not [r for r in fake_gc.meeting_ends() if r.request.meeting_id == "mv-4"]
    assert first.metric("mc_participants_current") == 0.0
    assert second.metric("mc_participants_current") == 2.0

    first.signal(signal.SIGUSR2)  # undrain: joins are accepted again
    wait_for(lambda: first.http("/readyz")[0] == 200, 10, what="undrained")
    token = fake_gc.issuer.mint("mv-5", "user-Cy")
    assert assign_meeting(first.grpc_target, "mv-5", MH, E2E_GC_TOKEN).accepted
    cy = SyncParticipant.join(loop, first.wt_url, "mv-5", token, "Cy")
    assert cy.joined is not None


def test_a_meeting_claimed_elsewhere_sends_its_people_there(mc_procs, fake_gc, loop):
    first = mc_procs(mc_id="mc-first")
    assignable(fake_gc, first)
    ann = join(loop, fake_gc, "mv-6", "Ann")
    second = mc_procs(mc_id="mc-second")
    assignable(fake_gc, second)  # a GC assigns only to an MC whose heartbeat says it may
    assert assign_meeting(second.grpc_target, "mv-6", MH, E2E_GC_TOKEN).accepted
    redirect = ann.expect("redirect_to_mc", timeout=10).redirect_to_mc
    assert (redirect.meeting_id, redirect.reason) == ("mv-6", "moved")
    ann.wait_closed()
    wait_for(lambda: first.metric("mc_meetings_current") == 0.0, 10, what="meeting dropped")
    assert not [r for r in fake_gc.meeting_ends() if r.request.meeting_id == "mv-6"]


def test_sigterm_with_people_in_meetings_exits_in_seconds(mc_procs, fake_gc, loop):
    mc = mc_procs(env={"MC_SHUTDOWN_GRACE_SECONDS": "30"})
    assignable(fake_gc, mc)
    people = [join(loop, fake_gc, f"mv-7-{i % 2}", f"P{i}") for i in range(4)]
    started = time.monotonic()
    mc.signal(signal.SIGTERM)
    for p in people:
        assert p.expect("redirect_to_mc", timeout=10).redirect_to_mc.reason == "draining"
    assert mc.wait(15) == 0
    assert time.monotonic() - started < 10


def test_an_idle_flood_from_one_address_locks_nobody_out(mc_procs, fake_gc, loop):
    """40 connections from one address that complete their handshakes (a
    Retry answered past half the MC-wide cap) and never open a session: the
    per-address cap admits 20, the others are dropped; a participant from
    another address joins meanwhile within 15 s; the idle ones are closed
    about 10 s after their handshake; the MC's memory and heartbeats are
    untouched."""
    mc = mc_procs(env={"MC_MAX_PENDING_SESSIONS": "40",
                       "MC_MAX_PENDING_SESSIONS_PER_ADDRESS": "20"})
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "mv-8", "Ann")
    rss_before = mc.rss()
    heard = len(fake_gc.heartbeats("fast"))

    async def flood(n):
        """Connections that never open a session (the client keeps them
        alive with its own PINGs, idle timeout 60 s)."""
        opened = []
        for _ in range(n):
            with contextlib.suppress(TimeoutError, ConnectionError):
                opened.append(await connect("127.0.0.1", mc.wt_port, timeout=0.3,
                                            idle_timeout=60.0))
        return opened

    started = time.monotonic()
    idle = loop.run(flood, 40, timeout=120)
    assert len(idle) == 20
    placed = fake_gc.join("mv-8", "user-Bob")
    bob = SyncParticipant.join(loop, placed.webtransport_endpoint, "mv-8", placed.token, "Bob",
                               local_host="127.0.0.2")
    assert bob.joined is not None and time.monotonic() - started < 15
    assert ann.expect("participant_joined").participant_joined.participant.name == "Bob"

    async def all_closed():
        for client in idle:
            await client.wait_closed()

    loop.run(all_closed, timeout=20)
    assert time.monotonic() - started < 10 + 2 + 20 * 0.3 + 3, "closed ~10 s after handshake"
    ann.mute()
    assert ann.expect("participant_mute_update").participant_mute_update.audio_self_muted
    assert bob.expect("participant_mute_update").participant_mute_update.audio_self_muted
    assert mc.rss() - rss_before < 32 * 1024 * 1024
    fast = [h.monotonic for h in fake_gc.heartbeats("fast")[heard:]]
    gaps = [b - a for a, b in zip(fast, fast[1:], strict=False)]
    assert gaps and max(gaps) < 1.0 + 0.5  # the fake GC asks for one a second
