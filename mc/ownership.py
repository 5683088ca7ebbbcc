"""The hosted meetings' lives after their accept: news of the ones other MCs
took, the answer to every fence (and to a Redis that lost its data), and the
end of the ones nobody is in, with NotifyMeetingEnded. No gRPC or Redis here.

Nothing costs per hosted meeting on a timer. Another MC's claim leaves news
for the loser in Redis, read with one command per check and also pushed on a
channel that makes the check run at once. The same read renews the hosting
lease (mc/lease.py), so it runs ``READS_PER_BOUND`` times per lease bound: a
missed message waits at most that long. Idle meetings wait in the registry's
index, ordered by when they became idle.
"""

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mc.assignment import assignment_record, owner_state
from mc.errors import FencedOut, StoreError
from mc.lease import READS_PER_BOUND
from mc.meetings import MOVED
from mc.notices import EndNotices
from mc.periodic import PeriodicCall

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

    def settled(self, meeting_id):
        """Fires once the meeting's operation in flight (if any) has settled;
        cancelling it only stops this caller waiting."""
        busy = self._busy.get(meeting_id)
        if busy is None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        busy[1].addBoth(lambda result: (None if waiter.called else waiter.callback(None),
                                        result)[1])
        return waiter

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
    stop hosting a meeting it lost within it; ``lease`` (a Lease) is renewed
    by every ownership read, and its lapse sends every participant away."""

    name = "ownership"

    def __init__(self, config, store, registry, gc_client, clock, metrics, interval, lease):
        self.lanes = Lanes()
        self._lease = lease
        self._lost = LostMeetings(config, store, registry, self.lanes, clock, metrics, interval,
                                  lease)
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
        self._lease.stop()
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
    stops hosting them; the answer to every fence. A marker below what Redis
    acknowledged means Redis lost writes (mc/redis/marker.py): every hosted
    meeting is written back, and the ones another MC claimed meanwhile are
    fenced out by generation or owner."""

    log = Logger()

    def __init__(self, config, store, registry, lanes, clock, metrics, interval, lease):
        self._config = config
        self._store = store
        self._registry = registry
        self._lanes = lanes
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._lease = lease
        self._marked = False  # the marker was seen intact once: its loss is news
        self._write_back_due = False  # Redis lost writes; not all written back yet
        self._running = False
        self._check = PeriodicCall(self._check_interval, self._read, clock, "ownership check")
        store.on_change(self._store_changed)
        store.listen(config.mc_id, self._heard)
        lease.on_change(self._lease_changed)

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
        """``READS_PER_BOUND`` reads per lease bound, and at least two per GC
        comprehensive interval: a claim just after a check is read by the
        next one, within the interval even when that runs late."""
        try:
            seconds = float(self._interval())
        except Exception:
            self.log.failure("ownership interval unavailable", mc_id=self._config.mc_id)
            seconds = 0.0
        if seconds <= 0:
            seconds = FALLBACK_OWNERSHIP_INTERVAL
        return max(min(seconds / 2, self._lease.bound / READS_PER_BOUND), MIN_CHECK_INTERVAL)

    def _heard(self):
        if self._running:
            self._check.run_now()

    def _store_changed(self, connected):
        # Back from an outage: Redis may have come back without its data.
        if connected and self._running:
            self._check.run_now()

    def _lease_changed(self, valid):
        """The lease lapsed: this MC may have lost its meetings unheard, so
        their people go back to the GC (which places the meetings afresh)
        and joins are refused until a read and the write-back succeed. The
        meetings stay, to be re-asserted (fenced) then."""
        if valid:
            self.log.info("hosting lease confirmed again", mc_id=self._config.mc_id)
            return
        now = self._clock.seconds()
        count = 0
        for m in self._registry:
            count += m.participant_count
            m.redirect_all(MOVED, now)
        self.log.warn("ownership unconfirmed for {bound:g}s: {count} participants sent back to "
                      "the GC, joins refused until Redis answers", mc_id=self._config.mc_id,
                      bound=self._lease.bound, count=count)

    async def _read(self):
        """Read the news; act on it; renew the lease from this read's start,
        after the hosted meetings were written back when Redis lost data or
        the lease had lapsed (a meeting claimed meanwhile is fenced out)."""
        if not self._store.reachable:
            return
        mc_id = self._config.mc_id
        started = self._clock.seconds()
        try:
            intact, lost = await self._store.news(mc_id)
            done = [(meeting_id, g) for meeting_id, g in lost if self._decide(meeting_id, g)]
            settled = True
            if not intact:
                self._data_lost()
            self._marked = True
            if self._write_back_due or self._lease.lapsed:
                settled = await self._write_back_all()
            if done:
                await self._store.forget_news(mc_id, done)
        except StoreError as e:
            self.log.debug("ownership check skipped: {why}", mc_id=mc_id, why=str(e))
            return
        if settled and self._running:
            self._lease.confirm(started)

    def _decide(self, meeting_id, generation):
        """Act on news of a claim at ``generation``; False to keep it (an
        accept of the meeting is in flight, and the news may be of a claim
        after ours): it is read again as soon as that accept settles.
        Generations never repeat, so news at or above the hosted one is of
        a claim that did not come from this MC's own."""
        if self._registry.pending(meeting_id) or self._lanes.busy(meeting_id):
            self._lanes.settled(meeting_id).addCallback(lambda _: self._heard())
            return False
        m = self._registry.get(meeting_id)
        if m is not None and m.generation <= generation:
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

    def _data_lost(self):
        if self._marked or len(self._registry):
            self.log.warn("Redis lost writes it had acknowledged (a restart from an older "
                          "snapshot or without persistence, a failover, a flush): writing back "
                          "the {count} meetings hosted here, fenced",
                          mc_id=self._config.mc_id, count=len(self._registry))
        self._write_back_due = True

    async def _write_back_all(self):
        """Write every hosted meeting's keys back (the owner check keeps a
        claim made meanwhile by another MC). True when every write
        succeeded; otherwise the next check does it again (the lease stays
        unconfirmed meanwhile)."""
        if self._write_back_due:
            # An accept in flight may have written before the loss: settled
            # first, its meeting is written back too.
            await defer.DeferredList(self._lanes.in_flight(), consumeErrors=True)
        hosted = list(self._registry)
        now = int(self._clock.seconds())
        written = True
        for i in range(0, len(hosted), REASSERT_CHUNK):
            if not self._running:
                return False
            chunk = hosted[i:i + REASSERT_CHUNK]
            results = await defer.gatherResults(
                [defer.ensureDeferred(self._write_back(m, now)) for m in chunk])
            written = written and all(results)
        if written:
            self._write_back_due = False
        return written

    async def _write_back(self, m, now):
        while self._lanes.busy(m.meeting_id):  # an accept or an end: it settles first
            await self._lanes.settled(m.meeting_id)
        if self._registry.get(m.meeting_id) is not m:
            return True
        return await self._lanes.run(m.meeting_id, _REASSERT, self._reassert(m, now),
                                     failed=False)

    async def _reassert(self, m, now):
        try:
            await self._store.reassert(m.meeting_id, m.generation, self._config.mc_id,
                                       assignment_record(m.mh_assignments, now),
                                       owner_state(self._config, now, m.mh_assignments))
        except FencedOut as e:
            self.lost(m, e)
        except StoreError as e:
            self.log.debug("could not write back meeting {meeting_id}: {why}",
                           mc_id=self._config.mc_id, meeting_id=m.meeting_id, why=str(e))
            return False
        return True


class IdleEnds:
    """Ends the meetings nobody has been in for MC_MEETING_IDLE_SECONDS:
    deletes their keys (fenced) and tells the GC with NotifyMeetingEnded
    through one bounded queue (mc/notices.py)."""

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
        self._limit = defer.DeferredSemaphore(END_CONCURRENCY)
        self._queued: dict[str, defer.Deferred | None] = {}  # waiting for the semaphore
        self._notices = EndNotices(config, gc_client, clock)
        self._running = False
        self._check = PeriodicCall(self._check_interval, self._end_idle, clock,
                                   "idle meetings check")

    def start(self):
        self._running = True
        self._check.start()
        self._notices.start()

    def stop(self):
        """Cancel queued ends and pending notifications; fires when the check
        in flight and the notification in flight have settled."""
        self._running = False
        for d in list(self._queued.values()):
            if d is not None:
                d.cancel()
        return defer.DeferredList([self._check.stop(), self._notices.stop()],
                                  consumeErrors=True)

    def accepted(self, meeting_id):
        self._notices.cancel(meeting_id)  # it is ours again: "ended" would now be wrong

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
        m.ending = True  # joins are refused (redirected) from now on
        try:
            await self._store.delete(meeting_id, m.generation, self._config.mc_id)
        except FencedOut as e:
            self._lost(m, e)
            return
        except StoreError as e:
            m.ending = False
            self.log.warn("could not end idle meeting {meeting_id}; retrying: {why}",
                          mc_id=self._config.mc_id, meeting_id=meeting_id,
                          generation=m.generation, why=str(e))
            return
        if self._registry.get(meeting_id) is m:
            self._registry.remove(meeting_id)
        # Nobody can have joined meanwhile; one in its grace cannot come back.
        m.redirect_all(MOVED, self._clock.seconds())
        self._metrics.meetings_ended.labels("idle").inc()
        self.log.info("meeting {meeting_id} ended: idle for {idle:g}s",
                      mc_id=self._config.mc_id, meeting_id=meeting_id,
                      generation=m.generation, idle=self._config.meeting_idle)
        self._notices.add(meeting_id)
