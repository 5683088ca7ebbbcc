"""Batcher: the operations of one script that arrive in one reactor turn,
sent as one call of the script's batch form. Under load this turns many round
trips, reply parses and Deferred chains into one, while each meeting's
operation stays atomic and gets its own verdict."""

from twisted.internet import defer

from mc.errors import CorruptGeneration, FencedOut, StoreError, StoreUnavailable
from mc.redis import scripts

#: Most meetings in one batched script call; a batch goes out at the end of the
#: reactor turn in which its first operation arrived, or as soon as it is full.
MAX_BATCH = 64


class Batcher:
    """Batches calls of ``script`` over ``connection`` (a RedisConnection).

    The script replies ``{'ok', {status, value, ...}, ...}``: per meeting in
    order, ``ok`` with the generation, ``fenced`` with the stored one, or
    ``corrupt``."""

    def __init__(self, connection, script, reactor):
        self._connection = connection
        self._script = script
        self._reactor = reactor
        self._pending = []
        self._call = None

    def add(self, meeting_id, generation, keys, args):
        """Queue one meeting's keys and arguments; fires with its generation."""
        if not self._connection.up:
            return defer.fail(StoreUnavailable(f"Redis {self._connection.target} is not "
                                               "connected"))
        d = defer.Deferred()
        self._pending.append((meeting_id, generation, keys, args, d))
        if len(self._pending) >= MAX_BATCH:
            self.flush()
        elif self._call is None:
            self._call = self._reactor.callLater(0, self.flush)
        return d

    def flush(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        keys = [k for _, _, ks, _, _ in batch for k in ks]
        args = [a for _, _, _, as_, _ in batch for a in as_]
        d = self._connection.call(scripts.evalsha(self._script, keys, args))
        d.addCallbacks(self._done, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    @staticmethod
    def _done(reply, batch):
        results = reply[1] if reply[0] == scripts.OK and len(reply) > 1 else None
        for i, (meeting_id, generation, _, _, d) in enumerate(batch):
            if d.called:
                continue  # its caller stopped waiting
            if not isinstance(results, list) or len(results) < 2 * len(batch):
                d.errback(StoreError(f"meeting {meeting_id}: unexpected script reply {reply!r}"))
                continue
            status, value = results[2 * i], results[2 * i + 1]
            if status == scripts.OK:
                d.callback(int(value))
            elif status == scripts.FENCED:
                d.errback(FencedOut(meeting_id, generation, int(value)))
            elif status == scripts.CORRUPT:
                d.errback(CorruptGeneration(meeting_id))
            elif status == scripts.ERROR:
                d.errback(StoreError(f"meeting {meeting_id}: Redis error {value}"))
            else:
                d.errback(StoreError(f"meeting {meeting_id}: unexpected result {status!r}"))

    @staticmethod
    def _failed(failure, batch):
        for *_, d in batch:
            if not d.called:
                d.errback(failure.value)
