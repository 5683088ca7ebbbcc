"""AssignMeetingWithMh's decision and accept path, in Deferreds on the
reactor, no gRPC here. What happens to a meeting after its accept (news of a
loss, fences, idle ends) is mc/ownership.py's.

One store operation per meeting at a time (ownership.Lanes, shared with
ownership): a second assignment of a meeting joins the accept in flight; one
arriving during an end or a write-back waits for it and then decides afresh.
"""

import json

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mc.config import ID_RE, parse_http_url
from mc.errors import ConfigError, FencedOut, StoreError
from mc.meetings import AtCapacity

MAX_MH_ASSIGNMENTS = 16
MAX_MH_ID_CHARS = 255

DRAINING = "DRAINING"
UNHEALTHY = "UNHEALTHY"
AT_CAPACITY = "AT_CAPACITY"
ACCEPTED = (True, None)

_ACCEPT = "accept"


class InvalidAssignment(ValueError):
    """An AssignMeetingWithMh request breaks the contract; ``field`` names the
    offending field the way the GC wrote it (``mh_assignments[1].mh_id``)."""

    def __init__(self, field, problem):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def validate_assignment(meeting_id, mh_assignments):
    """Raise InvalidAssignment unless the request is one we may act on.

    ``mh_assignments``: ``(mh_id, webtransport_endpoint, grpc_endpoint)``
    tuples; ``grpc_endpoint`` may be empty (a legacy GC sends none). MH ids are
    held to a length and printability rule only, not to the GC's id rule: the
    contract does not give MH ids a syntax, and refusing a real GC's MH ids
    would refuse every meeting.
    """
    if not isinstance(meeting_id, str) or not ID_RE.fullmatch(meeting_id):
        raise InvalidAssignment("meeting_id", "must be 1-255 letters, digits, '-' or '_'")
    if not 1 <= len(mh_assignments) <= MAX_MH_ASSIGNMENTS:
        raise InvalidAssignment("mh_assignments", f"must hold 1-{MAX_MH_ASSIGNMENTS} "
                                f"entries, not {len(mh_assignments)}")
    for i, (mh_id, endpoint, grpc_endpoint) in enumerate(mh_assignments):
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
            if grpc_endpoint:
                parse_http_url(f"{where}.grpc_endpoint", grpc_endpoint)
        except ConfigError as e:
            raise InvalidAssignment(e.option, e.problem) from None


def assignment_record(mh_assignments, assigned_at):
    """The contract's ``meeting:<id>:mh`` JSON fields: the first entry is the
    primary, the second (if any) the backup. The MHs' gRPC URLs are not
    among them (the layout is the fleet's)."""
    primary = mh_assignments[0]
    backup = mh_assignments[1] if len(mh_assignments) > 1 else (None, None, None)
    return {
        "primary_mh_id": primary[0], "primary_endpoint": primary[1],
        "backup_mh_id": backup[0], "backup_endpoint": backup[1],
        "assigned_at": assigned_at,
    }


def owner_state(config, now, mh_assignments):
    """The state hash fields the owning MC writes besides ``mc_id`` and
    ``generation``; ``mh_grpc_endpoints`` keeps the MHs' gRPC URLs (which the
    fleet's ``mh`` record has no field for) so a restarted MC can register
    its recovered meetings with their MHs again."""
    return {"grpc_endpoint": config.grpc_advertise, "assigned_at": now,
            "mh_grpc_endpoints": json.dumps([mh[2] for mh in mh_assignments[:2]])}


def mh_from_record(record, grpc_endpoints=()):
    """The ``(mh_id, webtransport_endpoint, grpc_endpoint)`` tuples of a
    stored ``mh`` record and the state's ``mh_grpc_endpoints`` (the inverse
    of ``assignment_record`` and ``owner_state``; a URL not stored is empty)."""
    urls = tuple(grpc_endpoints) + ("", "")
    mh = ((record.get("primary_mh_id"), record.get("primary_endpoint"), urls[0]),)
    if record.get("backup_mh_id"):
        mh += ((record["backup_mh_id"], record.get("backup_endpoint"), urls[1]),)
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
    """Takes the meetings the GC assigns. ``ownership`` (OwnershipService)
    holds the lanes shared with the rest of the meetings' life and is told of
    every fence and every accept."""

    name = "meetings"
    log = Logger()

    def __init__(self, config, store, registry, health, ownership, clock, metrics):
        self._config = config
        self._store = store
        self._registry = registry
        self._health = health
        self._ownership = ownership
        self._lanes = ownership.lanes
        self._clock = clock
        self._metrics = metrics
        # Each answer is logged only at debug, and even a dropped event costs
        # ~15 us on the hot path, so the lines are not emitted at all above it.
        self._log_each = config.log_level == "debug"
        self._answers = {}  # (status, reason) -> its labelled counter

    def stopService(self):
        """Wait for the accepts in flight (each bounded by the store's reply
        timeout); later assignments are answered DRAINING."""
        super().stopService()
        d = defer.DeferredList(self._lanes.in_flight(_ACCEPT), consumeErrors=True)
        return d.addCallback(lambda _: None)

    def hosted(self):
        """The ids of the meetings hosted here now."""
        return frozenset(m.meeting_id for m in self._registry)

    def recovered(self, owned):
        """Host again the meetings this MC still owned when it (re)started:
        ``(meeting_id, generation, mh record)`` from the store's recovery.
        Each is claimed afresh (a new generation, the record unchanged), so
        that another live process with the same ``MC_ID`` (a restart that
        overlapped its predecessor) is fenced out by generation. Capacity
        holds: the rest are left for the GC to place elsewhere. Fires once
        every claim settled (the store reports itself connected after)."""
        claims = []
        for meeting_id, _generation, record, grpc in sorted(owned, key=lambda o: o[0]):
            if self._registry.get(meeting_id) is not None or self._registry.pending(meeting_id):
                continue
            try:
                reservation = self._registry.reserve(meeting_id)
            except AtCapacity as e:
                self.log.warn("at capacity ({resource}): {left} owned meetings not hosted again",
                              mc_id=self._config.mc_id, resource=e.resource,
                              left=len(owned) - len(claims))
                break
            claims.append(defer.ensureDeferred(self._reclaim(reservation, record, grpc)))
        d = defer.gatherResults(claims)
        d.addCallback(lambda hosted: self.log.info(
            "hosting {count} meetings again after a restart", mc_id=self._config.mc_id,
            count=sum(hosted)))
        return d

    async def _reclaim(self, reservation, record, grpc_endpoints):
        meeting_id = reservation.meeting_id
        now = int(self._clock.seconds())
        mh = mh_from_record(record, grpc_endpoints)
        try:
            generation = await self._store.claim_and_write(
                meeting_id, self._config.mc_id, record, owner_state(self._config, now, mh))
        except StoreError as e:
            self._registry.release(reservation)
            self.log.warn("could not claim meeting {meeting_id} again after a restart: {why}",
                          mc_id=self._config.mc_id, meeting_id=meeting_id, why=str(e))
            return False
        self._registry.commit(reservation, generation, mh)
        return True

    # --- assignment -------------------------------------------------------

    def assign(self, meeting_id, mh_assignments, gc_id):
        """Decide on a validated assignment; fire with ``(accepted, reason)``,
        reason one of DRAINING (also once stopped), UNHEALTHY, AT_CAPACITY or
        None. Never fails
        except by cancellation, which only stops waiting: an accept in flight
        completes (the contract allows a timed-out call to have been accepted)."""
        started = self._clock.seconds()
        d = defer.ensureDeferred(self._assign(meeting_id, tuple(mh_assignments), gc_id, started))
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

    async def _assign(self, meeting_id, mh, gc_id, issued_at):
        while True:
            if self._health.draining or not self.running:
                return self._reject(meeting_id, gc_id, DRAINING)
            if not self._health.redis_up or not self._health.hosting:
                return self._reject(meeting_id, gc_id, UNHEALTHY)
            busy = self._lanes.busy(meeting_id)
            if busy is not None:
                kind, d = busy
                result = await _follow(d)
                if kind == _ACCEPT:
                    return result
                continue  # an end or a write-back finished: the meeting may have changed
            m = self._registry.get(meeting_id)
            if m is not None:
                op = self._reassert(m, mh, gc_id, issued_at)
            else:
                try:
                    reservation = self._registry.reserve(meeting_id)
                except AtCapacity as e:
                    return self._reject(meeting_id, gc_id, AT_CAPACITY, e.resource)
                op = self._accept(reservation, mh, gc_id, issued_at)
            return await _follow(self._lanes.run(meeting_id, _ACCEPT, op,
                                                 failed=(False, UNHEALTHY)))

    def _reject(self, meeting_id, gc_id, reason, detail=None):
        if self._log_each:
            self.log.debug("rejected meeting {meeting_id} from {gc_id}: {reason}{detail}",
                           mc_id=self._config.mc_id, meeting_id=meeting_id, gc_id=gc_id,
                           reason=reason, detail=f" ({detail})" if detail else "")
        return (False, reason)

    async def _accept(self, reservation, mh, gc_id, issued_at):
        """Claim a new generation and write the meeting's keys in one round
        trip, then host it; the slot goes back on any failure. ``issued_at``:
        when the assignment arrived (a claim by another MC made after it
        wins even if ours reaches Redis later)."""
        meeting_id = reservation.meeting_id
        now = int(self._clock.seconds())
        try:
            generation = await self._store.claim_and_write(
                meeting_id, self._config.mc_id, assignment_record(mh, now),
                owner_state(self._config, now, mh), issued_at=issued_at)
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
        self._ownership.accepted(meeting_id)
        if self._log_each:
            self.log.debug("accepted meeting {meeting_id} from {gc_id} at generation "
                           "{generation}", mc_id=self._config.mc_id, meeting_id=meeting_id,
                           gc_id=gc_id, generation=generation)
        return ACCEPTED

    async def _reassert(self, m, mh, gc_id, issued_at):
        """Accept a meeting hosted here again under its generation: rewrite its
        keys fenced (the GC's fresh MH choice wins); if that shows it was lost,
        decide afresh like a new meeting."""
        meeting_id = m.meeting_id
        now = int(self._clock.seconds())
        try:
            await self._store.reassert(meeting_id, m.generation, self._config.mc_id,
                                       assignment_record(mh, now),
                                       owner_state(self._config, now, mh))
            m.mh_assignments = mh
        except FencedOut as e:
            self._ownership.lost(m, e)
            try:
                reservation = self._registry.reserve(meeting_id)
            except AtCapacity as e:
                return self._reject(meeting_id, gc_id, AT_CAPACITY, e.resource)
            return await self._accept(reservation, mh, gc_id, issued_at)
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
