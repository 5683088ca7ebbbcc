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

Nothing of the MC is changed; without the variables this does nothing."""

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

# A variant for comparison, never the figure of record: the collector's
# thresholds (``BENCH_GC_THRESHOLD=g0,g1,g2``) and a gc.freeze() of what
# start-up allocated, ``BENCH_GC_FREEZE_AFTER`` seconds after start.
if os.environ.get("BENCH_GC_THRESHOLD"):
    import gc

    gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))

if os.environ.get("BENCH_GC_FREEZE_AFTER"):
    import gc
    import threading

    _freezer = threading.Timer(float(os.environ["BENCH_GC_FREEZE_AFTER"]), gc.freeze)
    _freezer.daemon = True
    _freezer.start()

# A variant for comparison, never the figure of record: two savings in
# aioquic's per-connection state that the MC could make itself.
# ``BENCH_AIOQUIC_TRIM=1``:
# - EPOCHS memoised: every QuicConnection builds its frame-handler table with
#   ~34 new frozensets of epochs (7 KiB, 34 objects the collector walks);
#   they are immutable, so one set of them can be shared;
# - once a server's handshake is complete, its three 16 KiB TLS output
#   buffers (one per epoch, allocated for the connection's whole life) are
#   replaced by empty ones: a QUIC server writes no TLS message after the
#   handshake unless it issues session tickets, which the MC does not.
if os.environ.get("BENCH_AIOQUIC_TRIM"):
    import functools

    from aioquic.buffer import Buffer
    from aioquic.quic import connection as _quic_connection

    _quic_connection.EPOCHS = functools.lru_cache(maxsize=None)(_quic_connection.EPOCHS)
    _original_crypto = _quic_connection.QuicConnection._handle_crypto_frame

    def _handle_crypto_frame(self, context, frame_type, buf):
        _original_crypto(self, context, frame_type, buf)
        # No attribute of our own on the connection: a new one would unshare
        # its __dict__ (3 KiB) and blur the figure.
        buffers = self._crypto_buffers
        if self._handshake_complete and not self._is_client and any(
                b.capacity for b in buffers.values()):
            for epoch in list(buffers):
                buffers[epoch] = Buffer(capacity=0)

    _quic_connection.QuicConnection._handle_crypto_frame = _handle_crypto_frame

# A variant for comparison, never the figure of record: what the MC could do
# when a QUIC connection ends (``BENCH_BREAK_CYCLES=1``). aioquic's
# QuicConnection is a reference cycle (its frame-handler table, loss
# recovery and TLS callbacks hold bound methods of it), and so are the MC's
# link and application objects; a closed connection is garbage only a full
# collection finds. Clearing them once the endpoint has forgotten the
# connection lets reference counting free them at once.
if os.environ.get("BENCH_BREAK_CYCLES"):
    from mc.participants import quic as _mc_quic

    _original_end = _mc_quic.QuicEndpoint._end

    def _end(self, link, event):
        known = link in self.connections
        _original_end(self, link, event)
        if known:
            app, link.app = link.app, None
            if app is not None:
                app.__dict__.clear()
            link.quic.__dict__.clear()

    _mc_quic.QuicEndpoint._end = _end

# A variant for comparison, never the figure of record: a larger receive
# buffer on the MC's UDP socket (``BENCH_UDP_RCVBUF=<bytes>``, capped by
# net.core.rmem_max). The default (net.core.rmem_default, 208 KiB here) holds
# a few hundred small datagrams: while the reactor is busy (a full
# collection, a burst of joins) the kernel drops what does not fit, and QUIC
# has to notice and retransmit it.
if os.environ.get("BENCH_UDP_RCVBUF"):
    import socket

    from twisted.internet import udp as _udp

    _original_bind = _udp.Port._bindSocket

    def _bindSocket(self):
        _original_bind(self)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                               int(os.environ["BENCH_UDP_RCVBUF"]))

    _udp.Port._bindSocket = _bindSocket
