"""The MC's health as the GC and operators see it, and the periodic monitor
that measures reactor lag and samples CPU and memory.

Health is derived, never stored: DRAINING while draining, UNHEALTHY while
Redis is unreachable or the hosting lease (mc/lease.py) has lapsed, DEGRADED
under sustained CPU/memory pressure or reactor lag, HEALTHY otherwise.
PENDING is the GC's word for "not heard yet" and never ours.

CPU, memory and the reactor's lag are averaged over a window (the GC's
comprehensive interval): a burst (a drain's rejoins: 2,000 joins are about
10 s of CPU, and the reactor lags while it works through them) must not turn
the MC away from the joins it is taking, only load that lasts. The last
tick's lag alone is what liveness (/healthz) reads.
"""

from collections import deque

from twisted.application.service import Service
from twisted.logger import Logger

from mc.periodic import PeriodicCall

HEALTHY = "HEALTHY"
DEGRADED = "DEGRADED"
UNHEALTHY = "UNHEALTHY"
DRAINING = "DRAINING"

PRESSURE_PERCENT = 90.0


class Health:
    """Inputs to the health decision and the observers of its changes."""

    log = Logger()

    def __init__(self, redis_up, lag_threshold, hosting=lambda: True):
        self._redis_up = redis_up
        self._hosting = hosting
        self.lag_threshold = lag_threshold
        self.draining = False
        self.cpu_percent = 0.0
        self.memory_percent = 0.0
        self.reactor_lag = 0.0  # the last tick's
        self.sustained_lag = 0.0  # averaged over the window
        self._observers = []
        self._last = None

    @property
    def redis_up(self):
        return bool(self._redis_up())

    @property
    def hosting(self):
        """The hosting lease holds: joins may be admitted."""
        return bool(self._hosting())

    @property
    def status(self):
        if self.draining:
            return DRAINING
        if not self.redis_up or not self.hosting:
            return UNHEALTHY
        if (self.cpu_percent >= PRESSURE_PERCENT or self.memory_percent >= PRESSURE_PERCENT
                or self.sustained_lag > self.lag_threshold):
            return DEGRADED
        return HEALTHY

    def on_change(self, observer):
        """Call ``observer(status)`` whenever the status changes."""
        self._observers.append(observer)

    def set_draining(self, draining):
        self.draining = bool(draining)
        self.check()

    def check(self):
        """Re-evaluate and tell observers if the status changed."""
        status = self.status
        if status == self._last:
            return status
        previous, self._last = self._last, status
        if previous is not None:
            self.log.info("health {previous} -> {status}", previous=previous, status=status)
        for observer in list(self._observers):
            try:
                observer(status)
            except Exception:
                self.log.failure("health observer failed")
        return status


class WindowMean:
    """The mean of the samples of the last ``window()`` seconds, taken about
    every ``sample_every`` seconds, the time before the first sample counting
    as samples of zero: a window's worth of samples at 100 % is needed to
    reach 100 %. A late sample counts once (a reactor that stalls once
    ticks once), so a lag that lasts weighs more than one long stall."""

    def __init__(self, window, sample_every):
        self._window = window
        self._sample_every = sample_every
        self._samples = deque()  # (time, value), oldest first
        self._first = None

    def add(self, now, value):
        """Record ``value`` at ``now`` and return the mean over the window."""
        window = self._window()
        if self._first is None:
            self._first = now
        samples = self._samples
        samples.append((now, value))
        while samples[0][0] <= now - window:
            samples.popleft()
        covered = now - self._first + self._sample_every
        missing = max(0.0, window - covered) / self._sample_every
        return sum(v for _, v in samples) / (len(samples) + missing)


class HealthMonitor(Service):
    """Ticks every ``interval`` seconds: the lateness of each tick is the
    reactor's lag, and each tick re-checks health, so a Redis outage or
    recovery is noticed within one tick. CPU and memory are sampled every
    ``sample_every`` seconds; they and the lag are averaged over
    ``window()`` seconds."""

    name = "health-monitor"
    log = Logger()

    def __init__(self, health, probe, clock, *, window, interval=0.25, sample_every=2.0,
                 on_lag=None):
        self._health = health
        self._probe = probe
        self._clock = clock
        self.interval = interval
        self.sample_every = sample_every
        self._on_lag = on_lag
        self._ticks = PeriodicCall(lambda: self.interval, self._tick, clock,
                                   "health monitor tick")
        self._expected = None
        self._next_sample = 0.0
        self._cpu = WindowMean(window, sample_every)
        self._memory = WindowMean(window, sample_every)
        self._lag = WindowMean(window, interval)

    def startService(self):
        super().startService()
        self._expected = self._clock.seconds() + self.interval
        self._ticks.start()

    def stopService(self):
        super().stopService()
        return self._ticks.stop()

    def _tick(self):
        # Each tick is due one interval after the last one started.
        now = self._clock.seconds()
        lag = max(0.0, now - self._expected)
        self._expected = now + self.interval
        h = self._health
        h.reactor_lag = lag
        h.sustained_lag = self._lag.add(now, lag)
        if now >= self._next_sample:
            self._next_sample = now + self.sample_every
            h.cpu_percent = self._cpu.add(now, self._probe.cpu_percent())
            h.memory_percent = self._memory.add(now, self._probe.memory_percent())
        if self._on_lag is not None:
            self._on_lag(lag)
        h.check()
