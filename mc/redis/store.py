"""RedisFencedStore: IFencedStore over txredisapi, every write fenced in Lua."""

import json
import re

import hiredis  # noqa: F401 - fail at import, not at every reply, when it is missing
import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from mc.errors import CorruptGeneration, FencedOut, StoreError, StoreUnavailable
from mc.interfaces import IFencedStore
from mc.redis import scripts
from mc.redis.keys import generation_key, meetings_index_key, mh_key, state_key

#: The contract's ``meeting:<id>:mh`` fields, no more and no fewer.
ASSIGNMENT_FIELDS = frozenset(
    ("primary_mh_id", "primary_endpoint", "backup_mh_id", "backup_endpoint", "assigned_at")
)

# What the Lua scripts accept as a generation (see lua/_fence.lua).
_GENERATION_RE = re.compile(r"0|[1-9][0-9]{0,14}")

# Redis error replies meaning "not usable right now" rather than "bad request".
_UNAVAILABLE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "BUSY", "NOAUTH", "TRYAGAIN")


class _PoolHooks:
    """Tells the store whenever a connection joins or leaves the pool, so that
    it can log the transitions as they happen."""

    def __init__(self, store, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._store = store

    def addConnection(self, conn):
        super().addConnection(conn)
        self._store._pool_changed()

    def delConnection(self, conn):
        super().delConnection(conn)
        self._store._pool_changed()


class _Factory(_PoolHooks, txredisapi.RedisFactory):
    # hiredis parses replies in C, several times faster than txredisapi's
    # line-by-line Python parser; txredisapi would silently fall back to the
    # latter when hiredis does not import, so the choice is made explicit here.
    protocol = txredisapi.HiredisProtocol


class _SentinelFactory(_PoolHooks, txredisapi.SentinelConnectionFactory):
    """Every connection attempt asks the sentinels for the current primary,
    and a connection to a node that is not (or no longer) the primary is
    dropped (txredisapi's Sentinel support; its protocol is hiredis's too)."""


def _check_generation(generation):
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        raise ValueError(f"generation must be a positive int, not {generation!r}")
    if not _GENERATION_RE.fullmatch(str(generation)):
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


#: Most meetings in one batched script call; a batch goes out at the end of the
#: reactor turn in which its first operation arrived, or as soon as it is full.
MAX_BATCH = 64


def claim_and_write_call(meeting_id, mc_id, assignment, state):
    """The keys and arguments that one meeting adds to a CLAIM_AND_WRITE call
    (see lua/claim_and_write.lua); a call of one meeting is a batch of one."""
    values = [_assignment_json(assignment), meeting_id, "mc_id", mc_id]
    values += _field_args(state, ("mc_id", "generation"))
    keys = [generation_key(meeting_id), mh_key(meeting_id), state_key(meeting_id),
            meetings_index_key(mc_id)]
    return keys, [len(values), *values]


def write_state_call(meeting_id, generation, fields):
    """The keys and arguments that one meeting adds to a WRITE_STATE call."""
    values = [_check_generation(generation), *_field_args(fields, ("generation",))]
    return [generation_key(meeting_id), state_key(meeting_id)], [len(values), *values]


def _assignment_json(assignment):
    if set(assignment) != ASSIGNMENT_FIELDS:
        raise ValueError(f"assignment fields must be exactly {sorted(ASSIGNMENT_FIELDS)}")
    return json.dumps(assignment, separators=(",", ":"))


class _Batcher:
    """Operations of one script (claims, or state writes) that arrive in one
    reactor turn, sent as one call of the script's batch form: under load this
    turns many round trips, reply parses and Deferred chains into one, while
    each meeting's operation stays atomic and gets its own verdict.

    The script replies ``{'ok', {status, value, ...}, ...}``: per meeting in
    order, ``ok`` with the generation, ``fenced`` with the stored one, or
    ``corrupt``."""

    def __init__(self, store, script, durable):
        self._store = store
        self._script = script
        self._durable = durable
        self._pending = []
        self._call = None

    def add(self, meeting_id, generation, keys, args):
        store = self._store
        if not store.connected:
            return defer.fail(StoreUnavailable(f"Redis {store._target} is not connected"))
        d = defer.Deferred()
        self._pending.append((meeting_id, generation, keys, args, d))
        if len(self._pending) >= MAX_BATCH:
            self.flush()
        elif self._call is None:
            self._call = store._reactor.callLater(0, self.flush)
        return d

    def flush(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        store = self._store
        keys = [k for _, _, ks, _, _ in batch for k in ks]
        args = [a for _, _, _, as_, _ in batch for a in as_]
        operation = store._evalsha(self._script, keys, args)
        if self._durable:
            what = f"meeting {batch[0][0]}" if len(batch) == 1 else f"{len(batch)} meetings"
            operation = store._durable(operation, what)
        d = store._call(operation)
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
            else:
                d.errback(StoreError(f"meeting {meeting_id}: unexpected result {status!r}"))

    @staticmethod
    def _failed(failure, batch):
        for *_, d in batch:
            if not d.called:
                d.errback(failure.value)


@implementer(IFencedStore)
class RedisFencedStore(Service):
    """The meeting keys in the fleet's Redis.

    A lazy txredisapi pool that reconnects by itself; while no connection is
    up, every operation fails at once with StoreUnavailable (txredisapi would
    queue it until a connection appears, however long that takes), and every
    operation is bounded by ``reply_timeout`` as a whole.

    Claims, and state writes (ownership touches), that arrive in one reactor
    turn go to Redis as one script call each (``_Batcher``).
    """

    log = Logger()

    def __init__(self, target, reactor, reply_timeout=5.0, pool_size=4, connect_timeout=5.0,
                 replica_timeout=1.0):
        self._target = target
        self._reactor = reactor
        self._reply_timeout = reply_timeout
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._replica_ms = max(1, int(replica_timeout * 1000))
        self._sentinel = None
        self._factory = None
        self._was_connected = False
        self._recovery = None  # (mc_id, host) until the start-up recovery is done
        self._recovering = False
        self._recovery_retry = None
        self._up = False
        self._claims = _Batcher(self, scripts.CLAIM_AND_WRITE, durable=True)
        self._state_writes = _Batcher(self, scripts.WRITE_STATE, durable=False)

    def __repr__(self):
        return f"<RedisFencedStore {self._target} connected={self.connected}>"

    @property
    def connected(self):
        """A connection is up and the start-up recovery (if any) is done."""
        return self._up and self._recovery is None

    @property
    def _pool_up(self):
        return self._factory is not None and any(c.connected for c in self._factory.pool)

    def recover_on_connect(self, mc_id, host):
        """Once Redis first answers, and before the store reports itself
        connected (so health stays UNHEALTHY and no assignment is taken), call
        ``host([(meeting_id, generation, assignment), ...])`` with the meetings
        ``mc_id`` still owns: its index names them, the state hash names
        ``mc_id`` at the stored generation. Call before ``startService``."""
        self._recovery = (mc_id, host)

    def startService(self):
        super().startService()
        t = self._target
        password = t.password.reveal() if t.password is not None else None
        # Raw strings back: a generation is parsed here, never guessed.
        options = dict(isLazy=True, password=password, replyTimeout=self._reply_timeout,
                       convertNumbers=False, username=t.username)
        if t.sentinels:
            self._sentinel = txredisapi.Sentinel(list(t.sentinels),
                                                 replyTimeout=self._reply_timeout)
            # Asked again on every connection attempt: during a failover no
            # sentinel names a healthy primary, and waiting 10 s for that is too long.
            self._sentinel.discovery_timeout = 1.0
            self._sentinel.master_for(t.service, factory_class=self._sentinel_factory,
                                      dbid=t.db, poolsize=self._pool_size, **options)
        else:
            self._factory = _Factory(self, f"{t.host}:{t.port}", t.db, self._pool_size,
                                     **options)
            self._factory.reconnect = True
            self._factory.startConnecting(self._endpoint())
        # Set up (AUTH, SELECT) refused: txredisapi stops reconnecting for good.
        self._factory.deferred.addErrback(self._setup_refused)
        self.log.info("Redis store connecting to {target}", target=str(t))

    def _sentinel_factory(self, **kwargs):
        self._factory = _SentinelFactory(self, **kwargs)
        return self._factory

    def _endpoint(self):
        # Built here rather than by txredisapi: its endpoint ignores the reactor
        # we are given and its TLS does not verify the server's certificate.
        t = self._target
        endpoint = HostnameEndpoint(self._reactor, t.host, t.port, timeout=self._connect_timeout)
        if t.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(t.host), endpoint)
        return endpoint

    def _setup_refused(self, failure):
        self.log.error(
            "Redis {target} refused the connection setup, no longer reconnecting: {why}",
            target=str(self._target), why=failure.getErrorMessage(),
        )

    def stopService(self):
        super().stopService()
        if self._recovery_retry is not None and self._recovery_retry.active():
            self._recovery_retry.cancel()
        self._claims.flush()
        self._state_writes.flush()
        factory, self._factory = self._factory, None
        sentinel, self._sentinel = self._sentinel, None
        stopped = [factory.disconnect()] if factory is not None else []
        if sentinel is not None:
            stopped.append(sentinel.disconnect())
        d = defer.DeferredList(stopped, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _pool_changed(self):
        self._up = self._pool_up
        if self._recovery is not None and self._pool_up and not self._recovering:
            self._recover()
        now = self.connected
        if now and not self._was_connected:
            self.log.info("Redis {target} connected", target=str(self._target))
        elif not now and self._was_connected and self.running:
            self.log.warn("Redis {target} connection lost; reconnecting",
                          target=str(self._target))
        self._was_connected = now

    def _recover(self):
        mc_id, host = self._recovery
        self._recovering = True
        d = self._run(self._evalsha(scripts.RECOVER, [meetings_index_key(mc_id)], [mc_id]))
        d.addCallback(self._owned, mc_id)
        d.addCallback(host)
        d.addCallbacks(self._recovered, self._recovery_failed)

    def _owned(self, reply, mc_id):
        if reply[0] != scripts.OK:
            raise StoreError(f"recovery of {mc_id}: unexpected script reply {reply[0]!r}")
        owned, flat = [], reply[1]
        for i in range(0, len(flat), 3):
            meeting_id, generation, mh = flat[i:i + 3]
            try:
                assignment = json.loads(mh)
            except ValueError:
                assignment = None
            if not isinstance(assignment, dict):
                self.log.warn("meeting {meeting_id}: stored assignment is not a JSON object; "
                              "not recovering it", mc_id=mc_id, meeting_id=meeting_id)
                continue
            owned.append((meeting_id, int(generation), assignment))
        return owned

    def _recovered(self, _):
        self._recovering = False
        self._recovery = None
        self._pool_changed()

    def _recovery_failed(self, failure):
        self._recovering = False
        if failure.check(StoreUnavailable):
            # Retried on the next connection, or in a second if this one stays up.
            self.log.warn("meeting recovery failed, retrying: {why}",
                          why=failure.getErrorMessage())
            self._recovery_retry = self._reactor.callLater(1.0, self._retry_recovery)
            return
        self.log.failure("meeting recovery failed; starting without it", failure=failure)
        self._recovered(None)

    def _retry_recovery(self):
        self._recovery_retry = None
        if self.running and self._recovery is not None and self._pool_up and \
                not self._recovering:
            self._recover()

    # The operations

    def ping(self):
        return self._call(lambda redis: redis.ping())

    def claim(self, meeting_id):
        return self._eval(scripts.CLAIM, meeting_id, None, [generation_key(meeting_id)], [],
                          durable=True)

    def claim_and_write(self, meeting_id, mc_id, assignment, state):
        keys, args = claim_and_write_call(meeting_id, mc_id, assignment, state)
        return self._claims.add(meeting_id, None, keys, args)

    def write_assignment(self, meeting_id, generation, assignment):
        args = [_check_generation(generation), _assignment_json(assignment)]
        keys = [generation_key(meeting_id), mh_key(meeting_id)]
        return self._eval(scripts.WRITE_ASSIGNMENT, meeting_id, generation, keys, args)

    def write_state(self, meeting_id, generation, fields):
        keys, args = write_state_call(meeting_id, generation, fields)
        return self._state_writes.add(meeting_id, generation, keys, args)

    def delete(self, meeting_id, generation):
        args = [_check_generation(generation), meeting_id]
        keys = [generation_key(meeting_id), mh_key(meeting_id), state_key(meeting_id)]
        return self._eval(scripts.DELETE, meeting_id, generation, keys, args)

    def read_generation(self, meeting_id):
        def parse(value):
            if value is None:
                return None
            if not _GENERATION_RE.fullmatch(value):
                raise CorruptGeneration(meeting_id)
            return int(value)

        d = self._call(lambda redis: redis.get(generation_key(meeting_id)))
        return d.addCallback(parse)

    def read_assignment(self, meeting_id):
        def parse(value):
            if value is None:
                return None
            try:
                return json.loads(value)
            except ValueError:
                raise StoreError(f"meeting {meeting_id}: stored assignment is not JSON") from None

        d = self._call(lambda redis: redis.get(mh_key(meeting_id)))
        return d.addCallback(parse)

    # The plumbing

    def _call(self, operation):
        """Run ``operation(handler)`` if connected, bounded by the reply timeout,
        with connection failures turned into StoreUnavailable."""
        if not self.connected:
            return defer.fail(StoreUnavailable(f"Redis {self._target} is not connected"))
        return self._run(operation)

    def _run(self, operation):
        d = defer.maybeDeferred(operation, self._factory.handler)
        d.addTimeout(self._reply_timeout, self._reactor)
        return d.addErrback(self._unavailable)

    def _unavailable(self, failure):
        if failure.check(txredisapi.ConnectionError, defer.TimeoutError, defer.CancelledError):
            why = failure.getErrorMessage() or type(failure.value).__name__
            raise StoreUnavailable(f"Redis {self._target}: {why}") from None
        if failure.check(txredisapi.ResponseError):
            reply = str(failure.value)
            error = StoreUnavailable if reply.startswith(_UNAVAILABLE_REPLIES) else StoreError
            raise error(f"Redis {self._target}: {reply}") from None
        return failure

    def _eval(self, script, meeting_id, generation, keys, args, durable=False):
        operation = self._evalsha(script, keys, args)
        if durable:
            operation = self._durable(operation, f"meeting {meeting_id}")
        d = self._call(operation)
        return d.addCallback(self._verdict, meeting_id, generation)

    def _durable(self, operation, what):
        """``operation`` (a claim, replying ``{'ok', result, replicas}``)
        followed, when the primary has replicas, by ``WAIT 1`` on the same
        connection: a claim that no replica holds could vanish in a failover
        and its generation be handed out again, so it counts as failed."""
        def run(redis):
            d = self._factory.getConnection(peek=True)
            return d.addCallback(lambda conn: operation(conn).addCallback(wait, conn))

        def wait(reply, conn):
            if reply[0] != scripts.OK or int(reply[2]) == 0:
                return reply
            d = conn.execute_command("WAIT", 1, self._replica_ms)
            return d.addCallback(acknowledged, reply)

        def acknowledged(replicas, reply):
            if int(replicas) < 1:
                raise StoreUnavailable(
                    f"Redis {self._target}: the claim of {what} reached no "
                    f"replica within {self._replica_ms} ms")
            return reply

        return run

    def _evalsha(self, script, keys, args):
        """The operation that runs ``script``, loading it once if Redis lost it."""
        def run(redis):
            d = redis.evalsha(script.sha, keys, args)
            d.addErrback(reload, redis)
            return d

        def reload(failure, redis):
            # Redis forgets scripts on restart and SCRIPT FLUSH: load, retry once.
            failure.trap(txredisapi.ScriptDoesNotExist)
            self.log.info("Redis lost script {script}; loading it again", script=script.name)
            d = redis.script_load(script.source)
            return d.addCallback(lambda _: redis.evalsha(script.sha, keys, args))

        return run

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
