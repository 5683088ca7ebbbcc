"""The start-up recovery of a restarted MC: the meetings it still owns, read
from its index in short steps (lua/recover.lua) before the store reports
itself connected, so that health stays UNHEALTHY and no assignment is taken
meanwhile; retried while Redis is unavailable."""

import json

from twisted.internet import defer
from twisted.logger import Logger

from mc.errors import StoreError, StoreUnavailable
from mc.redis import scripts
from mc.redis.keys import lost_key, marker_key, meetings_index_key

#: Index entries a step of the start-up recovery looks at (lua/recover.lua).
RECOVERY_STEP = 500


def _grpc_endpoints(stored):
    """The MHs' gRPC URLs the previous life wrote beside its state (a JSON
    list of strings), or () when absent or unreadable: the meeting is then
    hosted without them until the GC assigns it again."""
    try:
        urls = json.loads(stored) if stored else []
    except ValueError:
        return ()
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        return ()
    return tuple(urls)


class Recovery:
    """``host(owned)`` once with what ``mc_id`` still owns, over ``redis`` (a
    RedisConnection); ``marker``: its Marker; ``done()`` when it is over."""

    log = Logger()

    def __init__(self, redis, reactor, mc_id, host, marker, key_ttl, done):
        self._redis = redis
        self._reactor = reactor
        self._mc_id = mc_id
        self._host = host
        self._marker = marker
        self._key_ttl = key_ttl
        self._done = done
        self._running = False
        self._retry = None
        self.finished = False

    def start(self):
        """Redis answers: recover, unless already under way or over."""
        if self.finished or self._running:
            return
        self._running = True
        d = defer.ensureDeferred(self._owned())
        d.addCallback(self._host)
        d.addCallbacks(self._recovered, self._failed)

    def stop(self):
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    async def _owned(self):
        """The meetings ``mc_id`` still owns, read in short steps."""
        mc_id = self._mc_id
        keys = [meetings_index_key(mc_id), lost_key(mc_id), marker_key(mc_id)]
        owned, cursor = {}, "0"
        marker = self._marker.next()
        while True:
            reply = await self._redis.run(scripts.evalsha(
                scripts.RECOVER, keys, [mc_id, cursor, RECOVERY_STEP, marker, self._key_ttl]))
            if reply[0] != scripts.OK:
                raise StoreError(f"recovery of {mc_id}: unexpected script reply {reply[0]!r}")
            self._marker.acked(marker)
            cursor, flat = reply[1], reply[2]
            for meeting_id, generation, mh, grpc in zip(flat[::4], flat[1::4], flat[2::4],
                                                        flat[3::4], strict=True):
                try:
                    assignment = json.loads(mh)
                except ValueError:
                    assignment = None
                if not isinstance(assignment, dict):
                    self.log.warn("meeting {meeting_id}: stored assignment is not a JSON "
                                  "object; not recovering it", mc_id=mc_id,
                                  meeting_id=meeting_id)
                    continue
                owned[meeting_id] = (meeting_id, int(generation), assignment,
                                     _grpc_endpoints(grpc))
            if cursor == "0":
                return list(owned.values())

    def _recovered(self, _):
        self._running = False
        self.finished = True
        self._done()

    def _failed(self, failure):
        self._running = False
        if failure.check(StoreUnavailable):
            # Retried when Redis is up again, or in a second if it stays up.
            self.log.warn("meeting recovery failed, retrying: {why}",
                          why=failure.getErrorMessage())
            self._retry = self._reactor.callLater(1.0, self._again)
            return
        self.log.failure("meeting recovery failed; starting without it", failure=failure)
        self._recovered(None)

    def _again(self):
        self._retry = None
        if self._redis.up:
            self.start()
