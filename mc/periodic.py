"""PeriodicCall: the one way periodic work runs here.

Twisted's LoopingCall and TimerService stop for good on the first exception;
here a failure is logged and the schedule goes on. Runs never overlap: the
next one is due ``interval()`` seconds after the last one started (at once if
that has passed by the time it ends). The interval is asked afresh at every
scheduling, so a change (the GC dictating new heartbeat intervals) takes
effect with ``reschedule()`` rather than one old interval later.
"""

from twisted.internet import defer
from twisted.logger import Logger


class PeriodicCall:
    """Calls ``fn()`` (which may return a Deferred) every ``interval()``
    seconds on ``clock``; ``name`` is for the logs."""

    log = Logger()

    def __init__(self, interval, fn, clock, name):
        self._interval = interval
        self._fn = fn
        self._clock = clock
        self.name = name
        self.active = False
        self._call = None  # the DelayedCall of the next run
        self._running = None  # the run in flight: a Deferred that never fails
        self._again = False  # run again as soon as the run in flight ends
        self._waiting = []  # Deferreds of run_now() callers, fired after the next run
        self._last = 0.0  # when the last run started (or the schedule did)

    def start(self, now=False):
        """Run now or after one interval, then every interval."""
        self.active = True
        self._last = self._clock.seconds()
        if now:
            self._run()
        else:
            self._schedule()

    def stop(self):
        """No more runs; fires once the run in flight, if any, has ended."""
        self.active = False
        self._again = False
        self._cancel()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        if self._running is None:
            return defer.succeed(None)
        done = defer.Deferred()
        self._running.addBoth(lambda _: done.callback(None))
        return done

    def reschedule(self):
        """The interval changed: the next run is due one (new) interval
        after the last one started, or at once if that has passed."""
        if self.active and self._running is None:
            self._cancel()
            self._schedule()

    def run_now(self):
        """Run at once, or right after the run in flight (which may have
        started too early to see what prompted this call). Fires when that
        run has ended."""
        if not self.active:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        if self._running is not None:
            self._again = True
        else:
            self._cancel()
            self._run()
        return d

    def _cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self):
        try:
            interval = float(self._interval())
        except Exception:
            self.log.failure("{name}: interval unavailable; trying again in 1s", name=self.name)
            interval = 1.0
        delay = max(0.0, self._last + interval - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._run)

    def _run(self):
        self._call = None
        self._last = self._clock.seconds()
        waiting, self._waiting = self._waiting, []
        d = defer.maybeDeferred(self._fn)
        d.addErrback(lambda f: self.log.failure("{name} failed", failure=f, name=self.name))
        self._running = d
        d.addCallback(self._ran, waiting)

    def _ran(self, _, waiting):
        self._running = None
        for d in waiting:
            d.callback(None)
        if not self.active:
            return
        if self._again:
            self._again = False
            self._call = self._clock.callLater(0, self._run)
        else:
            self._schedule()
