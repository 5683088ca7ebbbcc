"""RedisFencedStore: IFencedStore over the fleet's Redis, every write fenced
in Lua by generation and owner.

Thin on purpose: the connection (connection.py) decides up and down, the
scripts (scripts.py, lua/) hold the rules, claims go through claims.py (one
call per reactor turn, durable before they count, read back when their
outcome is unknown) and re-assertions and state writes through batch.py.
"""

import json
import re

import hiredis  # noqa: F401 - fail at import, not at every reply, when it is missing
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mc.errors import CorruptGeneration, FencedOut, StoreError
from mc.interfaces import IFencedStore
from mc.redis import requirements, scripts
from mc.redis.batch import Batcher
from mc.redis.claims import Claim, ClaimBatcher, new_claim_id
from mc.redis.connection import PROBE_MAX_PERIOD, RedisConnection
from mc.redis.keys import (
    generation_key,
    lost_key,
    marker_key,
    meetings_index_key,
    mh_key,
    state_key,
)
from mc.redis.marker import Marker
from mc.redis.recovery import Recovery
from mc.redis.replicas import Replicas

#: The contract's ``meeting:<id>:mh`` fields, no more and no fewer.
ASSIGNMENT_FIELDS = frozenset(
    ("primary_mh_id", "primary_endpoint", "backup_mh_id", "backup_endpoint", "assigned_at")
)

#: State hash fields the scripts write themselves.
_RESERVED = ("mc_id", "generation", "claimed_at", "claim_id", "pending", "prev_mc_id", "ended")

# What the Lua scripts accept as a generation (see lua/_fence.lua): exact as
# a Lua number (a double), below 2^53.
_GENERATION_RE = re.compile(r"0|[1-9][0-9]{0,15}")
MAX_GENERATION = 2**53 - 1


def _is_generation(text):
    return bool(_GENERATION_RE.fullmatch(text)) and int(text) <= MAX_GENERATION

#: Seconds an MC's own keys (index, news, marker) live without a read
#: refreshing them, and an ended meeting's tombstone and generation key.
KEY_TTL = 86400



def _check_generation(generation):
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        raise ValueError(f"generation must be a positive int, not {generation!r}")
    if not _is_generation(str(generation)):
        raise ValueError(f"generation {generation} is out of range")
    return str(generation)


def _field_args(fields, reserved):
    args = []
    for name, value in fields.items():
        if name in reserved:
            raise ValueError(f"state field {name!r} is written by the store")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError(f"state field {name!r} must be str or int, not {value!r}")
        args += [name, str(value)]
    return args


def claim_and_write_call(meeting_id, mc_id, assignment, state, claim_id, not_after=0,
                         issued=0):
    """The keys and values that one meeting adds to a CLAIM_AND_WRITE call
    (see lua/claim_and_write.lua); a call of one meeting is a batch of one."""
    values = [_assignment_json(assignment), meeting_id, claim_id, str(not_after), str(issued),
              "mc_id", mc_id]
    values += _field_args(state, _RESERVED)
    keys = [generation_key(meeting_id), mh_key(meeting_id), state_key(meeting_id),
            meetings_index_key(mc_id)]
    return keys, values


def reassert_call(meeting_id, generation, mc_id, assignment, state):
    """The keys and arguments that one meeting adds to a REASSERT call."""
    values = [_check_generation(generation), _assignment_json(assignment), meeting_id,
              "mc_id", mc_id, *_field_args(state, _RESERVED)]
    keys = [generation_key(meeting_id), mh_key(meeting_id), state_key(meeting_id),
            meetings_index_key(mc_id)]
    return keys, [len(values), *values]


def write_state_call(meeting_id, generation, mc_id, fields):
    """The keys and arguments that one meeting adds to a WRITE_STATE call."""
    values = [_check_generation(generation), mc_id, *_field_args(fields, _RESERVED)]
    return [generation_key(meeting_id), state_key(meeting_id)], [len(values), *values]


def _assignment_json(assignment):
    if set(assignment) != ASSIGNMENT_FIELDS:
        raise ValueError(f"assignment fields must be exactly {sorted(ASSIGNMENT_FIELDS)}")
    return json.dumps(assignment, separators=(",", ":"))


@implementer(IFencedStore)
class RedisFencedStore(Service):
    """The meeting keys in the fleet's Redis.

    While Redis is down (no connection, or not answering), or the replicas
    a claim needs fell short, every operation fails at once with
    StoreUnavailable, and every operation is bounded by ``reply_timeout``
    as a whole. ``replica_acks``: online replicas that must acknowledge a
    claim; ``probe_every()``: seconds between two liveness probes.
    """

    log = Logger()

    def __init__(self, target, reactor, reply_timeout=3.0, pool_size=4, connect_timeout=5.0,
                 replica_timeout=1.0, probe_every=lambda: PROBE_MAX_PERIOD, replica_acks=0):
        self._redis = RedisConnection(target, reactor, reply_timeout, pool_size,
                                      connect_timeout, probe_every)
        self._redis.on_change(self._redis_changed)
        self._reactor = reactor
        self._reply_timeout = reply_timeout
        self._markers: dict[str, Marker] = {}  # per mc_id (one, but for tests)
        self._offset_ms = None  # Redis's clock minus ours, from the last news read
        self._replicas = Replicas(replica_acks, reactor, target, self._tell)
        self._claims = ClaimBatcher(self._redis, reactor, self._marker, replica_acks,
                                    max(1, int(replica_timeout * 1000)), KEY_TTL,
                                    self._replicas.claimed)
        self._reasserts = Batcher(self._redis, scripts.REASSERT, reactor)
        self._state_writes = Batcher(self._redis, scripts.WRITE_STATE, reactor)
        self._recovery = None  # a Recovery until the start-up recovery is done
        self._checked = False
        self._was_connected = False
        self._observers = []

    def __repr__(self):
        return f"<RedisFencedStore {self._redis.target} connected={self.connected}>"

    @property
    def connected(self):
        """Redis is up and answering, the replicas a claim needs are there,
        and the start-up recovery (if any) is done."""
        return self.reachable and not self._replicas.short

    @property
    def reachable(self):
        """Redis is up and answering and the start-up recovery is done."""
        return self._redis.up and (self._recovery is None or self._recovery.finished)

    def on_change(self, observer):
        """Call ``observer(connected)`` whenever ``connected`` flips."""
        self._observers.append(observer)

    def recover_on_connect(self, mc_id, host):
        """Once Redis first answers, and before the store reports itself
        connected (so health stays UNHEALTHY and no assignment is taken), call
        ``host([(meeting_id, generation, assignment), ...])`` with the meetings
        ``mc_id`` still owns: its index names them, the state hash names
        ``mc_id`` at the stored generation; ``host`` may return a Deferred,
        waited for. Call before ``startService``."""
        self._recovery = Recovery(self._redis, self._reactor, mc_id, host, self._marker(mc_id),
                                  KEY_TTL, self._tell)

    def probe_period_changed(self):
        """``probe_every()`` changed (the GC dictated a fast interval)."""
        self._redis.probe_period_changed()

    def listen(self, mc_id, heard):
        """Call ``heard()`` as soon as another MC claims a meeting from
        ``mc_id`` (Redis pub/sub), and after each (re)subscription; a message
        can be missed, ``news`` never misses one."""
        self._redis.listen(lost_key(mc_id), lambda _message: heard())

    def startService(self):
        super().startService()
        self._redis.start()

    def stopService(self):
        super().stopService()
        if self._recovery is not None:
            self._recovery.stop()
        for batcher in (self._claims, self._reasserts, self._state_writes):
            batcher.flush()
        return self._redis.stop()

    def _redis_changed(self, up):
        if up and not self._checked:
            self._checked = True
            defer.ensureDeferred(requirements.check(self._redis.run, self._redis.target))
        if up and self._recovery is not None:
            self._recovery.start()
        self._tell()

    def _tell(self):
        connected = self.connected
        if connected == self._was_connected:
            return
        self._was_connected = connected
        for observer in list(self._observers):
            try:
                observer(connected)
            except Exception:
                self.log.failure("store observer failed")

    def _marker(self, mc_id):
        marker = self._markers.get(mc_id)
        if marker is None:
            marker = self._markers[mc_id] = Marker(self._reactor)
        return marker

    # The operations

    def ping(self):
        return self._redis.call(lambda conn: conn.ping())

    def claim_and_write(self, meeting_id, mc_id, assignment, state, issued_at=None):
        """``issued_at``: when (our clock) the assignment arrived: a claim
        reaching Redis after another MC's claim made since changes nothing."""
        now = self._reactor.seconds()
        deadline = now + self._reply_timeout
        keys, values = claim_and_write_call(
            meeting_id, mc_id, assignment, state, new_claim_id(), self._redis_ms(deadline),
            self._redis_ms(issued_at))
        return self._claims.add(mc_id, Claim(meeting_id, keys, values), deadline)

    def _redis_ms(self, seconds):
        """Our time ``seconds`` in Redis's clock (ms), or 0 while unknown."""
        if seconds is None or self._offset_ms is None:
            return 0
        return max(1, int(seconds * 1000) + self._offset_ms)

    def reassert(self, meeting_id, generation, mc_id, assignment, state):
        keys, args = reassert_call(meeting_id, generation, mc_id, assignment, state)
        return self._reasserts.add(meeting_id, generation, keys, args)

    def write_assignment(self, meeting_id, generation, mc_id, assignment):
        args = [_check_generation(generation), mc_id, _assignment_json(assignment)]
        keys = [generation_key(meeting_id), mh_key(meeting_id), state_key(meeting_id)]
        return self._eval(scripts.WRITE_ASSIGNMENT, meeting_id, generation, keys, args)

    def write_state(self, meeting_id, generation, mc_id, fields):
        keys, args = write_state_call(meeting_id, generation, mc_id, fields)
        return self._state_writes.add(meeting_id, generation, keys, args)

    def delete(self, meeting_id, generation, mc_id):
        args = [_check_generation(generation), mc_id, meeting_id, KEY_TTL]
        keys = [generation_key(meeting_id), mh_key(meeting_id), state_key(meeting_id)]
        return self._eval(scripts.DELETE, meeting_id, generation, keys, args)

    def read_generation(self, meeting_id):
        def parse(value):
            if value is None:
                return None
            if not _is_generation(value):
                raise CorruptGeneration(meeting_id)
            return int(value)

        d = self._redis.call(lambda conn: conn.get(generation_key(meeting_id)))
        return d.addCallback(parse)

    def read_assignment(self, meeting_id):
        def parse(value):
            if value is None:
                return None
            try:
                return json.loads(value)
            except ValueError:
                raise StoreError(f"meeting {meeting_id}: stored assignment is not JSON") from None

        d = self._redis.call(lambda conn: conn.get(mh_key(meeting_id)))
        return d.addCallback(parse)

    def news(self, mc_id):
        keys = [lost_key(mc_id), marker_key(mc_id), meetings_index_key(mc_id)]
        marker = self._marker(mc_id).next()
        floor = self._marker(mc_id).acknowledged
        d = self._redis.call(scripts.evalsha(scripts.NEWS, keys, [marker, KEY_TTL]))
        return d.addCallback(self._news, mc_id, marker, floor)

    def _news(self, reply, mc_id, marker, floor):
        if reply[0] != scripts.OK:
            raise StoreError(f"news of {mc_id}: unexpected script reply {reply[0]!r}")
        intact = self._marker(mc_id).intact(reply[1], floor)
        self._marker(mc_id).acked(marker)
        self._offset_ms = int(reply[3]) - int(self._reactor.seconds() * 1000)
        self._replicas.counted(int(reply[4]))
        flat = reply[2]
        lost = []
        for meeting_id, generation in zip(flat[::2], flat[1::2], strict=True):
            if _is_generation(generation):
                lost.append((meeting_id, int(generation)))
            else:
                self.log.warn("news of {mc_id}: meeting {meeting_id} lost at a generation that "
                              "is not an integer; ignored", mc_id=mc_id, meeting_id=meeting_id)
        return intact, lost

    def forget_news(self, mc_id, lost):
        args = [str(a) for pair in lost for a in pair]
        d = self._redis.call(scripts.evalsha(scripts.FORGET_NEWS, [lost_key(mc_id)], args))
        return d.addCallback(lambda reply: int(reply[1]))

    # The plumbing

    def _eval(self, script, meeting_id, generation, keys, args):
        d = self._redis.call(scripts.evalsha(script, keys, args))
        return d.addCallback(self._verdict, meeting_id, generation)

    @staticmethod
    def _verdict(reply, meeting_id, generation):
        status = reply[0]
        if status == scripts.OK:
            return int(reply[1])
        if status == scripts.FENCED:
            raise FencedOut(meeting_id, generation, int(reply[1]))
        if status == scripts.CORRUPT:
            raise CorruptGeneration(meeting_id)
        raise StoreError(f"meeting {meeting_id}: unexpected script reply {reply!r}")
