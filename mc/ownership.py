"""The hosted meetings' lives after their accept: news of the ones other MCs
took, the answer to every fence (and to a Redis that lost its data), and the
end of the ones nobody is in, with NotifyMeetingEnded. No gRPC or Redis here.

Nothing costs per hosted meeting on a timer. Another MC's claim leaves news
for the loser in Redis, read with one command per check and also pushed on a
channel that makes the check run at once (a missed message waits for the
next periodic check, at most half the GC's comprehensive interval away).
Idle meetings wait in the registry's index, ordered by when they became idle.
"""

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from mc.assignment import assignment_record, owner_state
from mc.backoff import retry_policy
from mc.errors import FencedOut, GcCallError, StoreError
from mc.meetings import MOVED
from mc.periodic import PeriodicCall
from mc.proto import gc_mc_pb2 as pb

FALLBACK_OWNERSHIP_INTERVAL = 30.0
#: Longest pause between two looks at the idle index.
MAX_IDLE_CHECK = 5.0
MIN_CHECK_INTERVAL = 0.05
#: Idle ends in flight at once.
END_CONCURRENCY = 16
#: Meetings written back at once after Redis lost its data (batched by the
#: store, 64 a call).
REASSERT_CHUNK = 512

_END, _REASSERT = "end", "reassert"


class Lanes:
    """One store operation per meeting at a time. They are fenced writes over
    a pool of connections, so two in flight for one meeting could land in
    either order (a re-assertion after a delete would bring its keys back).
    The accept path and the parts below share one Lanes."""

    log = Logger()

    def __init__(self):
        self._busy: dict[str, tuple[str, defer.Deferred]] = {}

    def busy(self, meeting_id):
        """``(kind, Deferred)`` of the meeting's operation in flight, or None."""
        return self._busy.get(meeting_id)

    def run(self, meeting_id, kind, coroutine, failed=None):
        """Run the meeting's store operation, marked busy until it settles;
        its Deferred never fails (an unexpected error is logged and gives
        ``failed``)."""
        d = defer.ensureDeferred(coroutine)
        d.addErrback(self._bug, kind, meeting_id, failed)
        self._busy[meeting_id] = (kind, d)
        d.addBoth(self._done, meeting_id, d)
        return d

    def in_flight(self, kind=None):
        return [d for k, d in self._busy.values() if kind is None or k == kind]

    def _done(self, result, meeting_id, d):
        busy = self._busy.get(meeting_id)
        if busy is not None and busy[1] is d:
            del self._busy[meeting_id]
        return result

    def _bug(self, failure, kind, meeting_id, failed):
        self.log.failure("unexpected error in {kind} of meeting {meeting_id}", failure=failure,
                         kind=kind, meeting_id=meeting_id)
        return failed


class OwnershipService(Service):
    """The part of the meetings' life after the accept (AssignmentService's).
    ``interval()`` is the GC's comprehensive heartbeat interval: an MC must
    stop hosting a meeting it lost within it."""

    name = "ownership"

    def __init__(self, config, store, registry, gc_client, clock, metrics, interval):
        self.lanes = Lanes()
        self._lost = LostMeetings(config, store, registry, self.lanes, clock, metrics, interval)
        self._ends = IdleEnds(config, store, registry, self.lanes, gc_client, clock, metrics,
                              self._lost.lost)

    def startService(self):
        super().startService()
        self._lost.start()
        self._ends.start()

    def stopService(self):
        """Stop checking and notifying; wait for the store operations in
        flight (each bounded by the store's reply timeout)."""
        super().stopService()
        stopping = [self._lost.stop(), self._ends.stop(), *self.lanes.in_flight()]
        d = defer.DeferredList(stopping, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def lost(self, m, fenced):
        """A fenced write showed that another MC holds ``m``."""
        self._lost.lost(m, fenced)

    def accepted(self, meeting_id):
        """The meeting is hosted here (again)."""
        self._ends.accepted(meeting_id)

    def intervals_changed(self):
        """The GC dictated its heartbeat intervals."""
        self._lost.reschedule()

    def check(self):
        """Check ownership now; fires when done."""
        return self._lost.check()


class LostMeetings:
    """Reads the news of the meetings other MCs claimed from this one and
    stops hosting them; the answer to every fence. A missing marker means
    Redis lost its data: every hosted meeting is written back, and the ones
    another MC claimed meanwhile are fenced out by owner."""

    log = Logger()

    def __init__(self, config, store, registry, lanes, clock, metrics, interval):
        self._config = config
        self._store = store
        self._registry = registry
        self._lanes = lanes
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._marked = False  # the marker was seen or set: its loss is news
        self._running = False
        self._check = PeriodicCall(self._check_interval, self._read, clock, "ownership check")
        store.on_change(self._store_changed)
        store.listen(config.mc_id, self._heard)

    def start(self):
        self._running = True
        self._check.start()

    def stop(self):
        self._running = False
        return self._check.stop()

    def reschedule(self):
        self._check.reschedule()

    def check(self):
        return self._check.run_now()

    def _check_interval(self):
        """Half the GC's comprehensive interval: a claim just after a check is
        read by the next one, within the interval even when that runs late."""
        try:
            seconds = float(self._interval())
        except Exception:
            self.log.failure("ownership interval unavailable", mc_id=self._config.mc_id)
            seconds = 0.0
        if seconds <= 0:
            seconds = FALLBACK_OWNERSHIP_INTERVAL
        return max(seconds / 2, MIN_CHECK_INTERVAL)

    def _heard(self):
        if self._running:
            self._check.run_now()

    def _store_changed(self, connected):
        # Back from an outage: Redis may have come back without its data.
        if connected and self._running:
            self._check.run_now()

    async def _read(self):
        if not self._store.connected:
            return
        mc_id = self._config.mc_id
        try:
            marked, lost = await self._store.news(mc_id)
            if marked:
                self._marked = True
            else:
                await self._write_back_all()
            done = [(meeting_id, g) for meeting_id, g in lost if self._decide(meeting_id, g)]
            if done:
                await self._store.forget_news(mc_id, done)
        except StoreError as e:
            self.log.debug("ownership check skipped: {why}", mc_id=mc_id, why=str(e))

    def _decide(self, meeting_id, generation):
        """Act on news of a claim at ``generation``; False to keep it for the
        next check (an accept of the meeting is in flight, and the news may
        be of a claim after ours)."""
        if self._registry.pending(meeting_id):
            return False
        m = self._registry.get(meeting_id)
        if m is not None and m.generation < generation:
            self.lost(m, FencedOut(meeting_id, m.generation, generation))
        return True

    def lost(self, m, fenced):
        """Another MC holds the meeting: stop hosting it, never write its keys
        again nor say it ended (it lives on there), and send its participants
        to join again through the GC (only the actor that lost it is removed)."""
        if self._registry.get(m.meeting_id) is not m:
            return
        self._registry.remove(m.meeting_id)
        m.redirect_all(MOVED, self._clock.seconds())
        self._metrics.fenced_out.inc()
        self.log.warn("fenced out of meeting {meeting_id}: our generation {generation}, stored "
                      "{stored_generation}; no longer hosting it", mc_id=self._config.mc_id,
                      meeting_id=m.meeting_id, generation=m.generation,
                      stored_generation=fenced.stored_generation)

    async def _write_back_all(self):
        """Write every hosted meeting's keys back (the owner check keeps a
        claim made meanwhile by another MC), then set the marker; a write
        that failed leaves the marker unset, so the next check does it again."""
        hosted = list(self._registry)
        if self._marked or hosted:
            self.log.warn("Redis lost this MC's marker, so it lost data (a restart without "
                          "persistence?): writing back the {count} meetings hosted here",
                          mc_id=self._config.mc_id, count=len(hosted))
        now = int(self._clock.seconds())
        written = True
        for i in range(0, len(hosted), REASSERT_CHUNK):
            if not self._running:
                return
            chunk = hosted[i:i + REASSERT_CHUNK]
            results = await defer.gatherResults([self._write_back(m, now) for m in chunk])
            written = written and all(results)
        if written:
            await self._store.mark(self._config.mc_id)
            self._marked = True

    def _write_back(self, m, now):
        if self._registry.get(m.meeting_id) is not m or self._lanes.busy(m.meeting_id):
            # Gone, or an accept (which writes the keys) or an end is in flight.
            return defer.succeed(True)
        return self._lanes.run(m.meeting_id, _REASSERT, self._reassert(m, now), failed=False)

    async def _reassert(self, m, now):
        try:
            await self._store.reassert(m.meeting_id, m.generation, self._config.mc_id,
                                       assignment_record(m.mh_assignments, now),
                                       owner_state(self._config, now))
        except FencedOut as e:
            self.lost(m, e)
        except StoreError as e:
            self.log.debug("could not write back meeting {meeting_id}: {why}",
                           mc_id=self._config.mc_id, meeting_id=m.meeting_id, why=str(e))
            return False
        return True


class IdleEnds:
    """Ends the meetings nobody has been in for MC_MEETING_IDLE_SECONDS:
    deletes their keys (fenced) and tells the GC with NotifyMeetingEnded,
    retried with the one backoff policy for as long as the MC runs."""

    log = Logger()

    def __init__(self, config, store, registry, lanes, gc_client, clock, metrics, lost):
        self._config = config
        self._store = store
        self._registry = registry
        self._lanes = lanes
        self._gc = gc_client
        self._clock = clock
        self._metrics = metrics
        self._lost = lost
        self._delay = retry_policy()
        self._limit = defer.DeferredSemaphore(END_CONCURRENCY)
        self._queued: dict[str, defer.Deferred | None] = {}  # waiting for the semaphore
        self._notifies: dict[str, defer.Deferred] = {}  # NotifyMeetingEnded retries
        self._running = False
        self._check = PeriodicCall(self._check_interval, self._end_idle, clock,
                                   "idle meetings check")

    def start(self):
        self._running = True
        self._check.start()

    def stop(self):
        """Cancel queued ends and pending notifications; fires when the check
        in flight and the notifications have settled."""
        self._running = False
        for d in list(self._queued.values()):
            if d is not None:
                d.cancel()
        if self._notifies:
            self.log.warn("stopping with {count} meeting-ended notifications unsent: {meetings}",
                          count=len(self._notifies), meetings=sorted(self._notifies))
        notifies = list(self._notifies.values())
        for d in notifies:
            d.cancel()
        return defer.DeferredList([self._check.stop(), *notifies], consumeErrors=True)

    def accepted(self, meeting_id):
        pending = self._notifies.pop(meeting_id, None)
        if pending is not None:
            pending.cancel()  # it is ours again: "ended" would now be wrong

    def _check_interval(self):
        return max(min(self._config.meeting_idle / 4, MAX_IDLE_CHECK), MIN_CHECK_INTERVAL)

    def _end_idle(self):
        for m in self._registry.idle(self._config.meeting_idle):
            if m.meeting_id in self._queued or self._lanes.busy(m.meeting_id):
                continue
            self._queued[m.meeting_id] = None  # _start removes it, maybe right away
            d = self._limit.run(self._start, m)
            if m.meeting_id in self._queued:
                self._queued[m.meeting_id] = d
            d.addErrback(self._queue_failed, m.meeting_id)

    def _queue_failed(self, failure, meeting_id):
        if not failure.check(defer.CancelledError):
            self.log.failure("ending meeting {meeting_id} failed", failure=failure,
                             mc_id=self._config.mc_id, meeting_id=meeting_id)

    def _start(self, m):
        self._queued.pop(m.meeting_id, None)
        if (not self._running or self._registry.get(m.meeting_id) is not m
                or self._lanes.busy(m.meeting_id)):
            return None
        return self._lanes.run(m.meeting_id, _END, self._end(m))

    async def _end(self, m):
        """Delete the idle meeting's keys (fenced), free its slot and tell the
        GC; if Redis fails it stays hosted and the next check tries again."""
        meeting_id = m.meeting_id
        if self._registry.get(meeting_id) is not m or m.participant_count:
            return
        try:
            await self._store.delete(meeting_id, m.generation, self._config.mc_id)
        except FencedOut as e:
            self._lost(m, e)
            return
        except StoreError as e:
            self.log.warn("could not end idle meeting {meeting_id}; retrying: {why}",
                          mc_id=self._config.mc_id, meeting_id=meeting_id,
                          generation=m.generation, why=str(e))
            return
        if self._registry.get(meeting_id) is m:
            self._registry.remove(meeting_id)
        self._metrics.meetings_ended.labels("idle").inc()
        self.log.info("meeting {meeting_id} ended: idle for {idle:g}s",
                      mc_id=self._config.mc_id, meeting_id=meeting_id,
                      generation=m.generation, idle=self._config.meeting_idle)
        d = defer.ensureDeferred(self._notify_ended(meeting_id))
        self._notifies[meeting_id] = d
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        d.addBoth(self._notified, meeting_id, d)

    def _notified(self, result, meeting_id, d):
        if self._notifies.get(meeting_id) is d:
            del self._notifies[meeting_id]
        return result

    async def _notify_ended(self, meeting_id):
        """NotifyMeetingEnded, retried with the one backoff policy for as long
        as the service runs; only INVALID_ARGUMENT (it cannot ever succeed)
        gives up."""
        request = pb.NotifyMeetingEndedRequest(meeting_id=meeting_id, region=self._config.region)
        attempt = 0
        while self._running:
            try:
                await self._gc.notify_meeting_ended(request)
            except GcCallError as e:
                if e.code == "INVALID_ARGUMENT":
                    self.log.error("GC refused NotifyMeetingEnded for {meeting_id}: {details}",
                                   mc_id=self._config.mc_id, meeting_id=meeting_id,
                                   details=e.details)
                    return
                delay = self._delay(attempt)
                attempt += 1
                self.log.warn("NotifyMeetingEnded for {meeting_id} failed ({code}); retry "
                              "{attempt} in {delay:.1f}s", mc_id=self._config.mc_id,
                              meeting_id=meeting_id, code=e.code, attempt=attempt, delay=delay)
                await task.deferLater(self._clock, delay, lambda: None)
                continue
            self.log.info("GC told that meeting {meeting_id} ended", mc_id=self._config.mc_id,
                          meeting_id=meeting_id)
            return
