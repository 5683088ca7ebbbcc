"""NotifyMeetingEnded for the meetings this MC ended: one bounded queue and
one sender, never a coroutine per meeting. A failed call is retried with the
one backoff policy (mc/backoff.py) for as long as the MC runs; INVALID_ARGUMENT
(it can never succeed) gives up; a meeting hosted here again before its
notice went out is taken off the queue ("ended" would now be wrong)."""

from twisted.internet import defer
from twisted.logger import Logger

from mc.backoff import retry_policy
from mc.errors import GcCallError
from mc.proto import gc_mc_pb2 as pb

#: Notices waiting at most; past it the oldest is dropped, with a warning
#: (the GC then learns of that end only when it asks the MC again).
MAX_PENDING = 10_000


class EndNotices:
    """Queue of ``meeting_id -> (due, attempt)``, sent one at a time in the
    order they fall due, on ``clock``."""

    log = Logger()

    def __init__(self, config, gc_client, clock, limit=MAX_PENDING):
        self._config = config
        self._gc = gc_client
        self._clock = clock
        self._limit = limit
        self._delay = retry_policy()
        self._pending: dict[str, tuple[float, int]] = {}
        self._timer = None
        self._sending = None  # (meeting_id, Deferred) of the call in flight
        self._running = False

    def __len__(self):
        return len(self._pending)

    def start(self):
        self._running = True
        self._wake()

    def stop(self):
        """No more sends; fires once the call in flight (if any) settled."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._pending:
            self.log.warn("stopping with {count} meeting-ended notifications unsent: "
                          "{meetings}", count=len(self._pending), meetings=sorted(self._pending))
        if self._sending is None:
            return defer.succeed(None)
        d = self._sending[1]
        d.cancel()
        done = defer.Deferred()
        d.addBoth(lambda _: done.callback(None))
        return done

    def add(self, meeting_id):
        """The meeting ended here: tell the GC."""
        if meeting_id not in self._pending and len(self._pending) >= self._limit:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            self.log.warn("too many meeting-ended notifications pending; dropped the one of "
                          "{meeting_id}", mc_id=self._config.mc_id, meeting_id=oldest)
        self._pending[meeting_id] = (self._clock.seconds(), 0)
        self._wake()

    def cancel(self, meeting_id):
        """It is hosted here again: no notice."""
        self._pending.pop(meeting_id, None)
        if self._sending is not None and self._sending[0] == meeting_id:
            self._sending[1].cancel()

    def _wake(self):
        if not self._running or self._sending is not None or not self._pending:
            return
        meeting_id, (due, _) = min(self._pending.items(), key=lambda item: item[1][0])
        delay = due - self._clock.seconds()
        if delay > 0:
            if self._timer is not None and self._timer.active():
                self._timer.reset(delay)
            else:
                self._timer = self._clock.callLater(delay, self._fire)
            return
        self._send(meeting_id)

    def _fire(self):
        self._timer = None
        self._wake()

    def _send(self, meeting_id):
        request = pb.NotifyMeetingEndedRequest(meeting_id=meeting_id, region=self._config.region)
        d = self._gc.notify_meeting_ended(request)
        self._sending = (meeting_id, d)
        d.addCallbacks(self._sent, self._failed, callbackArgs=(meeting_id,),
                       errbackArgs=(meeting_id,))
        d.addBoth(self._next)

    def _sent(self, _, meeting_id):
        self._pending.pop(meeting_id, None)
        self.log.info("GC told that meeting {meeting_id} ended", mc_id=self._config.mc_id,
                      meeting_id=meeting_id)

    def _failed(self, failure, meeting_id):
        if failure.check(defer.CancelledError) or meeting_id not in self._pending:
            return
        if failure.check(GcCallError) and failure.value.code == "INVALID_ARGUMENT":
            self._pending.pop(meeting_id, None)
            self.log.error("GC refused NotifyMeetingEnded for {meeting_id}: {details}",
                           mc_id=self._config.mc_id, meeting_id=meeting_id,
                           details=failure.value.details)
            return
        code = failure.value.code if failure.check(GcCallError) else repr(failure.value)
        attempt = self._pending[meeting_id][1]
        delay = self._delay(attempt)
        self._pending[meeting_id] = (self._clock.seconds() + delay, attempt + 1)
        self.log.warn("NotifyMeetingEnded for {meeting_id} failed ({code}); retry {attempt} in "
                      "{delay:.1f}s", mc_id=self._config.mc_id, meeting_id=meeting_id,
                      code=code, attempt=attempt + 1, delay=delay)

    def _next(self, _):
        self._sending = None
        self._wake()
