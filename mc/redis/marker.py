"""The values an MC writes to its marker key, and what the marker found in
Redis says: the marker only grows (``lua/_fence.lua``'s ``raise_marker``),
every claim and ownership read raises it, and a reply acknowledges the value
it carried. A marker found below an acknowledged value, or gone, means Redis
lost writes this MC saw acknowledged: a restart from an older snapshot, a
failover that lost writes, a flush. The key alone would only show the last."""


class Marker:
    """Values from ``clock``'s milliseconds (a restarted MC starts above its
    previous life's), each above the last."""

    def __init__(self, clock):
        self._clock = clock
        self._last = 0
        self.acknowledged = 0

    def next(self):
        value = max(self._last + 1, int(self._clock.seconds() * 1000))
        self._last = value
        return value

    def acked(self, value):
        """A reply showed that Redis holds ``value`` (or more)."""
        self.acknowledged = max(self.acknowledged, value)

    def intact(self, found, floor):
        """``found``: the marker before a read raised it ('' when gone);
        ``floor``: ``acknowledged`` when the read was sent (a value
        acknowledged later may have been written after the read ran). False
        when Redis lost what it acknowledged before."""
        return found.isdigit() and int(found) >= floor
