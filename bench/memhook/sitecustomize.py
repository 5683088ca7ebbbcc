"""Diagnostic hooks for ``bench/participants.py --tracemalloc`` and
``--gc-log``: put this directory on the MC's PYTHONPATH and set

- ``BENCH_TRACEMALLOC_DUMP=<path>``: the MC runs under tracemalloc
  (``BENCH_TRACEMALLOC_FRAMES`` frames a trace, default 6) and each SIGRTMIN
  writes a snapshot to ``<path>.<k>`` (k = 0, 1, ...);
- ``BENCH_GC_LOG=<path>``: every collection of the cyclic garbage collector
  that took over 1 ms, or of generation 2, is appended to ``<path>`` as
  ``monotonic generation milliseconds collected``;
- ``BENCH_OBJECTS_DUMP=<path>``: each SIGRTMIN+1 writes a census of the
  objects the collector tracks (count, by type) to ``<path>.<k>``, and each
  SIGRTMIN+2 runs a full collection and writes what it found and took to
  ``<path>.collect.<k>``: the cyclic garbage waiting for one.

Nothing of the MC is changed; without the variables this does nothing. (The
variants this file once applied, the collector's settings, the trimmed
handshake buffers, the broken cycles and the larger UDP buffer, are the MC's
own since issues 11 and 18.)"""

import os

if os.environ.get("BENCH_TRACEMALLOC_DUMP"):
    import signal
    import tracemalloc

    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "6")))
    _dumps = [0]

    def _dump(signum, frame):
        path = f"{os.environ['BENCH_TRACEMALLOC_DUMP']}.{_dumps[0]}"
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(path + ".tmp")
        os.replace(path + ".tmp", path)
        _dumps[0] += 1

    signal.signal(signal.SIGRTMIN, _dump)

if os.environ.get("BENCH_GC_LOG"):
    import gc
    import time

    _log = open(os.environ["BENCH_GC_LOG"], "a", buffering=1)  # noqa: SIM115 - for the process's life
    _started = [0.0]

    def _gc_callback(phase, info):
        if phase == "start":
            _started[0] = time.monotonic()
            return
        now = time.monotonic()
        ms = (now - _started[0]) * 1000
        if ms > 1.0 or info["generation"] == 2:
            _log.write(f"{now:.3f} {info['generation']} {ms:.2f} {info['collected']}\n")

    gc.callbacks.append(_gc_callback)

if os.environ.get("BENCH_OBJECTS_DUMP"):
    import collections
    import gc
    import json
    import signal

    _objects_dumps = [0]

    def _dump_objects(signum, frame):
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        path = f"{os.environ['BENCH_OBJECTS_DUMP']}.{_objects_dumps[0]}"
        with open(path + ".tmp", "w") as f:
            json.dump({"tracked": sum(counts.values()), "types": counts.most_common(60)}, f)
        os.replace(path + ".tmp", path)
        _objects_dumps[0] += 1

    signal.signal(signal.SIGRTMIN + 1, _dump_objects)

    _collects = [0]

    def _collect(signum, frame):
        import time

        started = time.monotonic()
        found = gc.collect()
        ms = (time.monotonic() - started) * 1000
        path = f"{os.environ['BENCH_OBJECTS_DUMP']}.collect.{_collects[0]}"
        with open(path + ".tmp", "w") as f:
            json.dump({"collected": found, "ms": round(ms, 1),
                       "tracked_after": len(gc.get_objects())}, f)
        os.replace(path + ".tmp", path)
        _collects[0] += 1

    signal.signal(signal.SIGRTMIN + 2, _collect)
