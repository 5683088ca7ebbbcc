"""Python's cyclic garbage collector kept out of the participants' latency.

A full collection walks every tracked object: at 2,000 participants about
780,000 of them, 350-615 ms with the reactor stopped, several times a minute
(bench/results.md). Three things keep it off the reactor's back: the QUIC
layer breaks a closed connection's cycles so reference counting frees it
(``mc.participants.quic``), what start-up allocated is frozen out of the
collector's sight (``gc.freeze``) once the tree has started, and the
thresholds make young collections rarer and full ones rarer still
(``MC_PYTHON_GC_THRESHOLDS``). Every collection's pause is observed into
``mc_python_gc_pause_seconds``.

The collector is the process's: a second MC in one process (tests) shares
it, so stop puts back the thresholds found and unfreezes.
"""

import gc
import time

from twisted.application.service import Service
from twisted.logger import Logger


class CollectorService(Service):
    """``thresholds``: ``(g0, g1, g2)`` for ``gc.set_threshold``, or None to
    leave the interpreter's and freeze nothing. ``observe(generation,
    seconds)`` gets every collection's pause."""

    name = "python-gc"
    log = Logger()

    def __init__(self, thresholds, observe, reactor, clock=time.perf_counter):
        self.thresholds = thresholds
        self._observe = observe
        self._reactor = reactor
        self._clock = clock
        self._started_at = None
        self._previous = None
        self._freeze_call = None

    def startService(self):
        super().startService()
        gc.callbacks.append(self._callback)
        if self.thresholds is not None:
            self._previous = gc.get_threshold()
            gc.set_threshold(*self.thresholds)
            # Once the services after this one have started (same reactor turn).
            self._freeze_call = self._reactor.callLater(0, self._freeze)

    def _freeze(self):
        """Collect start-up's garbage, then move every object left to the
        permanent generation, which no collection walks."""
        self._freeze_call = None
        gc.collect()
        gc.freeze()
        self.log.info("Python garbage collector: {frozen} start-up objects frozen, "
                      "thresholds {thresholds}", frozen=gc.get_freeze_count(),
                      thresholds=self.thresholds)

    def _callback(self, phase, info):
        if phase == "start":
            self._started_at = self._clock()
        elif self._started_at is not None:
            self._observe(info["generation"], self._clock() - self._started_at)
            self._started_at = None

    def stopService(self):
        super().stopService()
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self._freeze_call is not None:
            self._freeze_call.cancel()
            self._freeze_call = None
        if self._previous is not None:
            gc.unfreeze()
            gc.set_threshold(*self._previous)
            self._previous = None
