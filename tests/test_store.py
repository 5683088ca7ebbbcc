"""RedisFencedStore against a real redis-server."""

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from mc.config import parse_redis_url
from mc.errors import CorruptGeneration, FencedOut, StoreError, StoreUnavailable
from mc.interfaces import IFencedStore
from mc.redis import scripts
from mc.redis.batch import MAX_BATCH
from mc.redis.keys import generation_key, marker_key, meetings_index_key, mh_key, state_key
from mc.redis.store import KEY_TTL, RedisFencedStore
from mc.testing.redisproc import RedisProcess
from tests.helpers import wait_until

M = "meeting-1"
ASSIGNMENT = {
    "primary_mh_id": "mh-a",
    "primary_endpoint": "https://mh-a.example:4433",
    "backup_mh_id": None,
    "backup_endpoint": None,
    "assigned_at": 1700000000,
}
OTHER = dict(ASSIGNMENT, primary_mh_id="mh-b", backup_mh_id="mh-c",
             backup_endpoint="https://mh-c.example:4433")


def snapshot(redis):
    """Every key with its type and value, to prove that nothing changed."""
    out = {}
    for key in redis.command("KEYS", "*"):
        kind = redis.command("TYPE", key)
        if kind == "set":
            out[key] = sorted(redis.command("SMEMBERS", key))
        else:
            out[key] = redis.hgetall(key) if kind == "hash" else redis.command("GET", key)
    return out


def fields(redis, meeting_id=M):
    """The state hash without the claim's own bookkeeping (its time and id)."""
    state = redis.hgetall(state_key(meeting_id))
    return {k: v for k, v in state.items() if k not in ("claimed_at", "claim_id")}


def claim(store, meeting_id=M, mc_id="mc-1", state=None):
    return store.claim_and_write(meeting_id, mc_id, ASSIGNMENT, state or {})


async def failure_of(d, *errors):
    with pytest.raises(errors) as info:
        await d
    return info.value


@pytest_twisted.ensureDeferred
async def test_interface_and_scripts(redis, make_store):
    store = await make_store()
    verifyObject(IFencedStore, store)
    for script in scripts.ALL:
        assert redis.command("SCRIPT", "LOAD", script.source) == script.sha
    assert await store.ping() == "PONG"


@pytest_twisted.ensureDeferred
async def test_first_write_on_unknown_meeting_sets_the_generation(redis, make_store):
    store = await make_store()
    assert await store.read_generation(M) is None
    assert await store.read_assignment(M) is None
    assert await store.write_assignment(M, 3, "mc-1", ASSIGNMENT) == 3
    assert redis.command("GET", generation_key(M)) == "3"
    assert await claim(store) > 3, "later claims continue above the writer's generation"


@pytest_twisted.ensureDeferred
async def test_retry_with_the_same_generation(redis, make_store):
    store = await make_store()
    assert await store.write_assignment(M, 1, "mc-1", ASSIGNMENT) == 1
    assert await store.write_assignment(M, 1, "mc-1", OTHER) == 1
    assert await store.write_state(M, 1, "mc-1", {"participants": 2}) == 1
    assert await store.write_state(M, 1, "mc-1", {"participants": 3}) == 1
    assert await store.read_assignment(M) == OTHER
    assert redis.hgetall(state_key(M)) == {"participants": "3", "generation": "1",
                                           "mc_id": "mc-1"}, "the first write names the owner"
    assert await store.read_generation(M) == 1


@pytest_twisted.ensureDeferred
async def test_newer_generation_wins_and_stale_changes_nothing(redis, make_store):
    store = await make_store()
    old = await store.claim_and_write(M, "mc-old", ASSIGNMENT, {"n": 1})
    new = await store.claim_and_write(M, "mc-new", OTHER, {"n": 2})
    assert new > old
    before = snapshot(redis)

    for op in (
        store.write_assignment(M, old, "mc-old", ASSIGNMENT),
        store.write_state(M, old, "mc-old", {"n": 9}),
        store.delete(M, old, "mc-old"),
        store.reassert(M, old, "mc-old", ASSIGNMENT, {"n": 9}),
    ):
        err = await failure_of(op, FencedOut)
        assert (err.meeting_id, err.generation, err.stored_generation) == (M, old, new)
    assert snapshot(redis) == before

    assert await store.write_state(M, new, "mc-new", {"n": 3}) == new
    assert fields(redis) == {"mc_id": "mc-new", "n": "3", "generation": str(new)}


@pytest_twisted.ensureDeferred
async def test_a_write_is_fenced_by_owner_as_well_as_generation(redis, make_store):
    store = await make_store()
    b = await store.claim_and_write(M, "mc-b", ASSIGNMENT, {})
    before = snapshot(redis)
    # A higher generation of another MC (one it held before Redis lost its
    # data) does not overwrite the owner the state hash names.
    for op in (
        store.write_assignment(M, b + 5, "mc-a", OTHER),
        store.write_state(M, b + 5, "mc-a", {"n": 9}),
        store.delete(M, b + 5, "mc-a"),
        store.reassert(M, b + 5, "mc-a", OTHER, {}),
    ):
        err = await failure_of(op, FencedOut)
        assert (err.generation, err.stored_generation) == (b + 5, b)
    assert snapshot(redis) == before


@pytest_twisted.ensureDeferred
async def test_reassert_writes_back_keys_and_index_in_one_step(redis, make_store):
    store = await make_store()
    g = await store.claim_and_write(M, "mc-a", ASSIGNMENT, {"n": 1})
    assert await store.reassert(M, g, "mc-a", OTHER, {"n": 2}) == g
    assert await store.read_assignment(M) == OTHER
    assert fields(redis) == {"mc_id": "mc-a", "n": "2", "generation": str(g)}
    redis.command("FLUSHALL")  # Redis lost its data
    assert await store.reassert(M, g, "mc-a", OTHER, {"n": 3}) == g
    assert snapshot(redis) == {
        generation_key(M): str(g), mh_key(M): redis.command("GET", mh_key(M)),
        state_key(M): {"mc_id": "mc-a", "n": "3", "generation": str(g)},
        meetings_index_key("mc-a"): [M]}


@pytest_twisted.ensureDeferred
async def test_a_claim_from_another_mc_is_news_for_the_loser(redis, make_store):
    store = await make_store()
    heard = []
    store.listen("mc-a", lambda: heard.append(1))
    await wait_until(lambda: heard, timeout=5, what="the subscription")
    assert await store.news("mc-a") == (False, []), "no marker yet"
    for m in ("m1", "m2"):
        await claim(store, m, "mc-a")
    await claim(store, "m1", "mc-a")  # ours again: no news
    assert await store.news("mc-a") == (True, [])
    b1 = await claim(store, "m1", "mc-b")
    b2 = await claim(store, "m2", "mc-b")
    await wait_until(lambda: len(heard) == 3, timeout=5, what="two messages")
    intact, lost = await store.news("mc-a")
    assert intact and sorted(lost) == [("m1", b1), ("m2", b2)], "the winning generations"
    # After the read: mc-a takes m2 back (news for mc-b), mc-c takes it from mc-a.
    a2 = await claim(store, "m2", "mc-a")
    c2 = await claim(store, "m2", "mc-c")
    assert await store.forget_news("mc-a", lost) == 1
    assert await store.news("mc-a") == (True, [("m2", c2)]), "the newer news stays"
    assert await store.news("mc-b") == (True, [("m2", a2)]), "its claims raised its marker"


@pytest_twisted.ensureDeferred
async def test_fenced_delete_keeps_the_generation(redis, make_store):
    store = await make_store()
    await claim(store)
    generation = await claim(store)
    await failure_of(store.delete(M, generation - 1, "mc-1"), FencedOut)
    assert redis.command("EXISTS", mh_key(M), state_key(M)) == 2

    assert await store.delete(M, generation, "mc-1") == generation
    after = snapshot(redis)
    assert after.pop(marker_key("mc-1")).isdigit()
    assert after == {
        generation_key(M): str(generation),
        state_key(M): {"mc_id": "mc-1", "generation": str(generation), "ended": "1"},
    }, "unindexed too; a tombstone names the last owner"
    assert 0 < redis.command("TTL", state_key(M)) <= KEY_TTL
    assert 0 < redis.command("TTL", generation_key(M)) <= KEY_TTL
    assert await store.read_assignment(M) is None
    later = await claim(store, mc_id="mc-2")
    assert later > generation, "generations never go backwards"
    assert redis.command("TTL", state_key(M)) == redis.command("TTL", generation_key(M)) == -1
    assert await store.news("mc-1") == (True, [(M, later)]), "the tombstone's owner is told"


@pytest_twisted.ensureDeferred
async def test_claim_and_write_writes_exactly_the_contract_layout(redis, make_store):
    store = await make_store()
    redis.command("HSET", state_key(M), "left_over", "x", "generation", "7")
    redis.command("SET", generation_key(M), "7")

    g = await store.claim_and_write(M, "mc-1", ASSIGNMENT, {"region": "eu", "n": 0})
    assert g > 7 and g >= (time.time() - 60) * 1e6, "seeded from Redis's clock (us)"
    assert sorted(redis.command("KEYS", "*")) == sorted(
        ["meeting:meeting-1:generation", "meeting:meeting-1:mh", "meeting:meeting-1:state",
         "mc:mc-1:meetings", "mc:mc-1:marker"]
    ), "the contract's keys plus the MC's own recovery index and marker"
    assert redis.command("GET", "meeting:meeting-1:generation") == str(g)
    assert redis.command("GET", "meeting:meeting-1:mh") == (
        '{"primary_mh_id":"mh-a","primary_endpoint":"https://mh-a.example:4433",'
        '"backup_mh_id":null,"backup_endpoint":null,"assigned_at":1700000000}'
    )
    state = redis.hgetall("meeting:meeting-1:state")
    assert {k: state[k] for k in ("mc_id", "region", "n", "generation")} == {
        "mc_id": "mc-1", "region": "eu", "n": "0", "generation": str(g),
    } and set(state) == {"mc_id", "region", "n", "generation", "claimed_at", "claim_id"}, \
        "a new owner's state replaces the previous owner's"
    assert await store.read_assignment(M) == ASSIGNMENT


@pytest_twisted.ensureDeferred
async def test_bad_arguments_are_refused_before_redis(make_store):
    store = await make_store()
    with pytest.raises(ValueError):
        store.write_assignment(M, 1, "mc-1", dict(ASSIGNMENT, extra=1))
    with pytest.raises(ValueError):
        store.write_state(M, 0, "mc-1", {})
    with pytest.raises(ValueError):
        store.write_state(M, 1, "mc-1", {"generation": 5})
    with pytest.raises(ValueError):
        store.claim_and_write(M, "mc-1", ASSIGNMENT, {"mc_id": "other"})
    with pytest.raises(TypeError):
        store.write_state(M, 1, "mc-1", {"flag": True})


@pytest_twisted.ensureDeferred
async def test_noscript_recovery(redis, make_store):
    store = await make_store()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        first = await claim(store)
        redis.command("SCRIPT", "FLUSH")
        assert await store.write_state(M, first, "mc-1", {"n": 1}) == first
        redis.command("SCRIPT", "FLUSH")
        assert await claim(store) > first
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sum("loading it again" in formatEvent(e) for e in events) == 2


@pytest.mark.parametrize("stored", ["abc", "1.5", "-3", "007", "", " 1", "9" * 16, "9" * 17,
                                    str(2**53)])
@pytest_twisted.ensureDeferred
async def test_non_integer_generation_is_corrupt_and_left_alone(redis, make_store, stored):
    store = await make_store()
    redis.command("SET", generation_key(M), stored)
    before = snapshot(redis)
    for op in (
        store.claim_and_write(M, "mc-1", ASSIGNMENT, {}),
        store.write_assignment(M, 1, "mc-1", ASSIGNMENT),
        store.write_state(M, 1, "mc-1", {"n": 1}),
        store.delete(M, 1, "mc-1"),
        store.read_generation(M),
    ):
        err = await failure_of(op, CorruptGeneration)
        assert err.meeting_id == M
    assert snapshot(redis) == before


@pytest_twisted.ensureDeferred
async def test_generation_key_of_the_wrong_type_is_corrupt(redis, make_store):
    store = await make_store()
    redis.command("HSET", generation_key(M), "a", "b")
    await failure_of(claim(store), CorruptGeneration)
    await failure_of(store.write_state(M, 1, "mc-1", {}), CorruptGeneration)
    await failure_of(store.read_generation(M), StoreError)


@pytest_twisted.ensureDeferred
async def test_not_started_store_is_unavailable(redis):
    store = RedisFencedStore(parse_redis_url("REDIS_URL", redis.url), reactor)
    assert not store.connected
    await failure_of(claim(store), StoreUnavailable)


@pytest_twisted.ensureDeferred
async def test_redis_restart_fails_fast_then_reconnects(redis, make_store):
    store = await make_store()
    assert await claim(store) > 0

    redis.stop()
    await wait_until(lambda: not store.connected, timeout=5)
    started = time.monotonic()
    await failure_of(claim(store), StoreUnavailable)
    await failure_of(store.read_assignment(M), StoreUnavailable)
    await failure_of(store.ping(), StoreUnavailable)
    assert time.monotonic() - started < 0.2

    redis.start()
    await wait_until(lambda: store.connected, timeout=20)
    # no persistence: the restarted server is empty, and has no scripts either
    g = await claim(store)
    assert await store.write_state(M, g, "mc-1", {"n": 1}) == g


@pytest_twisted.ensureDeferred
async def test_a_hung_redis_is_bounded_by_the_reply_timeout(redis, make_store):
    store = await make_store(reply_timeout=0.3)
    redis.pause()
    try:
        started = time.monotonic()
        await failure_of(claim(store), StoreUnavailable)
        assert time.monotonic() - started < 2, "the claim, then its read-back, each 0.3 s"
    finally:
        redis.resume()
    await wait_until(lambda: store.connected, timeout=20)
    # A timed-out command may still have run once Redis woke up: StoreUnavailable
    # does not mean nothing changed, only that the outcome is unknown. Connections
    # aborted by the timeout may still be in the pool for a moment, so retry.
    deadline = time.monotonic() + 10
    while True:
        try:
            generation = await claim(store)
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            await deferLater(reactor, 0.1, lambda: None)
    assert generation > 0


@pytest_twisted.ensureDeferred
async def test_a_frozen_redis_is_down_at_once_and_back_with_its_first_answer(redis, make_store):
    store = await make_store(probe_every=lambda: 0.2)
    changes = []
    store.on_change(changes.append)
    redis.pause()
    try:
        frozen = time.monotonic()
        in_flight = store.claim_and_write(M, "mc-1", ASSIGNMENT, {})
        await wait_until(lambda: not store.connected, timeout=2, what="down")
        assert time.monotonic() - frozen <= 0.2 + 0.2 + 0.1, "one probe period and timeout"
        started = time.monotonic()
        await failure_of(claim(store, "other"), StoreUnavailable)
        assert time.monotonic() - started < 0.05, "new operations fail at once"
        # The claim in flight is read back once it can no longer arrive: it
        # fails after its own deadline and the read-back's, no later.
        await failure_of(in_flight, StoreUnavailable)
        assert time.monotonic() - frozen < 2 * 3.0 + 1
    finally:
        redis.resume()
    thawed = time.monotonic()
    await wait_until(lambda: store.connected, timeout=2, what="up again")
    assert time.monotonic() - thawed <= 0.5
    assert changes == [False, True]
    assert await store.ping() == "PONG"


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_from_two_stores_hand_out_each_generation_once(
    redis, make_store
):
    stores = [await make_store(), await make_store()]
    generations = []
    for _ in range(100):  # one claim of the meeting per store and reactor turn
        generations += await defer.gatherResults(
            [claim(store, mc_id=f"mc-{i}") for i, store in enumerate(stores)])
    assert len(set(generations)) == 200
    assert redis.command("GET", generation_key(M)) == str(max(generations))


@pytest_twisted.ensureDeferred
async def test_password_protected_redis_and_no_password_anywhere(make_store):
    password = "pw-Secr3t-7f0c2a"
    events = []
    globalLogPublisher.addObserver(events.append)
    server = RedisProcess(password=password).start()
    try:
        store = await make_store(server.url)
        g = await claim(store)
        assert await store.write_assignment(M, g, "mc-1", ASSIGNMENT) == g
        assert password not in repr(store)
        assert "<redacted>" in repr(store)

        server.stop()
        await wait_until(lambda: not store.connected, timeout=5)
        err = await failure_of(claim(store), StoreUnavailable)
        assert password not in str(err)

        server.start()
        await wait_until(lambda: store.connected, timeout=20)
        assert await claim(store) > 0

        wrong = await make_store_refused(server.url.replace(password, "not-" + password))
        try:
            err = await failure_of(claim(wrong), StoreUnavailable)
            assert password not in str(err) + repr(wrong)
        finally:
            await wrong.stopService()
        await store.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
        server.cleanup()

    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert "connected" in text and "set-up failed" in text
    assert password not in text


async def make_store_refused(url):
    """A store given a wrong password: it logs the refusal, stays down and keeps trying."""
    store = RedisFencedStore(parse_redis_url("REDIS_URL", url), reactor)
    refused = []
    observer = refused.append
    globalLogPublisher.addObserver(observer)
    try:
        store.startService()
        await wait_until(
            lambda: any("set-up failed" in formatEvent(e) for e in refused),
            timeout=10,
        )
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not store.connected
    return store


def evalsha_calls(redis):
    stats = redis.command("INFO", "commandstats")
    for line in stats.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@pytest_twisted.ensureDeferred
async def test_claims_of_one_reactor_turn_go_as_one_script_call(redis, make_store):
    store = await make_store()
    await store.claim_and_write("warm-up", "mc-1", ASSIGNMENT, {})
    before = evalsha_calls(redis)
    ids = [f"batch-{i}" for i in range(10)]
    generations = await defer.gatherResults(
        [store.claim_and_write(m, "mc-1", ASSIGNMENT, {"n": i}) for i, m in enumerate(ids)])
    assert len(set(generations)) == 1, "claimed in one script call, at one Redis time"
    assert evalsha_calls(redis) == before + 1
    for i, m in enumerate(ids):
        assert fields(redis, m) == {"mc_id": "mc-1", "n": str(i),
                                    "generation": str(generations[0])}


@pytest_twisted.ensureDeferred
async def test_a_full_batch_goes_at_once_and_the_rest_follows(redis, make_store):
    store = await make_store()
    await store.claim_and_write("warm-up", "mc-1", ASSIGNMENT, {})
    before = evalsha_calls(redis)
    n = MAX_BATCH + 3
    generations = await defer.gatherResults(
        [store.claim_and_write(f"full-{i}", "mc-1", ASSIGNMENT, {}) for i in range(n)])
    assert len(generations) == n and all(g > 0 for g in generations)
    assert evalsha_calls(redis) == before + 2


@pytest_twisted.ensureDeferred
async def test_a_corrupt_meeting_in_a_batch_fails_alone(redis, make_store):
    store = await make_store()
    redis.command("SET", generation_key("bad"), "not-a-number")
    good = store.claim_and_write("good", "mc-1", ASSIGNMENT, {})
    bad = store.claim_and_write("bad", "mc-1", ASSIGNMENT, {})
    assert await good > 0
    await failure_of(bad, CorruptGeneration)
    assert redis.command("GET", generation_key("bad")) == "not-a-number"
    assert redis.command("EXISTS", mh_key("bad")) == 0


@pytest_twisted.ensureDeferred
async def test_a_caller_that_stops_waiting_leaves_the_batch_alone(redis, make_store):
    store = await make_store()
    gone = store.claim_and_write("gone", "mc-1", ASSIGNMENT, {})
    kept = store.claim_and_write("kept", "mc-1", ASSIGNMENT, {})
    gone.cancel()
    await failure_of(gone, defer.CancelledError)
    assert await kept > 0
    await wait_until(lambda: redis.command("GET", generation_key("gone")) is not None, timeout=5)


@pytest_twisted.ensureDeferred
async def test_a_failed_batch_fails_every_caller(redis, make_store):
    store = await make_store(reply_timeout=0.3)
    redis.pause()
    try:
        claims = [store.claim_and_write(f"hung-{i}", "mc-1", ASSIGNMENT, {}) for i in range(3)]
        for d in claims:
            await failure_of(d, StoreUnavailable)
    finally:
        redis.resume()


@pytest_twisted.ensureDeferred
async def test_state_writes_of_one_turn_go_as_one_call_and_a_fenced_one_fails_alone(
    redis, make_store
):
    store = await make_store()
    g = {}
    for m in ("w1", "w2", "w3"):
        g[m] = await claim(store, m)
    newer = await claim(store, "w2")
    await store.write_state("w1", g["w1"], "mc-1", {"warm": 1})  # the script is loaded once
    before = evalsha_calls(redis)
    w1 = store.write_state("w1", g["w1"], "mc-1", {"touched_at": 5})
    w2 = store.write_state("w2", g["w2"], "mc-1", {"touched_at": 5})
    w3 = store.write_state("w3", g["w3"], "mc-1", {"touched_at": 5})
    assert await w1 == g["w1"] and await w3 == g["w3"]
    fenced = await failure_of(w2, FencedOut)
    assert (fenced.generation, fenced.stored_generation) == (g["w2"], newer)
    assert evalsha_calls(redis) == before + 1
    assert redis.hgetall(state_key("w1"))["touched_at"] == "5"
    assert "touched_at" not in redis.hgetall(state_key("w2"))


@pytest_twisted.ensureDeferred
async def test_a_redis_error_on_one_meeting_of_a_batch_fails_that_meeting_only(redis, make_store):
    store = await make_store()
    g = {m: await claim(store, m) for m in ("e1", "e2")}
    redis.command("SET", state_key("bad"), "a string, not a hash")  # WRONGTYPE for HMGET
    good, bad = claim(store, "good"), claim(store, "bad")
    assert await good > 0
    err = await failure_of(bad, StoreError)
    assert "bad" in str(err) and "WRONGTYPE" in str(err)
    redis.command("DEL", state_key("e2"))
    redis.command("SET", state_key("e2"), "a string")
    ok = store.reassert("e1", g["e1"], "mc-1", ASSIGNMENT, {})
    broken = store.reassert("e2", g["e2"], "mc-1", ASSIGNMENT, {})
    assert await ok == g["e1"]
    assert "WRONGTYPE" in str(await failure_of(broken, StoreError))
    state = store.write_state("e1", g["e1"], "mc-1", {"n": 1})
    broken = store.write_state("e2", g["e2"], "mc-1", {"n": 1})
    assert await state == g["e1"]
    await failure_of(broken, StoreError)
