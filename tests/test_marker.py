"""The marker's values and what a marker found in Redis says."""

from twisted.internet.task import Clock

from mc.redis.marker import Marker


def test_values_grow_and_a_restarted_mc_starts_above_its_previous_life():
    clock = Clock()
    clock.advance(1000)
    first = Marker(clock)
    values = [first.next() for _ in range(3)]
    assert values == sorted(set(values)) and values[0] == 1_000_000
    clock.advance(0.001)
    assert Marker(clock).next() > values[0]


def test_a_loss_is_a_marker_below_what_was_acknowledged_before_the_read():
    m = Marker(Clock())
    v1 = m.next()
    m.acked(v1)
    floor = m.acknowledged  # a read is sent ...
    m.next()
    m.acked(m.next())  # ... and a claim sent after it is acknowledged first
    assert m.intact(str(v1), floor), "the claim may have run after the read"
    assert m.intact(str(v1 + 5), floor)
    assert not m.intact(str(v1 - 1), floor), "rolled back"
    assert not m.intact("", floor), "gone"
    assert not m.intact("junk", floor)
