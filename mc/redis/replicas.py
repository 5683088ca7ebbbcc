"""Whether the replicas a claim needs are there: short as soon as a claim
found fewer online than required (NOREPLICAS) or a WAIT fell short, or an
ownership read counted too few online; enough again only after
``REPLICAS_HOLD`` seconds of enough online, so a lagging replica does not
make health flap."""

from twisted.logger import Logger

REPLICAS_HOLD = 5.0


class Replicas:
    """``acks``: the acknowledgements a claim needs; ``changed()`` is called
    when ``short`` flips."""

    log = Logger()

    def __init__(self, acks, clock, target, changed):
        self.acks = acks
        self._clock = clock
        self._target = target
        self._changed = changed
        self._short_since = None

    @property
    def short(self):
        return self._short_since is not None

    def claimed(self, short):
        """A claim found the replicas short (True) or enough (False)."""
        if short:
            if self._short_since is None:
                self.log.warn("Redis {target}: fewer replicas than a claim needs ({acks}); "
                              "unavailable until they are back", target=str(self._target),
                              acks=self.acks)
            self._short_since = self._clock.seconds()
        else:
            self._short_since = None
        self._changed()

    def counted(self, online):
        """An ownership read counted ``online`` replicas."""
        if online < self.acks:
            self.claimed(True)
        elif self.short and self._clock.seconds() - self._short_since >= REPLICAS_HOLD:
            self.claimed(False)
