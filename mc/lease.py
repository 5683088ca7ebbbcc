"""The hosting lease: an MC may host its meetings only while it has recently
confirmed, through Redis, that none was taken from it.

Fencing keeps Redis's records right but cannot stop an MC that no longer
reaches Redis from serving: it would never read the news of a meeting the GC
placed elsewhere. So every successful ownership read renews the lease until
``bound()`` seconds after the read *started* (what Redis answered was true
then, not later), and when that moment passes without a new confirmation the
lease lapses: the MC sends its participants back to the GC and refuses joins
until a read (and the fenced write-back that follows it) succeeds again.
"""

from twisted.logger import Logger

#: Ownership reads per lease bound: a lease survives three lost or late
#: reads in a row.
READS_PER_BOUND = 4
#: The longest bound taken from the GC's fast interval: well below the GC's
#: 30 s staleness, after which it places an MC's meetings elsewhere.
MAX_DEFAULT_BOUND = 20.0


class Lease:
    """Valid from a confirmation until ``bound()`` seconds after it, on
    ``clock``; one timer, re-armed only when the expiry moves."""

    log = Logger()

    def __init__(self, clock, bound):
        self._clock = clock
        self._bound = bound
        self._expires = None  # when the lease lapses; None: never confirmed, or lapsed
        self.lapsed = False  # it lapsed and was not confirmed since
        self._timer = None
        self._observers = []

    @property
    def valid(self):
        return self._expires is not None and self._clock.seconds() < self._expires

    @property
    def bound(self):
        """Seconds a confirmation holds."""
        return float(self._bound())

    def on_change(self, observer):
        """Call ``observer(valid)`` when the lease lapses or is taken again."""
        self._observers.append(observer)

    def confirm(self, started):
        """A read that started at ``started`` showed nothing was taken."""
        expires = started + self.bound
        was_valid = self.valid
        if expires <= self._clock.seconds() or (
                self._expires is not None and expires <= self._expires):
            return
        self._expires = expires
        self.lapsed = False
        self._arm(expires)
        if not was_valid:
            self._tell(True)

    def stop(self):
        """No more timer (the MC stops)."""
        self._disarm()

    def _arm(self, when):
        delay = max(0.0, when - self._clock.seconds())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._lapse)

    def _disarm(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _lapse(self):
        self._disarm()
        if self._expires is None:
            return
        self._expires = None
        self.lapsed = True
        self.log.warn("hosting lease lapsed: Redis has not confirmed ownership for {bound:g}s",
                      bound=self.bound)
        self._tell(False)

    def _tell(self, valid):
        for observer in list(self._observers):
            try:
                observer(valid)
            except Exception:
                self.log.failure("lease observer failed")
