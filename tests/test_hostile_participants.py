"""The participant port against a hostile client, in a real ``twistd mc``
over real UDP: the client's QUIC connection is driven directly
(``mc.testing.hostile``) to put frames at chosen offsets, or several in one
datagram. Each attack costs the MC no more than its stated bounds and takes
nothing from anyone else: a legitimate participant joins and mutes
meanwhile, the counts stay right, a drain still reaches everyone."""

import asyncio
import signal
import time

import pytest

from mc.participants.engine import CONNECTION_WINDOW, STREAM_WINDOW
from mc.participants.webtransport import close_capsule
from mc.proto import signaling_pb2 as pb
from mc.testing import hostile
from mc.testing.daemon import wait_for
from mc.testing.participant import Participant, SyncParticipant, frame, join_request
from mc.testing.wtclient import WebTransportClient, connect
from tests.test_participants import UNAUTHORIZED, assignable, error_of, join

#: What one attacking connection may cost the MC (RSS): its receive window
#: of data held (gaps included), a signalling frame being assembled, and
#: aioquic's and Python's own state for a connection and a few streams.
PER_CONNECTION_BOUND = CONNECTION_WINDOW + 64 * 1024 + 256 * 1024


def metric(mc, name):
    return mc.metric(name)


def wait_metric(mc, name, value, timeout=10):
    wait_for(lambda: mc.metric(name) == value, timeout, what=f"{name} == {value}")


def mute_reaches(sender, *others):
    """``sender`` mutes; everyone, ``sender`` included, hears it; return the
    seconds it took to reach the last of them."""
    started = time.monotonic()
    sender.mute(audio=True)
    for p in (sender, *others):
        update = p.expect("participant_mute_update", timeout=5).participant_mute_update
        assert update.participant_id == sender.participant_id and update.audio_self_muted
    return time.monotonic() - started


async def window_attack(mc, finale, rounds=6):
    """At each window update, one byte at the last offset the signalling
    stream's window allows, as the attacker of issue 17 did; then the
    ``finale``: one byte past that window, or gaps as large on two streams
    the client never opened (past the connection's window). Returns the
    windows seen (per round) and whether the MC closed the connection."""
    client = await connect("127.0.0.1", mc.wt_port, connection_class=hostile.HostileConnection)
    session = await client.open_session(mc.wt_path)
    stream = session.open_stream()
    stream.send(b"\x00\x00")  # half a frame length: the MC waits for the rest
    await client.ping()
    sid = stream.stream_id
    seen = []
    for _ in range(rounds):
        w = hostile.window(client, sid)
        seen.append((w, hostile.connection_window(client)))
        hostile.send_frames(client, hostile.stream_frame(sid, w - 1, b"x"))
        await asyncio.wait_for(client.ping(), 5)
    if finale == "past the stream window":
        frames = [hostile.stream_frame(sid, hostile.window(client, sid), b"x")]
    else:
        fresh = client._quic.get_next_available_stream_id()
        frames = [hostile.stream_frame(fresh + 4 * i, STREAM_WINDOW - 1, b"x") for i in (0, 1)]
    hostile.send_frames(client, *frames)
    try:
        await asyncio.wait_for(client.wait_closed(), 5)
        closed = True
    except TimeoutError:
        closed = False
    return seen, closed


def test_the_window_attack_costs_a_bounded_window_and_closes_the_attacker(
        mc_procs, fake_gc, loop):
    mc = mc_procs()
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "h-1", "Ann")
    rss_before = mc.rss()
    attackers = 10

    finales = ("past the stream window", "a gap past the connection window")
    placed = fake_gc.join("h-1", "user-Bob")

    async def bob_meanwhile():
        """A participant joining and muting while the attacks run: how long
        its join and its mute's round trip took."""
        started = time.monotonic()
        bob = await Participant.join(mc.wt_url, "h-1", placed.token, "Bob")
        joined = time.monotonic()
        bob.mute()
        update = (await bob.expect("participant_mute_update")).participant_mute_update
        assert update.participant_id == bob.participant_id
        return bob, joined - started, time.monotonic() - joined

    async def attack_all():
        return await asyncio.gather(bob_meanwhile(), *(
            window_attack(mc, finales[i % 2]) for i in range(attackers)))

    (bob, join_took, mute_took), *results = loop.run(attack_all, timeout=60)
    rss_after = mc.rss()
    assert bob.joined is not None and join_took < 2.0 and mute_took < 1.0
    for seen, closed in results:
        assert closed, "data past the window is a flow-control violation"
        # A window is what was consumed (a few hundred bytes of real data
        # here) plus its fixed size; the gaps consumed nothing: it never grew.
        assert len(set(seen[1:])) == 1, seen
        assert max(w for w, _ in seen) <= STREAM_WINDOW + 1024
        assert max(c for _, c in seen) <= CONNECTION_WINDOW + 1024
    growth = rss_after - rss_before
    assert growth < attackers * PER_CONNECTION_BOUND, f"RSS grew {growth} bytes"
    assert ann.expect("participant_joined").participant_joined.participant.name == "Bob"
    assert ann.expect("participant_mute_update").participant_mute_update.audio_self_muted
    assert mc.alive()


# --- FIN, reset and STOP_SENDING in one datagram ----------------------------------

def _leave_by(variant, client, p):
    """The frames of one variant: how the client ends (or not) its session,
    then STOP_SENDING for its stream, all in one datagram."""
    sid, connect_id = p.stream.stream_id, p.session.connect_id
    at = hostile.sent_offset(client, sid)
    stop = hostile.stop_sending(sid)
    if variant == "fin":
        return [hostile.stream_frame(sid, at, fin=True), stop]
    if variant == "close capsule":
        capsule = hostile.h3_data(close_capsule())
        return [hostile.stream_frame(connect_id, hostile.sent_offset(client, connect_id),
                                     capsule, fin=True), stop]
    if variant == "data":
        mute = frame(pb.ClientMessage(mute_request=pb.MuteRequest(video_muted=True)))
        return [hostile.stream_frame(sid, at, mute), stop]
    if variant == "reset then fin":
        return [hostile.reset_stream(sid, at), hostile.stream_frame(sid, at, fin=True), stop]
    if variant == "stop connect":
        return [hostile.stop_sending(connect_id), hostile.stream_frame(sid, at, fin=True)]
    raise ValueError(variant)


#: variant -> what the others hear: a FIN or CLOSE in the datagram is a leave
#: on purpose (and our own close after the CONNECT stream was stopped raises
#: nothing); otherwise the stream that cannot be written loses the session,
#: which keeps its place for the grace, then TIMEOUT.
VARIANTS = {"fin": "VOLUNTARY", "close capsule": "VOLUNTARY", "data": "TIMEOUT",
            "reset then fin": "TIMEOUT", "stop connect": "VOLUNTARY"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stream_states_in_one_datagram_end_in_the_same_place(mc_procs, fake_gc, loop, variant):
    mc = mc_procs(env={"MC_DISCONNECT_GRACE_PERIOD_SECONDS": "1"})
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "h-2", "Ann")
    bob = join(loop, fake_gc, "h-2", "Bob")
    assert ann.expect("participant_joined").participant_joined.participant.name == "Bob"
    placed = fake_gc.join("h-2", "user-Mallory")

    async def mallory_joins():
        client = await connect("127.0.0.1", mc.wt_port,
                               connection_class=hostile.HostileConnection)
        session = await client.open_session(mc.wt_path)
        p = Participant(client, session, session.open_stream())
        p.send(join_request("h-2", placed.token, "Mallory"))
        assert (await p.next()).HasField("join_response")
        return p

    mallory = loop.run(mallory_joins)
    for p in (ann, bob):
        assert p.expect("participant_joined").participant_joined.participant.name == "Mallory"
    wait_metric(mc, "mc_participants_current", 3.0)
    loop.run(lambda: hostile.send_frames(mallory.client,
                                         *_leave_by(variant, mallory.client, mallory)))
    for p in (ann, bob):
        left = p.expect("participant_left", timeout=10).participant_left
        assert pb.LeaveReason.Name(left.reason) == VARIANTS[variant]
    wait_metric(mc, "mc_participants_current", 2.0)
    wait_metric(mc, "mc_webtransport_sessions_current", 2.0)
    assert mute_reaches(ann, bob) < 1.0
    mc.signal(signal.SIGUSR2)  # drain: everyone still here is redirected
    for p in (ann, bob):
        assert p.expect("redirect_to_mc", timeout=10).redirect_to_mc.reason == "draining"
    log = mc.log()
    assert "Traceback" not in log and "Cannot send data" not in log


# --- one token, one place -----------------------------------------------------------

def test_a_reused_meeting_token_holds_one_place(mc_procs, fake_gc, loop):
    mc = mc_procs()
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "h-3", "Ann")
    placed = fake_gc.join("h-3", "user-Leak")
    holders = [SyncParticipant.join(loop, placed.webtransport_endpoint, "h-3", placed.token,
                                    "Leak") for _ in range(5)]
    assert len({h.participant_id for h in holders}) == 1, "the same place each time"
    for h in holders[:-1]:
        h.wait_closed()  # replaced by the next
    wait_metric(mc, "mc_participants_current", 2.0)
    assert ann.expect("participant_joined").participant_joined.participant.name == "Leak"
    assert not [m for m in ann.messages if m.HasField("participant_left")]
    assert mute_reaches(holders[-1], ann) < 1.0


def test_a_retry_after_a_lost_join_response_gets_in(mc_procs, fake_gc, loop):
    mc = mc_procs()
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "h-4", "Ann")
    placed = fake_gc.join("h-4", "user-Bob")

    async def send_and_vanish():
        p = await Participant.open(mc.wt_url)
        p.send(join_request("h-4", placed.token, "Bob"))
        p.vanish()  # its JoinResponse is never read

    loop.run(send_and_vanish)
    wait_metric(mc, "mc_participants_current", 2.0)
    again = SyncParticipant.join(loop, mc.wt_url, "h-4", placed.token, "Bob")
    assert again.joined is not None
    assert mc.metric("mc_participants_current") == 2.0
    assert mute_reaches(again, ann) < 1.0


# --- limits -------------------------------------------------------------------------

def test_39_messages_in_one_second_close_the_session(mc_procs, fake_gc, loop):
    mc = mc_procs()
    assignable(fake_gc, mc)
    ann = join(loop, fake_gc, "h-5", "Ann")
    flood = join(loop, fake_gc, "h-5", "Flood")
    mute = frame(pb.ClientMessage(mute_request=pb.MuteRequest()))
    flood.send_raw(mute * 19)  # 20 with the JoinRequest: all allowed
    flood.send_raw(mute * 19)  # the 21st within the second is not
    flood.wait_closed(timeout=10)
    assert error_of(flood.p) == ("INVALID_REQUEST", "rate")
    left = ann.expect("participant_left").participant_left
    assert pb.LeaveReason.Name(left.reason) == "KICKED"
    wait_metric(mc, "mc_participants_current", 1.0)


@pytest.mark.parametrize("ahead, valid_for", [(60, 300), (0, 30 * 86400)],
                         ids=["nbf a minute ahead", "valid for 30 days"])
def test_nbf_and_the_token_lifetime_are_enforced(mc_procs, fake_gc, loop, ahead, valid_for):
    mc = mc_procs()
    assignable(fake_gc, mc)
    now = int(time.time())
    claims = {"iat": now, "exp": now + valid_for}
    if ahead:
        claims["nbf"] = now + ahead
    refused = join(loop, fake_gc, "h-6", "Early", **claims)
    assert refused.joined is None and error_of(refused.p) == UNAUTHORIZED
    assert mc.metric("mc_participants_current") == 0.0


# --- the late Retry -----------------------------------------------------------------

class HoldsRetries(WebTransportClient):
    """A client whose network delays the server's Retry until ``release``;
    ``made`` lists every one made."""

    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held = []
        self.released = False
        self.made.append(self)

    def datagram_received(self, data, addr):
        if not self.released and data[0] & 0xF0 == 0xF0:  # a long header: Retry (v1)
            self.held.append((data, addr))
            return
        super().datagram_received(data, addr)

    def release(self):
        self.released = True
        for data, addr in self.held:
            super().datagram_received(data, addr)


def test_a_retry_answered_after_the_load_fell_gets_in(mc_procs, fake_gc, loop):
    mc = mc_procs(env={"MC_MAX_PENDING_SESSIONS": "2"})
    assignable(fake_gc, mc)
    placed = fake_gc.join("h-7", "user-Ann")

    async def late_retry():
        ann = await Participant.open(mc.wt_url)  # pending: half the cap, retries from now on
        late = asyncio.get_running_loop().create_task(
            connect("127.0.0.1", mc.wt_port, protocol=HoldsRetries, timeout=10))
        while not HoldsRetries.made or not HoldsRetries.made[-1].held:
            await asyncio.sleep(0.01)  # the Retry arrives (the run's timeout bounds this)
        late_client = HoldsRetries.made[-1]
        ann.send(join_request("h-7", placed.token, "Ann"))
        assert (await ann.next()).HasField("join_response")  # the load fell below half
        late_client.release()
        client = await late
        return client._quic._retry_source_connection_id, await client.open_session(mc.wt_path)

    retry_source, session = loop.run(late_retry, timeout=20)
    assert retry_source is not None, "the client answered a Retry"
    assert session.status == 200, "and the MC honoured its token"
