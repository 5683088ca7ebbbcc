"""AssignMeetingWithMh's decision and accept path, and the fenced ownership of
every hosted meeting afterwards; in Deferreds on the reactor, no gRPC here.

One store operation per meeting at a time (an accept, an ownership touch or an
end): they are fenced writes over a pool of Redis connections, so two in
flight for one meeting could land in either order (a touch after a delete
would leave a stray state hash). A second assignment of a meeting joins the
accept in flight; one arriving during a touch or an end waits for it and then
decides afresh.
"""

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from mc.backoff import retry_policy
from mc.config import ID_RE, parse_http_url
from mc.errors import ConfigError, FencedOut, GcCallError, StoreError
from mc.meetings import MOVED, AtCapacity
from mc.proto import gc_mc_pb2 as pb

MAX_MH_ASSIGNMENTS = 16
MAX_MH_ID_CHARS = 255

DRAINING = "DRAINING"
UNHEALTHY = "UNHEALTHY"
AT_CAPACITY = "AT_CAPACITY"
ACCEPTED = (True, None)

#: Longest pause between sweeps (idle ends, ownership touches).
MAX_SWEEP_INTERVAL = 5.0
MIN_SWEEP_INTERVAL = 0.05
FALLBACK_OWNERSHIP_INTERVAL = 30.0
#: Fenced store operations of the sweep in flight at once.
SWEEP_CONCURRENCY = 16

_ACCEPT, _TOUCH, _END = "accept", "touch", "end"


class InvalidAssignment(ValueError):
    """An AssignMeetingWithMh request breaks the contract; ``field`` names the
    offending field the way the GC wrote it (``mh_assignments[1].mh_id``)."""

    def __init__(self, field, problem):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def validate_assignment(meeting_id, mh_assignments):
    """Raise InvalidAssignment unless the request is one we may act on.

    ``mh_assignments``: ``(mh_id, endpoint, role_name)`` tuples. MH ids are
    held to a length and printability rule only, not to the GC's id rule: the
    contract does not give MH ids a syntax, and refusing a real GC's MH ids
    would refuse every meeting.
    """
    if not isinstance(meeting_id, str) or not ID_RE.fullmatch(meeting_id):
        raise InvalidAssignment("meeting_id", "must be 1-255 letters, digits, '-' or '_'")
    if not 1 <= len(mh_assignments) <= MAX_MH_ASSIGNMENTS:
        raise InvalidAssignment("mh_assignments", f"must hold 1-{MAX_MH_ASSIGNMENTS} "
                                f"entries, not {len(mh_assignments)}")
    for i, (mh_id, endpoint, _role) in enumerate(mh_assignments):
        where = f"mh_assignments[{i}]"
        if not mh_id:
            raise InvalidAssignment(f"{where}.mh_id", "is empty")
        if len(mh_id) > MAX_MH_ID_CHARS or not mh_id.isprintable() or mh_id != mh_id.strip():
            raise InvalidAssignment(
                f"{where}.mh_id",
                f"must be at most {MAX_MH_ID_CHARS} printable characters without surrounding "
                "spaces")
        try:
            parse_http_url(f"{where}.webtransport_endpoint", endpoint)
        except ConfigError as e:
            raise InvalidAssignment(e.option, e.problem) from None


def assignment_record(mh_assignments, assigned_at):
    """The contract's ``meeting:<id>:mh`` JSON fields: the first entry is the
    primary, the second (if any) the backup."""
    primary = mh_assignments[0]
    backup = mh_assignments[1] if len(mh_assignments) > 1 else (None, None, None)
    return {
        "primary_mh_id": primary[0], "primary_endpoint": primary[1],
        "backup_mh_id": backup[0], "backup_endpoint": backup[1],
        "assigned_at": assigned_at,
    }


def mh_from_record(record):
    """The ``(mh_id, endpoint, role_name)`` tuples of a stored ``mh`` record
    (the inverse of ``assignment_record``)."""
    mh = ((record.get("primary_mh_id"), record.get("primary_endpoint"), "MH_ROLE_PRIMARY"),)
    if record.get("backup_mh_id"):
        mh += ((record["backup_mh_id"], record.get("backup_endpoint"), "MH_ROLE_BACKUP"),)
    return mh


def _follow(d):
    """A new Deferred with ``d``'s result, leaving ``d`` as it was; cancelling
    it only stops that one caller waiting (``d`` never fails)."""
    child = defer.Deferred()

    def relay(result):
        if not child.called:
            child.callback(result)
        return result

    d.addCallback(relay)
    return child


class AssignmentService(Service):
    """Takes the meetings the GC assigns, keeps proving it owns them, and ends
    the idle ones.

    ``ownership_interval()`` is the most seconds that may pass between two
    ownership checks of a meeting (the GC liaison's comprehensive interval)."""

    name = "meetings"
    log = Logger()

    def __init__(self, config, store, registry, health, gc_client, clock, metrics,
                 ownership_interval):
        self._config = config
        self._store = store
        self._registry = registry
        self._health = health
        self._gc = gc_client
        self._clock = clock
        self._metrics = metrics
        self._ownership_interval = ownership_interval
        self._delay = retry_policy()
        self._limit = defer.DeferredSemaphore(SWEEP_CONCURRENCY)
        self._busy = {}  # meeting_id -> (kind, Deferred) of its one store operation
        self._queued = {}  # meeting_id -> Deferred waiting for the sweep semaphore
        self._notifies = {}  # meeting_id -> Deferred of its NotifyMeetingEnded retries
        self._sweep_call = None
        self._next_touch = 0.0
        # Each answer is logged only at debug, and even a dropped event costs
        # ~15 us on the hot path, so the lines are not emitted at all above it.
        self._log_each = config.log_level == "debug"
        self._answers = {}  # (status, reason) -> its labelled counter

    # --- life cycle -------------------------------------------------------

    def startService(self):
        super().startService()
        self._next_touch = self._clock.seconds()
        self._schedule_sweep()

    def stopService(self):
        """Stop sweeping, cancel queued sweep work and pending meeting-ended
        notifications, and wait for the store operations in flight (each is
        bounded by the store's reply timeout)."""
        super().stopService()
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        for d in list(self._queued.values()):
            if d is not None:
                d.cancel()
        if self._notifies:
            self.log.warn("stopping with {count} meeting-ended notifications unsent: {meetings}",
                          count=len(self._notifies), meetings=sorted(self._notifies))
        for d in list(self._notifies.values()):
            d.cancel()
        pending = [d for _, d in self._busy.values()] + list(self._notifies.values())
        d = defer.DeferredList(pending, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def hosted(self):
        """The ids of the meetings hosted here now."""
        return frozenset(m.meeting_id for m in self._registry)

    def recovered(self, owned):
        """Host again, under their stored generations, the meetings this MC
        still owned when it (re)started: ``(meeting_id, generation, mh
        record)`` from the store's recovery. Capacity holds: the rest are left
        for the GC to place elsewhere (another MC's claim fences this one out)."""
        hosted = 0
        for meeting_id, generation, record in sorted(owned, key=lambda o: o[0]):
            if self._registry.get(meeting_id) is not None or self._registry.pending(meeting_id):
                continue
            try:
                reservation = self._registry.reserve(meeting_id)
            except AtCapacity as e:
                self.log.warn("at capacity ({resource}): {left} owned meetings not hosted again",
                              mc_id=self._config.mc_id, resource=e.resource,
                              left=len(owned) - hosted)
                break
            self._registry.commit(reservation, generation, mh_from_record(record))
            hosted += 1
        self.log.info("hosting {count} meetings again after a restart", mc_id=self._config.mc_id,
                      count=hosted)

    # --- assignment -------------------------------------------------------

    def assign(self, meeting_id, mh_assignments, gc_id):
        """Decide on a validated assignment; fire with ``(accepted, reason)``,
        reason one of DRAINING (also once stopped), UNHEALTHY, AT_CAPACITY or
        None. Never fails
        except by cancellation, which only stops waiting: an accept in flight
        completes (the contract allows a timed-out call to have been accepted)."""
        started = self._clock.seconds()
        d = defer.ensureDeferred(self._assign(meeting_id, tuple(mh_assignments), gc_id))
        d.addBoth(self._answered, started)
        return d

    def _answered(self, result, started):
        self._metrics.assignment_duration.observe(max(0.0, self._clock.seconds() - started))
        if isinstance(result, tuple):
            accepted, reason = result
            key = ("accepted" if accepted else "rejected", reason or "")
        else:
            key = ("abandoned", "")
        counter = self._answers.get(key)
        if counter is None:  # labels() takes a lock and builds a key: once per kind
            counter = self._answers[key] = self._metrics.assignments.labels(*key)
        counter.inc()
        return result

    async def _assign(self, meeting_id, mh, gc_id):
        while True:
            if self._health.draining or not self.running:
                return self._reject(meeting_id, gc_id, DRAINING)
            if not self._health.redis_up:
                return self._reject(meeting_id, gc_id, UNHEALTHY)
            busy = self._busy.get(meeting_id)
            if busy is not None:
                kind, d = busy
                result = await _follow(d)
                if kind == _ACCEPT:
                    return result
                continue  # a touch or an end finished: the meeting may have changed
            m = self._registry.get(meeting_id)
            if m is not None:
                op = self._reassert(m, mh, gc_id)
            else:
                try:
                    reservation = self._registry.reserve(meeting_id)
                except AtCapacity as e:
                    return self._reject(meeting_id, gc_id, AT_CAPACITY, e.resource)
                op = self._accept(reservation, mh, gc_id)
            return await _follow(self._run(meeting_id, _ACCEPT, op))

    def _reject(self, meeting_id, gc_id, reason, detail=None):
        if self._log_each:
            self.log.debug("rejected meeting {meeting_id} from {gc_id}: {reason}{detail}",
                           mc_id=self._config.mc_id, meeting_id=meeting_id, gc_id=gc_id,
                           reason=reason, detail=f" ({detail})" if detail else "")
        return (False, reason)

    async def _accept(self, reservation, mh, gc_id):
        """Claim a new generation and write the meeting's keys in one round
        trip, then host it; the slot goes back on any failure."""
        meeting_id = reservation.meeting_id
        now = int(self._clock.seconds())
        try:
            generation = await self._store.claim_and_write(
                meeting_id, self._config.mc_id, assignment_record(mh, now),
                {"grpc_endpoint": self._config.grpc_advertise, "assigned_at": now})
        except StoreError as e:
            self._registry.release(reservation)
            self.log.warn("could not claim meeting {meeting_id} from {gc_id}: {why}",
                          mc_id=self._config.mc_id, meeting_id=meeting_id, gc_id=gc_id,
                          why=str(e))
            return (False, UNHEALTHY)
        except Exception:
            self._registry.release(reservation)
            self.log.failure("claiming meeting {meeting_id} failed", mc_id=self._config.mc_id,
                             meeting_id=meeting_id, gc_id=gc_id)
            return (False, UNHEALTHY)
        self._registry.commit(reservation, generation, mh)
        pending_end = self._notifies.pop(meeting_id, None)
        if pending_end is not None:
            pending_end.cancel()  # it is ours again: "ended" would now be wrong
        if self._log_each:
            self.log.debug("accepted meeting {meeting_id} from {gc_id} at generation "
                           "{generation}", mc_id=self._config.mc_id, meeting_id=meeting_id,
                           gc_id=gc_id, generation=generation)
        return ACCEPTED

    async def _reassert(self, m, mh, gc_id):
        """Accept a meeting hosted here again under its generation: rewrite its
        keys fenced (the GC's fresh MH choice wins); if that shows it was lost,
        decide afresh like a new meeting."""
        meeting_id = m.meeting_id
        now = int(self._clock.seconds())
        try:
            await self._store.write_assignment(meeting_id, m.generation,
                                               assignment_record(mh, now))
            m.mh_assignments = mh
            await self._store.write_state(meeting_id, m.generation,
                                          {"grpc_endpoint": self._config.grpc_advertise,
                                           "assigned_at": now})
        except FencedOut as e:
            self._lost(m, e)
            try:
                reservation = self._registry.reserve(meeting_id)
            except AtCapacity as e:
                return self._reject(meeting_id, gc_id, AT_CAPACITY, e.resource)
            return await self._accept(reservation, mh, gc_id)
        except StoreError as e:
            self.log.warn("could not re-assert meeting {meeting_id} from {gc_id} at generation "
                          "{generation}: {why}", mc_id=self._config.mc_id, meeting_id=meeting_id,
                          gc_id=gc_id, generation=m.generation, why=str(e))
            return (False, UNHEALTHY)
        except Exception:
            self.log.failure("re-asserting meeting {meeting_id} failed",
                             mc_id=self._config.mc_id, meeting_id=meeting_id, gc_id=gc_id)
            return (False, UNHEALTHY)
        if not m.participant_count:
            m.idle_since = self._clock.seconds()  # the GC expects people: wait afresh
        if self._log_each:
            self.log.debug("accepted meeting {meeting_id} from {gc_id} again at generation "
                           "{generation}", mc_id=self._config.mc_id, meeting_id=meeting_id,
                           gc_id=gc_id, generation=m.generation)
        return ACCEPTED

    # --- one store operation per meeting ------------------------------------

    def _run(self, meeting_id, kind, coroutine):
        """Run a meeting's store operation, marked busy until it settles; its
        Deferred never fails."""
        d = defer.ensureDeferred(coroutine)
        d.addErrback(self._bug, kind, meeting_id)
        self._busy[meeting_id] = (kind, d)
        d.addBoth(self._unbusy, meeting_id, d)
        return d

    def _unbusy(self, result, meeting_id, d):
        busy = self._busy.get(meeting_id)
        if busy is not None and busy[1] is d:
            del self._busy[meeting_id]
        return result

    def _bug(self, failure, kind, meeting_id):
        self.log.failure("unexpected error in {kind} of meeting {meeting_id}", failure=failure,
                         kind=kind, mc_id=self._config.mc_id, meeting_id=meeting_id)
        return (False, UNHEALTHY) if kind == _ACCEPT else None

    def _lost(self, m, fenced):
        """Another MC claimed the meeting: stop hosting it, never write its
        keys again nor say it ended (it lives on there), and send its
        participants to the GC (only the actor that lost it is removed)."""
        if self._registry.get(m.meeting_id) is not m:
            return
        self._registry.remove(m.meeting_id)
        m.redirect_all(MOVED)  # its people join again through the GC
        self._metrics.fenced_out.inc()
        self.log.error("fenced out of meeting {meeting_id}: our generation {generation}, stored "
                       "{stored_generation}; no longer hosting it", mc_id=self._config.mc_id,
                       meeting_id=m.meeting_id, generation=m.generation,
                       stored_generation=fenced.stored_generation)

    # --- the sweep: ownership touches and idle ends --------------------------

    def _ownership_seconds(self):
        """The current ownership interval; a broken source must not stop the
        sweep, so it falls back to the GC's default comprehensive interval."""
        try:
            seconds = float(self._ownership_interval())
        except Exception:
            self.log.failure("ownership interval unavailable", mc_id=self._config.mc_id)
            seconds = 0.0
        return seconds if seconds > 0 else FALLBACK_OWNERSHIP_INTERVAL

    def _sweep_interval(self):
        interval = min(self._config.meeting_idle / 4, MAX_SWEEP_INTERVAL,
                       self._ownership_seconds() / 2)
        return max(interval, MIN_SWEEP_INTERVAL)

    def _schedule_sweep(self):
        self._sweep_call = self._clock.callLater(self._sweep_interval(), self._sweep)

    def _sweep(self):
        """End the idle meetings; every half ownership interval, touch the
        others, so a touch starts at most one interval after the last."""
        try:
            for m in self._registry.idle(self._config.meeting_idle):
                self._enqueue(m, _END, self._end)
            now = self._clock.seconds()
            if now >= self._next_touch:
                self._next_touch = now + self._ownership_seconds() / 2
                for m in self._registry:
                    self._enqueue(m, _TOUCH, self._touch)
        except Exception:
            self.log.failure("meeting sweep failed", mc_id=self._config.mc_id)
        finally:
            if self.running:
                self._schedule_sweep()

    def _enqueue(self, m, kind, operation):
        """Queue ``operation(m)`` behind the sweep's concurrency limit, unless
        the meeting already has one in flight or queued."""
        if m.meeting_id in self._busy or m.meeting_id in self._queued:
            return
        self._queued[m.meeting_id] = None  # _start removes it, maybe right away
        d = self._limit.run(self._start, m, kind, operation)
        if m.meeting_id in self._queued:
            self._queued[m.meeting_id] = d
        d.addErrback(self._queue_failed, kind, m.meeting_id)

    def _queue_failed(self, failure, kind, meeting_id):
        if not failure.check(defer.CancelledError):
            self._bug(failure, kind, meeting_id)

    def _start(self, m, kind, operation):
        self._queued.pop(m.meeting_id, None)
        if (not self.running or self._registry.get(m.meeting_id) is not m
                or m.meeting_id in self._busy):
            return None
        return self._run(m.meeting_id, kind, operation(m))

    async def _touch(self, m):
        """Prove we still own the meeting with a fenced write of its state."""
        try:
            await self._store.write_state(m.meeting_id, m.generation,
                                          {"touched_at": int(self._clock.seconds())})
        except FencedOut as e:
            self._lost(m, e)
        except StoreError as e:
            self.log.debug("ownership check of meeting {meeting_id} skipped: {why}",
                           mc_id=self._config.mc_id, meeting_id=m.meeting_id,
                           generation=m.generation, why=str(e))

    async def _end(self, m):
        """Delete the idle meeting's keys (fenced), free its slot and tell the
        GC; if Redis fails it stays hosted and the next sweep tries again."""
        meeting_id = m.meeting_id
        if self._registry.get(meeting_id) is not m or m.participant_count:
            return
        try:
            await self._store.delete(meeting_id, m.generation)
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
        while self.running:
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
