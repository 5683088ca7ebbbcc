"""A model-based test of the Lua scripts against a real redis-server
(hypothesis stateful testing): three MCs claim, write, end and re-read random
meetings while Redis restarts without its data, rolls back to an earlier
snapshot of its key space, or loses a generation key (eviction). Each MC acts
on the scripts' answers as the MC does (mc/ownership.py): a fenced write or
news of a claim at or above its generation drops the meeting, a marker found
below what was acknowledged means writing back everything, fenced.

Checked at every claim: a generation never repeats, and is above every one
the meeting had (so "highest wins" is enough). Checked once every MC has read
its news: no meeting is hosted by two MCs, and Redis names every host at the
generation it hosts.
"""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from mc.redis import scripts
from mc.redis.claims import Claim, claim_call, new_claim_id
from mc.redis.keys import generation_key, lost_key, marker_key, meetings_index_key, state_key
from mc.redis.marker import Marker
from mc.redis.store import KEY_TTL, claim_and_write_call, reassert_call, write_state_call

ASSIGNMENT = {"primary_mh_id": "mh-1", "primary_endpoint": "https://mh-1.example:4433",
              "backup_mh_id": None, "backup_endpoint": None, "assigned_at": 1700000000}
MCS = ("mc-a", "mc-b", "mc-c")
MEETINGS = ("m0", "m1", "m2")


class Ticks:
    """A clock for the markers: every value above the last."""

    def __init__(self):
        self.now = 1.0

    def seconds(self):
        self.now += 0.001
        return self.now


class Mc:
    def __init__(self, mc_id, clock):
        self.mc_id = mc_id
        self.hosted = {}  # meeting id -> generation
        self.marker = Marker(clock)


def pairs(reply):
    flat = reply[1]
    return list(zip(flat[::2], flat[1::2], strict=True))


@pytest.fixture
def model_redis(redis):
    return redis


def machine_for(redis):
    class Ownership(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            redis.command("FLUSHALL")
            clock = Ticks()
            self.mcs = {m: Mc(m, clock) for m in MCS}
            self.handed_out = {m: set() for m in MEETINGS}
            self.snapshot = None

        def eval(self, script, keys, args):
            return redis.command("EVAL", script.source, len(keys), *keys, *args)

        # --- what MCs do -------------------------------------------------

        @rule(mc=st.sampled_from(MCS), meeting=st.sampled_from(MEETINGS))
        def claim(self, mc, meeting):
            m = self.mcs[mc]
            keys, values = claim_and_write_call(meeting, mc, ASSIGNMENT, {}, new_claim_id())
            marker = m.marker.next()
            keys, args = claim_call(mc, [Claim(meeting, keys, values)], 0, marker, KEY_TTL)
            [(status, value)] = pairs(self.eval(scripts.CLAIM_AND_WRITE, keys, args))
            assert status == scripts.OK, status
            generation = int(value)
            seen = self.handed_out[meeting]
            assert generation not in seen, "a generation repeated"
            assert not seen or generation > max(seen), "below one handed out before"
            seen.add(generation)
            m.marker.acked(marker)
            m.hosted[meeting] = generation

        @rule(mc=st.sampled_from(MCS), meeting=st.sampled_from(MEETINGS))
        def write_state(self, mc, meeting):
            m = self.mcs[mc]
            if meeting not in m.hosted:
                return
            keys, args = write_state_call(meeting, m.hosted[meeting], mc, {"n": 1})
            [(status, _)] = pairs(self.eval(scripts.WRITE_STATE, keys, args))
            if status != scripts.OK:
                del m.hosted[meeting]

        @rule(mc=st.sampled_from(MCS), meeting=st.sampled_from(MEETINGS))
        def end(self, mc, meeting):
            m = self.mcs[mc]
            if meeting not in m.hosted:
                return
            self.eval(scripts.DELETE,
                      [generation_key(meeting), f"meeting:{meeting}:mh", state_key(meeting)],
                      [m.hosted.pop(meeting), mc, meeting, KEY_TTL])

        @rule(mc=st.sampled_from(MCS))
        def read_news(self, mc):
            self._read(self.mcs[mc])

        def _read(self, m):
            marker = m.marker.next()
            floor = m.marker.acknowledged
            reply = self.eval(scripts.NEWS, [lost_key(m.mc_id), marker_key(m.mc_id),
                                             meetings_index_key(m.mc_id)], [marker, KEY_TTL])
            intact = m.marker.intact(reply[1], floor)
            m.marker.acked(marker)
            flat = reply[2]
            lost = list(zip(flat[::2], flat[1::2], strict=True))
            for meeting, generation in lost:
                if meeting in m.hosted and m.hosted[meeting] <= int(generation):
                    del m.hosted[meeting]
            if not intact:
                for meeting, generation in list(m.hosted.items()):
                    keys, args = reassert_call(meeting, generation, m.mc_id, ASSIGNMENT, {})
                    [(status, _)] = pairs(self.eval(scripts.REASSERT, keys, [*args]))
                    if status != scripts.OK:
                        del m.hosted[meeting]
            if lost:
                self.eval(scripts.FORGET_NEWS, [lost_key(m.mc_id)],
                          [a for pair in lost for a in pair])

        # --- what Redis does ---------------------------------------------

        @rule()
        def restart_without_data(self):
            redis.command("FLUSHALL")
            redis.command("SCRIPT", "FLUSH")

        @rule()
        def take_snapshot(self):
            self.snapshot = snapshot(redis)

        @rule()
        def roll_back(self):
            """Back to the last snapshot: a restart from an RDB file, or a
            failover to a replica that missed the writes since."""
            if self.snapshot is not None:
                restore(redis, self.snapshot)

        @rule(meeting=st.sampled_from(MEETINGS))
        def evict_generation(self, meeting):
            redis.command("DEL", generation_key(meeting))

        # --- what must hold ----------------------------------------------

        @invariant()
        def once_everyone_read_their_news_one_host_per_meeting(self):
            for _ in range(2):  # a write-back can fence another's: a second round settles
                for m in self.mcs.values():
                    self._read(m)
            for meeting in MEETINGS:
                hosts = [m for m in self.mcs.values() if meeting in m.hosted]
                assert len(hosts) <= 1, (meeting, [(h.mc_id, h.hosted[meeting]) for h in hosts])
                if hosts:
                    state = redis.hgetall(state_key(meeting))
                    assert state.get("mc_id") == hosts[0].mc_id, (meeting, state)
                    assert state.get("generation") == str(hosts[0].hosted[meeting])

    return Ownership


def snapshot(redis):
    """Every key (strings, hashes and sets are all the scripts write) with its
    value and TTL."""
    out = {}
    for key in redis.command("KEYS", "*"):
        kind = redis.command("TYPE", key)
        if kind == "string":
            value = redis.command("GET", key)
        elif kind == "hash":
            value = redis.command("HGETALL", key)
        else:
            value = redis.command("SMEMBERS", key)
        out[key] = (kind, value, redis.command("PTTL", key))
    return out


def restore(redis, keys):
    redis.command("FLUSHALL")
    for key, (kind, value, ttl) in keys.items():
        if kind == "string":
            redis.command("SET", key, value)
        elif kind == "hash":
            redis.command("HSET", key, *value)
        else:
            redis.command("SADD", key, *value)
        if ttl > 0:
            redis.command("PEXPIRE", key, ttl)


def test_no_two_mcs_host_one_meeting_and_generations_never_repeat(model_redis):
    machine = machine_for(model_redis)
    machine.TestCase.settings = settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    machine.TestCase().runTest()
