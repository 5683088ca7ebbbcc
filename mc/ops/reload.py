"""SIGHUP or a file change (``mc.ops.watch``): every secret and certificate
file read again, without a restart.

The files are read and parsed on a thread (they are small, but the reactor
never waits on a disk), then what parsed is put in use on the reactor: new
calls, connections and sessions use it, those in flight keep what they
started with. A file that no longer parses keeps its previous value, and an
error names its setting, never its content.

A certificate and its key are applied only as a pair. Rotated one file
after the other, the first read finds a new certificate with the old key
(or the reverse): the old pair keeps serving while the setting waits up to
``pair_grace`` seconds for the other file (whose change reloads again);
still not a pair after that, an error names the settings and the old pair
stays.

A rotated binding secret signs every binding token issued from then on;
each participant's token signed by a previous one goes on verifying until it
is replaced, however long ago the rotation was (``mc.binding``).
"""

from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.logger import Logger

from mc.binding import BindingKeys
from mc.errors import ConfigError, KeyMismatch

OUTCOMES = ("ok", "error")


@dataclass(frozen=True)
class Reloadable:
    """One setting a reload reads again: ``load()`` (on a thread) reads and
    parses it, raising ConfigError when it cannot (KeyMismatch: a
    certificate and key not yet a pair); ``apply(value)`` (on the reactor)
    puts the new value in use; ``stop()``, if any, cancels what ``apply``
    left pending when the MC stops; ``paths``: the files ``load`` reads,
    which the file watcher watches."""

    setting: str
    load: object
    apply: object
    stop: object = None
    paths: tuple = ()


class BindingRotation:
    """Puts a new binding secret in use in ``joins`` (``JoinService``): it
    signs at once; tokens the previous ones signed verify through the proof
    each participant keeps (``mc.binding``), so nothing is dropped here."""

    log = Logger()

    def __init__(self, joins, secret):
        self._joins = joins
        self._secret = secret

    def __repr__(self):
        return "<BindingRotation, redacted>"

    def rotate(self, secret):
        """Rotate to ``secret`` (a Secret), unless it is the one in use."""
        if secret == self._secret:
            return
        self._secret = secret
        self._joins.binding = BindingKeys(secret.reveal())
        self.log.info("binding secret rotated; tokens of the previous ones verify until "
                      "their participants' next JoinResponse")


class Reloader(Service):
    """Reads every ``Reloadable`` again on ``reload()`` (SIGHUP, a file
    change) and counts each reload in ``mc_config_reloads_total{outcome}``.
    ``in_thread(fn)`` runs ``fn`` off the reactor and gives a Deferred of
    its result; ``pair_grace``: how long a certificate waits for its key
    (or the reverse)."""

    name = "reload"
    log = Logger()

    def __init__(self, reloadables, reactor, metrics, in_thread=None, pair_grace=30.0):
        self._reloadables = tuple(reloadables)
        self._outcomes = {o: metrics.config_reloads.labels(o) for o in OUTCOMES}
        self._clock = reactor
        self._in_thread = in_thread or (
            lambda fn: threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn))
        self._pair_grace = pair_grace
        # setting -> when it was first found unpaired, and the reload at its grace's end
        self._unpaired: dict[str, tuple[float, object]] = {}
        self._reading = False
        self._again = False
        self._trigger = "SIGHUP"
        self._waiters = []

    @property
    def paths(self):
        """Every file some setting reloads from: what the watcher watches."""
        return tuple(dict.fromkeys(p for r in self._reloadables for p in r.paths))

    def stopService(self):
        for reloadable in self._reloadables:
            if reloadable.stop is not None:
                reloadable.stop()
        for _, call in self._unpaired.values():
            if call.active():
                call.cancel()
        self._unpaired.clear()
        return super().stopService()

    def reload(self, trigger="SIGHUP"):
        """Read every file again and put what parses in use. A reload asked
        for during one makes one more after it; the Deferred fires when no
        reload is left to do. ``trigger`` names the cause in the log."""
        done = defer.Deferred()
        self._waiters.append(done)
        self._trigger = trigger
        if self._reading:
            self._again = True
        else:
            self._read()
        return done

    def _read(self):
        self._reading, self._again = True, False
        trigger = self._trigger
        d = self._in_thread(self._thd_load_all)
        d.addCallback(self._apply, trigger)
        d.addErrback(lambda failure: self.log.failure("reload failed", failure))
        d.addBoth(self._read_done)

    def _read_done(self, _):
        self._reading = False
        if self._again and self.running:
            self._read()
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _thd_load_all(self):
        """``(reloadable, value, error)`` for each; on a worker thread."""
        loaded = []
        for reloadable in self._reloadables:
            try:
                loaded.append((reloadable, reloadable.load(), None))
            except Exception as e:
                loaded.append((reloadable, None, e))
        return loaded

    def _apply(self, loaded, trigger):
        refused = waiting = 0
        for reloadable, value, error in loaded:
            if isinstance(error, KeyMismatch) and self._waits_for_partner(reloadable, trigger):
                waiting += 1
                continue
            if error is not None:
                self.log.error("{trigger}: {setting} keeps its previous value: {why}",
                               trigger=trigger, setting=reloadable.setting,
                               why=_why(reloadable, error))
                refused += 1
                continue
            self._paired(reloadable)
            try:
                reloadable.apply(value)
            except Exception:
                self.log.failure("{trigger}: {setting} could not be put in use",
                                 trigger=trigger, setting=reloadable.setting)
                refused += 1
        self._outcomes["error" if refused else "ok"].inc()
        self.log.info("{trigger}: {applied} of {count} secret and certificate settings read "
                      "again and used by new calls, connections and sessions; {refused} "
                      "kept as they were, {waiting} waiting for the other file of a pair",
                      trigger=trigger, applied=len(loaded) - refused - waiting,
                      count=len(loaded), refused=refused, waiting=waiting)

    def _waits_for_partner(self, reloadable, trigger):
        """A certificate and key that are not a pair: True while the
        setting is within its grace (the old pair serves meanwhile; a
        reload is due at the grace's end), False once the grace is over."""
        now = self._clock.seconds()
        if reloadable.setting not in self._unpaired:
            call = self._clock.callLater(self._pair_grace, self.reload, "pair grace over")
            self._unpaired[reloadable.setting] = (now, call)
            self.log.info("{trigger}: {setting}: the certificate and key are not a pair yet; "
                          "the previous pair serves while waiting up to {grace:g}s for the "
                          "other file", trigger=trigger, setting=reloadable.setting,
                          grace=self._pair_grace)
            return True
        return now - self._unpaired[reloadable.setting][0] < self._pair_grace

    def _paired(self, reloadable):
        """The setting read as a pair: no more waiting for it."""
        since = self._unpaired.pop(reloadable.setting, None)
        if since is not None and since[1].active():
            since[1].cancel()


def _why(reloadable, error):
    """What was wrong, safe to log: a ConfigError names the file and the
    problem, never what is in it; anything else is named by its type alone."""
    if not isinstance(error, ConfigError):
        return type(error).__name__
    return error.problem if error.option == reloadable.setting else str(error)
