"""The garbage collector's settings and pauses: set at start, frozen once
started, every pause in /metrics, and put back at stop."""

import gc

import pytest
from prometheus_client import generate_latest
from twisted.internet.task import Clock

from mc.ops.collector import CollectorService
from mc.ops.metrics import Metrics


@pytest.fixture
def collector_state():
    """The process's collector as it was, put back whatever a test did."""
    thresholds = gc.get_threshold()
    yield thresholds
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def _samples(metrics, generation):
    for family in metrics.registry.collect():
        if family.name == "mc_python_gc_pause_seconds":
            return {s.name: s.value for s in family.samples
                    if s.labels.get("generation") == generation and "le" not in s.labels}
    return {}


def test_thresholds_then_freeze_once_started_and_all_put_back_at_stop(collector_state):
    clock, metrics = Clock(), Metrics()
    service = CollectorService((50_000, 20, 100), metrics.observe_python_gc, clock)
    service.startService()
    assert gc.get_threshold() == (50_000, 20, 100)
    assert gc.get_freeze_count() == 0  # not before the services after it have started
    clock.advance(0)
    assert gc.get_freeze_count() > 1000
    service.stopService()
    assert gc.get_threshold() == collector_state and gc.get_freeze_count() == 0
    assert service._callback not in gc.callbacks


def test_every_collection_pause_is_observed_by_generation(collector_state):
    metrics = Metrics()
    service = CollectorService((50_000, 20, 100), metrics.observe_python_gc, Clock())
    service.startService()
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        service.stopService()
    full, young = _samples(metrics, "2"), _samples(metrics, "0")
    assert full["mc_python_gc_pause_seconds_count"] >= 1
    assert young["mc_python_gc_pause_seconds_count"] >= 1
    assert 0 < full["mc_python_gc_pause_seconds_sum"] < 10
    assert b'mc_python_gc_pause_seconds_bucket{generation="2"' in generate_latest(metrics.registry)
    gc.collect(2)  # after stop: no longer observed
    assert _samples(metrics, "2") == full


def test_python_leaves_the_interpreter_s_collector_alone(collector_state):
    clock, metrics = Clock(), Metrics()
    service = CollectorService(None, metrics.observe_python_gc, clock)
    service.startService()
    clock.advance(1)
    assert gc.get_threshold() == collector_state and gc.get_freeze_count() == 0
    gc.collect(1)
    service.stopService()
    assert _samples(metrics, "1")["mc_python_gc_pause_seconds_count"] >= 1
    assert gc.get_threshold() == collector_state


def test_stop_before_the_freeze_cancels_it(collector_state):
    clock = Clock()
    service = CollectorService((1000, 10, 10), lambda g, s: None, clock)
    service.startService()
    service.stopService()
    clock.advance(1)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == collector_state
