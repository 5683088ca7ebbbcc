"""Claims: the accept path's claims of one reactor turn sent as one
CLAIM_AND_WRITE call, each counting only once it is durable, and a claim
whose outcome is unknown read back before the MC answers the GC.

With replica acknowledgements required, a claim is ``pending`` in Redis
until it reached them (WAIT); only then does CONFIRM tell the previous owner,
and a second WAIT makes that news durable too. A claim whose reply never came
(timeout, lost connection, Redis frozen) is read back with CONFIRM once its
not-after has passed in Redis's clock, so a late arrival of the claim itself
changes nothing (``lua/claim_and_write.lua``).
"""

import secrets

from twisted.internet import defer, task
from twisted.logger import Logger

from mc.errors import CorruptGeneration, FencedOut, ReplicasShort, StoreError, StoreUnavailable
from mc.redis import scripts
from mc.redis.batch import MAX_BATCH
from mc.redis.keys import generation_key, lost_key, marker_key, state_key

#: A claim read back and not found.
_ABSENT = "absent"


class Claim:
    """One meeting's part of a CLAIM_AND_WRITE call."""

    __slots__ = ("meeting_id", "keys", "values", "claim_id", "d")

    def __init__(self, meeting_id, keys, values):
        self.meeting_id = meeting_id
        self.keys = keys
        self.values = values
        self.claim_id = values[2]
        self.d = defer.Deferred()


def new_claim_id():
    return secrets.token_hex(8)


class ClaimBatcher:
    """Batches the claims of one reactor turn per claiming MC over
    ``connection`` (a RedisConnection). ``acks``: the replica
    acknowledgements a claim needs; ``key_ttl``: seconds the claimer's own
    keys live unrefreshed; ``marker_for(claimer)``: the claimer's Marker;
    ``replicas(short)`` hears whether the replicas fell short (True) or
    sufficed (False)."""

    log = Logger()

    def __init__(self, connection, reactor, marker_for, acks, replica_ms, key_ttl, replicas):
        self._connection = connection
        self._reactor = reactor
        self._marker_for = marker_for
        self._acks = acks
        self._replica_ms = replica_ms
        self._key_ttl = key_ttl
        self._replicas = replicas
        self._pending: dict[str, list[Claim]] = {}
        self._deadlines: dict[str, float] = {}  # when each batch stops being waited for
        self._call = None

    def add(self, claimer, claim, deadline):
        """Queue ``claim`` of ``claimer``; fires with its generation.
        ``deadline``: the local time after which the claim's not-after has
        passed in Redis's clock."""
        if not self._connection.up:
            return defer.fail(StoreUnavailable(f"Redis {self._connection.target} is not "
                                               "connected"))
        batch = self._pending.setdefault(claimer, [])
        batch.append(claim)
        self._deadlines[claimer] = max(self._deadlines.get(claimer, 0.0), deadline)
        if len(batch) >= MAX_BATCH:
            self._send(claimer, self._pending.pop(claimer))
        elif self._call is None:
            self._call = self._reactor.callLater(0, self.flush)
        return claim.d

    def flush(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        pending, self._pending = self._pending, {}
        for claimer, batch in pending.items():
            self._send(claimer, batch)

    def _send(self, claimer, batch):
        deadline = self._deadlines.pop(claimer, 0.0)
        d = defer.ensureDeferred(self._claim(claimer, batch, deadline))
        d.addErrback(self._failed, batch)

    async def _claim(self, claimer, batch, deadline):
        marker = self._marker_for(claimer).next()
        try:
            results = await self._connection.call(
                lambda conn: defer.ensureDeferred(self._claim_on(conn, claimer, batch, marker)))
        except ReplicasShort:
            self._replicas(True)
            raise
        except StoreUnavailable as unknown:
            # The claim may have run: read it back once it can no longer
            # arrive (its not-after passed), then answer.
            await task.deferLater(self._reactor, max(0.0, deadline - self._reactor.seconds()),
                                  lambda: None)
            try:
                results = await self._connection.run(
                    lambda conn: defer.ensureDeferred(self._read_back_on(conn, claimer, batch)))
            except StoreError as e:
                self.log.warn("claims of {count} meetings: outcome unknown ({why}); read back "
                              "failed: {again}", count=len(batch), why=str(unknown), again=str(e))
                raise unknown from None
        else:
            if self._acks:
                self._replicas(False)
        self._settle(batch, results)

    async def _claim_on(self, conn, claimer, batch, marker):
        keys, args = claim_call(claimer, batch, self._acks, marker, self._key_ttl)
        reply = await scripts.evalsha(scripts.CLAIM_AND_WRITE, keys, args)(conn)
        if reply[0] == scripts.NOREPLICAS:
            raise ReplicasShort(f"{int(reply[1])} of the {self._acks} replicas a claim needs "
                                "are online")
        results = _pairs(reply, len(batch))
        if any(status == scripts.OK for status, _ in results):
            self._marker_for(claimer).acked(marker)
        claimed = [i for i, (status, _) in enumerate(results) if status == scripts.OK]
        if self._acks and claimed:
            what = _what(batch)
            await scripts.wait_replicas(conn, self._acks, self._replica_ms, f"the claim of {what}")
            confirmed = await self._confirm_on(conn, claimer, [batch[i] for i in claimed])
            await scripts.wait_replicas(conn, self._acks, self._replica_ms,
                                        f"the news of the claim of {what}")
            for i, result in zip(claimed, confirmed, strict=True):
                results[i] = result
        return results

    async def _confirm_on(self, conn, claimer, claims):
        keys = [k for c in claims for k in (generation_key(c.meeting_id),
                                            state_key(c.meeting_id))]
        args = [a for c in claims for a in (c.meeting_id, c.claim_id, claimer)]
        reply = await scripts.evalsha(scripts.CONFIRM, keys, args)(conn)
        return _pairs(reply, len(claims))

    async def _read_back_on(self, conn, claimer, batch):
        # A claim that is not there never ran (or a newer one replaced it):
        # either way this MC does not hold the meeting.
        results = [(_ABSENT, value) if status == scripts.FENCED else (status, value)
                   for status, value in await self._confirm_on(conn, claimer, batch)]
        if self._acks and any(status == scripts.OK for status, _ in results):
            await scripts.wait_replicas(conn, self._acks, self._replica_ms,
                                        f"the read-back of {_what(batch)}")
        return results

    @staticmethod
    def _settle(batch, results):
        for c, (status, value) in zip(batch, results, strict=True):
            if c.d.called:
                continue  # its caller stopped waiting
            if status == scripts.OK:
                c.d.callback(int(value))
            elif status in (scripts.FENCED, scripts.STALE):
                c.d.errback(FencedOut(c.meeting_id, None, int(value)))
            elif status == _ABSENT:
                c.d.errback(StoreUnavailable(f"the claim of meeting {c.meeting_id} did not "
                                             "take effect"))
            elif status == scripts.LATE:
                c.d.errback(StoreUnavailable(f"the claim of meeting {c.meeting_id} reached "
                                             "Redis after the MC stopped waiting for it"))
            elif status == scripts.CORRUPT:
                c.d.errback(CorruptGeneration(c.meeting_id))
            elif status == scripts.ERROR:
                c.d.errback(StoreError(f"meeting {c.meeting_id}: Redis error {value}"))
            else:
                c.d.errback(StoreError(f"meeting {c.meeting_id}: unexpected result {status!r}"))

    @staticmethod
    def _failed(failure, batch):
        for c in batch:
            if not c.d.called:
                c.d.errback(failure.value)


def claim_call(claimer, claims, acks, marker, key_ttl):
    """The keys and arguments of one CLAIM_AND_WRITE call of ``claims``
    (each a Claim) by ``claimer``."""
    keys = [k for c in claims for k in c.keys] + [lost_key(claimer), marker_key(claimer)]
    args = [acks, marker, key_ttl]
    for c in claims:
        args += [len(c.values), *c.values]
    return keys, args


def _pairs(reply, count):
    """The per-meeting ``(status, value)`` of a batched script's reply."""
    flat = reply[1] if reply[0] == scripts.OK and len(reply) > 1 else None
    if not isinstance(flat, list) or len(flat) != 2 * count:
        raise StoreError(f"unexpected script reply {reply!r}")
    return list(zip(flat[::2], flat[1::2], strict=True))


def _what(batch):
    return f"meeting {batch[0].meeting_id}" if len(batch) == 1 else f"{len(batch)} meetings"
