"""The connection to the fleet's Redis: a txredisapi pool (plain, TLS or
through Sentinel) that reconnects by itself, one subscription for news Redis
pushes, and whether Redis is usable right now.

Usable follows Redis's answers, not the sockets: a frozen Redis (SIGSTOP, a
stalled host) keeps every connection open and answers nothing. So a liveness
probe on a connection of its own (PING with a short timeout, every
``probe_period()`` seconds, never queued behind a pooled command) and the
first reply timeout of any command mark Redis down at once, and fail the
operations in flight; the first answer to a probe (or a new
connection, whose set-up Redis answered) brings it back.

txredisapi uses the global reactor for its own timers (reconnect backoff,
its reply timeout, which drops the connection); ours use the one given.

Over TLS (``rediss://``, ``rediss+sentinel://``) every host's certificate is
verified against ``MC_REDIS_CA_PATH`` or the system's roots: the primary's,
and under Sentinel the sentinels' and the address each sentinel names.
"""

import txredisapi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure

from mc.backoff import redis_reconnect_policy
from mc.errors import ConfigError, StoreError, StoreUnavailable
from mc.periodic import PeriodicCall

#: The probe runs four times per fast heartbeat interval, at most a second
#: apart, so that a frozen Redis shows in the very next heartbeat; it waits
#: at most half a second (and never longer than its period) for PONG.
PROBE_MAX_PERIOD = 1.0
PROBE_MAX_TIMEOUT = 0.5

# Redis error replies meaning "not usable right now" rather than "bad request".
_UNAVAILABLE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "BUSY", "NOAUTH", "TRYAGAIN")


CA_SETTING = "MC_REDIS_CA_PATH"


def trust_root(ca_path):
    """The CAs a ``rediss://`` Redis must chain to: the PEM bundle at
    ``ca_path``, or None for the system's roots; ConfigError naming the
    setting when the file is unusable. Blocking: read once, at start."""
    if ca_path is None:
        return None
    try:
        with open(ca_path, "rb") as f:
            pem = f.read()
        certificates = x509.load_pem_x509_certificates(pem)
    except OSError as e:
        raise ConfigError(CA_SETTING, f"cannot read {ca_path}: {e.strerror}") from None
    except ValueError:
        raise ConfigError(CA_SETTING, f"{ca_path} holds no PEM certificate") from None
    return trustRootFromCertificates(
        [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates])


def probe_period(fast_interval):
    """Seconds between two liveness probes for a fast heartbeat interval."""
    return min(PROBE_MAX_PERIOD, fast_interval / 4)


class _Hooks:
    """Tells the owner whenever a connection joins or leaves the pool, and
    keeps every connection coming back: txredisapi stops reconnecting a
    whole pool for good when one connection's set-up (AUTH, SELECT) fails
    or times out; here that connection is dropped and retried with the
    one backoff (mc/backoff.py) for as long as the MC runs."""

    def __init__(self, owner, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner
        self._delay = redis_reconnect_policy()

    def retryDelay(self, attempt):
        return self._delay(max(0, attempt - 1))

    def stopTrying(self):
        # Only txredisapi's set-up failure path calls this (we stop with
        # disconnect()): the connection is closed and its slot reconnects.
        return defer.succeed(None)

    def addConnection(self, conn):
        super().addConnection(conn)
        self.owner._pool_changed(self, conn if conn in self.pool else None)

    def delConnection(self, conn):
        super().delConnection(conn)
        self.owner._pool_changed(self, None)


class _Factory(_Hooks, txredisapi.RedisFactory):
    # hiredis parses replies in C, several times faster than txredisapi's
    # line-by-line Python parser; txredisapi would silently fall back to the
    # latter when hiredis does not import, so the choice is made explicit here.
    protocol = txredisapi.HiredisProtocol


class _SentinelFactory(_Hooks, txredisapi.SentinelConnectionFactory):
    """Every connection attempt asks the sentinels for the current primary,
    and a connection to a node that is not (or no longer) the primary is
    dropped (txredisapi's Sentinel support; its protocol is hiredis's too)."""


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.owner._heard(message)


class _SentinelSubscriber(_Subscriber, txredisapi.SentinelRedisProtocol):
    """A Sentinel connection's role check, then a subscriber."""


class _SubscriberFactory(_Hooks, txredisapi.RedisFactory):
    protocol = _Subscriber


class _SentinelSubscriberFactory(_Hooks, txredisapi.SentinelConnectionFactory):
    protocol = _SentinelSubscriber


class _NodeEndpoint(txredisapi._SentinelEndpoint):
    """txredisapi's endpoint that asks the sentinels for the primary before
    each attempt, connecting to it with ``tls_for(host)`` (txredisapi's own
    always connects in plaintext)."""

    def __init__(self, factory, tls_for):
        super().__init__(factory)
        self._tls_for = tls_for

    def _connect(self, addr, protocolFactory):
        host, port = addr
        endpoint = txredisapi._makeEndpoint(host, port, self.factory.maxDelay,
                                            self._tls_for(host))
        return endpoint.connect(protocolFactory)


class _Sentinel(txredisapi.Sentinel):
    """txredisapi's Sentinel client with ``tls_for(host)`` (TLS client
    options, or None for plaintext) to each sentinel and each node: one set of
    options per host, since each verifies that host's certificate, where
    txredisapi takes one for all sentinels and none for the nodes.
    txredisapi 1.6's ``_SentinelEndpoint``, ``_makeEndpoint`` and
    ``_connect_factory_and_return_handler`` are relied on here, only here."""

    def __init__(self, addresses, tls_for, **kwargs):
        super().__init__([], **kwargs)
        self.sentinels = [txredisapi.lazyConnection(host, port, ssl_context_factory=tls_for(host),
                                                    **kwargs) for host, port in addresses]
        self._tls_for = tls_for

    def _connect_factory_and_return_handler(self, factory):
        factory.startConnecting(_NodeEndpoint(factory, self._tls_for))
        return factory.handler


class RedisConnection:
    """The pool, the subscription and the up/down state; ``up`` is True
    while a connection is open and Redis answers on it."""

    log = Logger()

    def __init__(self, target, reactor, reply_timeout=5.0, pool_size=4, connect_timeout=5.0,
                 probe_every=lambda: PROBE_MAX_PERIOD):
        self.target = target
        self._reactor = reactor
        self._reply_timeout = reply_timeout
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._probe_every = probe_every
        self._options = None  # txredisapi's connection options, set at start
        self._trust = None  # the CAs of a TLS Redis, None for the system's roots
        self._sentinel = None
        self._factory = None
        self._prober = None  # the liveness probe's own connection
        self._unprobed_since = None  # since when the probe has had no connection
        self._subscriber = None
        self._channel = None  # (channel, on_message) once listen() was called
        self._answering = True
        self._in_flight = set()
        self._observers = []
        self.up = False
        self._probe = PeriodicCall(probe_every, self._probe_once, reactor,
                                   "Redis liveness probe")

    def __repr__(self):
        return f"<RedisConnection {self.target} up={self.up}>"

    def on_change(self, observer):
        """Call ``observer(up)`` whenever ``up`` flips."""
        self._observers.append(observer)

    def probe_period_changed(self):
        """``probe_every()`` changed: the next probe is due one new period
        after the last one."""
        self._probe.reschedule()

    def listen(self, channel, on_message):
        """Subscribe to ``channel`` (now, or when started) and call
        ``on_message(message)`` for each message, and ``on_message(None)``
        after each (re)subscription: messages sent while it was away are lost."""
        self._channel = (channel, on_message)
        if self._factory is not None and self._subscriber is None:
            self._subscriber = self._open(_SubscriberFactory, _SentinelSubscriberFactory, 1)

    # --- life cycle ---------------------------------------------------------

    def start(self):
        t = self.target
        password = t.password.reveal() if t.password is not None else None
        # Raw strings back: a generation is parsed here, never guessed.
        self._options = dict(isLazy=True, password=password, replyTimeout=self._reply_timeout,
                             convertNumbers=False, username=t.username)
        self._trust = trust_root(t.ca_path) if t.tls else None
        if t.sentinels:
            self._sentinel = _Sentinel(t.sentinels, self._tls_for,
                                       replyTimeout=self._reply_timeout)
            # Asked again on every connection attempt: during a failover no
            # sentinel names a healthy primary, and waiting 10 s for that is too long.
            self._sentinel.discovery_timeout = 1.0
        self._factory = self._open(_Factory, _SentinelFactory, self._pool_size)
        # Its own connection: a PING queued behind a blocking command (WAIT)
        # on a pooled one would judge a healthy Redis dead.
        self._prober = self._open(_Factory, _SentinelFactory, 1)
        if self._channel is not None:
            self._subscriber = self._open(_SubscriberFactory, _SentinelSubscriberFactory, 1)
        self._probe.start()
        self.log.info("Redis connecting to {target}", target=str(t))

    def stop(self):
        """Close everything; fires once the connections are closed."""
        stopped = [self._probe.stop()]
        for factory in (self._factory, self._prober, self._subscriber, self._sentinel):
            if factory is not None:
                stopped.append(factory.disconnect())
        self._factory = self._prober = self._subscriber = self._sentinel = None
        self._changed()
        d = defer.DeferredList(stopped, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _open(self, plain, sentinel, poolsize):
        t = self.target
        if self._sentinel is not None:
            made = []

            def make(**kwargs):
                made.append(sentinel(self, **kwargs))
                return made[0]

            self._sentinel.master_for(t.service, factory_class=make, dbid=t.db,
                                      poolsize=poolsize, **self._options)
            factory = made[0]
        else:
            factory = plain(self, f"{t.host}:{t.port}", t.db, poolsize, **self._options)
            factory.reconnect = True
            factory.startConnecting(self._endpoint())
        factory.deferred.addErrback(self._setup_failed)
        return factory

    def _endpoint(self):
        # Built here rather than by txredisapi: its endpoint ignores the reactor
        # we are given.
        t = self.target
        endpoint = HostnameEndpoint(self._reactor, t.host, t.port, timeout=self._connect_timeout)
        tls = self._tls_for(t.host)
        return endpoint if tls is None else wrapClientTLS(tls, endpoint)

    def _tls_for(self, host):
        """TLS client options that verify ``host``'s certificate, or None
        for a plaintext Redis."""
        if not self.target.tls:
            return None
        return optionsForClientTLS(host, trustRoot=self._trust)

    def _setup_failed(self, failure):
        self.log.warn("Redis {target}: a connection's set-up failed ({why}); retrying",
                      target=str(self.target), why=failure.getErrorMessage())

    # --- operations ---------------------------------------------------------

    def call(self, operation):
        """Run ``operation(connection)`` on a pooled connection, bounded by the
        reply timeout as a whole; fails at once with StoreUnavailable while
        Redis is down, and with StoreUnavailable or StoreError (an error reply)
        otherwise."""
        if not self.up:
            return defer.fail(StoreUnavailable(f"Redis {self.target} is not connected"))
        d = self.run(operation)
        self._in_flight.add(d)
        return d.addBoth(self._settled, d)

    def run(self, operation):
        """``call`` without the up check, and not failed when Redis stops
        answering (only by its own timeout): for the work that decides whether
        the store is up (the start-up recovery)."""
        d = self._factory.getConnection(peek=True)
        d.addCallback(operation)
        d.addTimeout(self._reply_timeout, self._reactor)
        return d.addErrback(self._unavailable)

    def _settled(self, result, d):
        self._in_flight.discard(d)
        return result

    def _unavailable(self, failure):
        if failure.check(defer.TimeoutError, txredisapi.TimeoutError):
            self._not_answering(f"no answer to a command within {self._reply_timeout:g}s")
        if failure.check(txredisapi.ConnectionError, defer.TimeoutError, defer.CancelledError):
            why = failure.getErrorMessage() or type(failure.value).__name__
            raise StoreUnavailable(f"Redis {self.target}: {why}") from None
        if failure.check(txredisapi.ResponseError):
            reply = str(failure.value)
            error = StoreUnavailable if reply.startswith(_UNAVAILABLE_REPLIES) else StoreError
            raise error(f"Redis {self.target}: {reply}") from None
        return failure

    # --- up and down ----------------------------------------------------------

    def _probe_once(self):
        """PING; fires when answered or judged late (never fails). Without
        a connection for a whole probe timeout (each set-up unanswered or
        refused), Redis is not answering either."""
        if self._prober is None:
            return None
        timeout = min(PROBE_MAX_TIMEOUT, self._probe_every())
        if not self._prober.pool:
            now = self._reactor.seconds()
            if self._unprobed_since is None:
                self._unprobed_since = now
            elif now - self._unprobed_since >= timeout:
                self._not_answering("no connection for the liveness probe")
            return None
        self._unprobed_since = None
        judged = defer.Deferred()
        # At the deadline, one more reactor turn first: a reactor that was
        # busy may not have read a PONG that is already there.
        late = self._reactor.callLater(timeout, self._reactor.callLater, 0, self._probe_late,
                                       judged, timeout)
        ping = self._prober.getConnection(peek=True)
        ping.addCallback(lambda conn: conn.ping())
        ping.addBoth(self._probe_answered, judged, late)
        return judged

    def _probe_answered(self, reply, judged, late):
        if late.active():
            late.cancel()
        if not judged.called:
            judged.callback(None)
        if not isinstance(reply, Failure):
            if not self._answering:  # even late: Redis answers now
                self._answering = True
                self.log.info("Redis {target} answers again", target=str(self.target))
                self._changed()
        elif reply.check(txredisapi.ResponseError):  # LOADING, BUSY, ...
            self._not_answering(f"PING answered {reply.getErrorMessage()}")
        elif reply.check(txredisapi.TimeoutError, defer.TimeoutError):
            self._not_answering("no answer to a liveness probe (PING)")
        # A lost connection is the pool's news (_pool_changed).

    def _probe_late(self, judged, timeout):
        if not judged.called:
            judged.callback(None)
            self._not_answering(f"no answer to a liveness probe (PING) within {timeout:g}s")

    def _not_answering(self, why):
        """Down at once, and the operations in flight fail now rather than at
        their own timeouts (each outcome is unknown: it may still run)."""
        if not self._answering:
            return
        self._answering = False
        self.log.warn("Redis {target}: {why}; down until it answers", target=str(self.target),
                      why=why)
        for d in list(self._in_flight):
            d.cancel()
        self._changed()

    def _pool_changed(self, factory, added):
        """``added``: the connection that joined ``factory``'s pool, if any."""
        if factory is self._subscriber:
            if added is not None:
                self._subscribe(added)
            return
        if factory is self._prober:
            return  # what counts is the answers to its PINGs
        if added is not None:
            self._answering = True  # Redis answered the connection's set-up
        self._changed()

    def _changed(self):
        up = self._answering and self._factory is not None and any(
            c.connected for c in self._factory.pool)
        if up == self.up:
            return
        self.up = up
        if up:
            self.log.info("Redis {target} connected", target=str(self.target))
        elif self._factory is not None and self._answering:
            self.log.warn("Redis {target} connection lost; reconnecting",
                          target=str(self.target))
        for observer in list(self._observers):
            try:
                observer(up)
            except Exception:
                self.log.failure("Redis up/down observer failed")

    # --- the subscription ---------------------------------------------------

    def _subscribe(self, conn):
        channel, _ = self._channel
        d = conn.subscribe(channel)
        d.addCallbacks(lambda _: self._heard(None), self._subscribe_failed)

    def _subscribe_failed(self, failure):
        self.log.warn("Redis {target}: subscription failed ({why}); news arrives with the "
                      "periodic check only", target=str(self.target),
                      why=failure.getErrorMessage())

    def _heard(self, message):
        try:
            self._channel[1](message)
        except Exception:
            self.log.failure("Redis message handler failed")
