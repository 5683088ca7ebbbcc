"""Ownership on a real redis-server, with each MC's store, ownership and
assignment services on the real reactor: a lost meeting dropped whether its
message arrives or not, no Redis command per hosted meeting while idle, and a
Redis restarted without persistence between two MCs."""

import time

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from mc.assignment import AssignmentService
from mc.lease import Lease
from mc.meetings import MeetingRegistry
from mc.ops.health import Health
from mc.ops.metrics import Metrics
from mc.ownership import OwnershipService
from mc.redis.keys import generation_key, lost_key, marker_key, meetings_index_key, state_key
from mc.testing.doubles import ScriptedGcClient
from mc.testing.redisproc import RedisProcess
from tests.configs import make_config
from tests.helpers import wait_until

MH = (("mh-1", "https://mh-1.example:4433", ""),)


class Stack:
    """One MC's meetings side on ``store``, checking ownership every half
    ``interval`` seconds."""

    def __init__(self, mc_id, store, interval):
        self.mc_id = mc_id
        self.store = store
        config = make_config(environ={"MC_ID": mc_id}, max_meetings=100_000,
                             max_participants=10**9, participant_estimate=1)
        self.registry = MeetingRegistry(config.max_meetings, config.max_participants,
                                        config.participant_estimate, reactor)
        self.metrics = Metrics()
        self.ownership = OwnershipService(config, store, self.registry, ScriptedGcClient(),
                                          reactor, self.metrics, lambda: interval,
                                          Lease(reactor, lambda: 3600.0))
        self.service = AssignmentService(config, store, self.registry,
                                         Health(lambda: store.connected, 0.5), self.ownership,
                                         reactor, self.metrics)
        self.ownership.startService()
        self.service.startService()

    async def assign(self, meeting_id):
        assert await self.service.assign(meeting_id, MH, "gc-1") == (True, None), meeting_id

    def hosted(self):
        return self.service.hosted()

    async def stop(self):
        await self.service.stopService()
        await self.ownership.stopService()


@pytest_twisted.async_yield_fixture
async def make_stack(make_store):
    """``await make_stack(mc_id, interval, url=None, **store_kw)``."""
    stacks = []

    async def make(mc_id, interval, url=None, **store_kw):
        stack = Stack(mc_id, await make_store(url, **store_kw), interval)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        await stack.stop()


def subscribed(redis, mc_id):
    return redis.command("PUBSUB", "NUMSUB", lost_key(mc_id))[1] == 1


def command_calls(redis):
    """``{command: calls}`` from INFO commandstats."""
    calls = {}
    for line in redis.command("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, stats = line[len("cmdstat_"):].split(":", 1)
            calls[name] = int(stats.split("calls=")[1].split(",")[0])
    return calls


@pytest_twisted.ensureDeferred
async def test_a_lost_meeting_is_dropped_within_an_interval_message_or_not(redis, make_stack):
    interval = 1.0
    a = await make_stack("mc-a", interval)
    b = await make_stack("mc-b", interval)
    await wait_until(lambda: subscribed(redis, "mc-a"), timeout=5, what="the subscription")
    for m in ("m1", "m2", "m3"):
        await a.assign(m)

    claimed = time.monotonic()
    await b.assign("m1")
    await wait_until(lambda: "m1" not in a.hosted(), timeout=interval, what="m1 dropped")
    assert time.monotonic() - claimed < 0.25, "the message is heard at once"

    # The subscription cut: the claim's message reaches nobody.
    redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    await wait_until(lambda: not subscribed(redis, "mc-a"), timeout=2, what="the cut")
    claimed = time.monotonic()
    await b.assign("m2")
    await wait_until(lambda: "m2" not in a.hosted(), timeout=interval + 1, what="m2 dropped")
    assert time.monotonic() - claimed <= interval

    assert a.hosted() == {"m3"} and b.hosted() == {"m1", "m2"}
    assert a.metrics.fenced_out._value.get() == 2
    await wait_until(lambda: redis.command("HLEN", lost_key("mc-a")) == 0, timeout=5,
                     what="news acted on to be forgotten")
    assert sorted(redis.command("SMEMBERS", meetings_index_key("mc-a"))) == ["m3"]


@pytest_twisted.ensureDeferred
async def test_no_redis_command_per_hosted_meeting_while_idle(redis, make_stack):
    hosted, seconds, interval, probe = 3000, 2.0, 0.4, 0.1
    # A long reply timeout: 3000 claims on a busy test machine must not run late.
    a = await make_stack("mc-a", interval, probe_every=lambda: probe, reply_timeout=30)
    await a.ownership.check()  # the marker set (the start-up recovery does it in the MC)
    await defer.gatherResults([defer.ensureDeferred(a.assign(f"idle-{i}"))
                               for i in range(hosted)])
    await deferLater(reactor, 0.3, lambda: None)  # the accepts' echoes settle
    before = command_calls(redis)
    await deferLater(reactor, seconds, lambda: None)
    after = command_calls(redis)
    delta = {c: n - before.get(c, 0) for c, n in after.items() if n != before.get(c, 0)}
    delta["info"] -= 1  # the first INFO above
    delta = {c: n for c, n in delta.items() if n}
    # One ownership check per half interval (an EVALSHA raising the marker,
    # refreshing the MC's own keys' TTL, reading the news, Redis's clock and
    # the online replicas), one PING per probe; whatever the MC hosts.
    checks = seconds / (interval / 2) + 2
    assert delta.get("evalsha", 0) <= checks, delta
    for command, per_check in (("get", 1), ("set", 1), ("expire", 2), ("hgetall", 1),
                               ("time", 1), ("info", 1)):
        assert delta.get(command, 0) <= per_check * checks, (command, delta)
    assert delta.get("ping", 0) <= seconds / probe + 2, delta
    assert set(delta) <= {"evalsha", "get", "set", "expire", "hgetall", "time", "info",
                          "ping"}, delta
    assert len(a.hosted()) == hosted


@pytest_twisted.ensureDeferred
async def test_redis_restarted_without_its_data_between_two_mcs(make_stack):
    server = RedisProcess().start()  # no persistence
    try:
        a = await make_stack("mc-a", 1.0, server.url)
        b = await make_stack("mc-b", 1.0, server.url)
        for m in ("m1", "m2", "m3"):
            await a.assign(m)
        await wait_until(lambda: server.command("EXISTS", marker_key("mc-a")), timeout=5,
                         what="the marker")

        server.stop()
        await wait_until(lambda: not (a.store.connected or b.store.connected), timeout=5,
                         what="both to see Redis go")
        server.start()
        assert server.command("DBSIZE") == 0
        # The GC placed m2 on B meanwhile: its claim's generation is seeded
        # from Redis's clock, above A's even though Redis forgot A's.
        await wait_until(lambda: b.store.connected, timeout=10, what="B back")
        await b.assign("m2")

        await wait_until(lambda: server.command("EXISTS", marker_key("mc-a")), timeout=10,
                         what="A to notice and write back")
        await wait_until(lambda: a.hosted() == {"m1", "m3"}, timeout=5, what="A drops m2")
        for m in ("m1", "m3"):
            assert server.hgetall(state_key(m))["mc_id"] == "mc-a"
            assert server.command("GET", generation_key(m)) == str(a.registry.get(m).generation)
        assert server.hgetall(state_key("m2"))["mc_id"] == "mc-b"
        assert sorted(server.command("SMEMBERS", meetings_index_key("mc-a"))) == ["m1", "m3"]
        assert server.command("SMEMBERS", meetings_index_key("mc-b")) == ["m2"]
        assert b.hosted() == {"m2"}
        assert a.metrics.fenced_out._value.get() == 1
    finally:
        server.cleanup()
