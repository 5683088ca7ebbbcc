"""A TCP proxy between an MC and Redis that misbehaves on demand, for fault
tests: ``pass`` (forward), ``blackhole`` (packets vanish: connections and
new ones stay open, nothing crosses; what was sent is delivered when the
path heals, as TCP's retransmissions would), ``reset`` (every connection,
and each new one, gets a RST), ``delay`` (each chunk crosses ``seconds``
late), ``hold_replies`` (a matching command's reply, and what follows it on
its connection, waits for ``release``: a command kept in flight), and
``drop_replies`` (Redis runs a matching command but its reply
never reaches the client: the connection is cut (RST) where the reply would
have crossed, as when a path or a host dies just then; a reply cannot
vanish from a TCP stream that goes on).

One thread with a selector, standard library only. The RESP streams are
parsed in both directions so that the n-th reply is known to answer the
n-th command of a connection.
"""

import contextlib
import selectors
import socket
import struct
import threading
import time

PASS, BLACKHOLE, RESET, DELAY = "pass", "blackhole", "reset", "delay"


def _resp_end(buf, pos):
    """``(value, end)`` of the RESP value at ``buf[pos:]``, or None when it
    is not complete yet. Bulk strings and simple values are bytes."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return None
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:nl])
    end = nl + 2
    if kind in (b"+", b"-", b":"):
        return line, end
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, end
        if len(buf) < end + n + 2:
            return None
        return bytes(buf[end:end + n]), end + n + 2
    if kind == b"*":
        n = int(line)
        items = []
        for _ in range(max(n, 0)):
            parsed = _resp_end(buf, end)
            if parsed is None:
                return None
            item, end = parsed
            items.append(item)
        return items, end
    raise ValueError(f"not RESP: {bytes(buf[pos:pos + 20])!r}")


class _Side:
    """One direction of a connection: bytes read from ``src``, waiting to be
    written to ``dst``, each chunk with the time it may cross."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.parse_buf = bytearray()
        self.out = []  # [(due, bytes)]
        self.held = None  # the held reply, until release()
        self.after_held = bytearray()  # what arrived after it, not parsed yet


class _Pair:
    def __init__(self, client, server):
        self.client, self.server = client, server
        self.up = _Side(client, server)  # commands
        self.down = _Side(server, client)  # replies
        self.commands = 0  # commands parsed so far
        self.replies = 0  # replies parsed so far
        self.dropped = set()  # indexes of commands whose reply is dropped
        self.holding = set()  # indexes of commands whose reply is held


class FaultProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``target`` (host, port)."""

    def __init__(self, target, port=0):
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._mode = PASS
        self._delay = 0.0
        self._drop = None  # (predicate(args), remaining count)
        self._hold = None  # predicate(args) of the replies to hold
        self.dropped = 0  # replies dropped so far
        self.held = 0  # replies held so far
        self._pairs = []
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._release = False
        self._thread = threading.Thread(target=self._thd_run, name="fault-proxy", daemon=True)
        self._thread.start()

    def url(self, db=0, password=None):
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    # --- the faults -------------------------------------------------------

    def set_pass(self):
        self._set(PASS)

    def blackhole(self):
        self._set(BLACKHOLE)

    def reset(self):
        """RST every connection now and every new one until ``set_pass``."""
        self._set(RESET)

    def delay(self, seconds):
        self._delay = float(seconds)
        self._set(DELAY)

    def drop_replies(self, predicate, count=1):
        """Drop the replies to the next ``count`` commands for which
        ``predicate(args)`` (the command's arguments as bytes) is true, and
        cut their connections there."""
        with self._lock:
            self._drop = (predicate, count)
        self._wake()

    def hold_replies(self, predicate):
        """Hold the replies to commands for which ``predicate(args)`` is
        true (and everything after them on their connections) until
        ``release``."""
        with self._lock:
            self._hold = predicate
        self._wake()

    def release(self):
        """Deliver every held reply; hold no more."""
        with self._lock:
            self._hold = None
            self._release = True
        self._wake()

    @property
    def connections(self):
        with self._lock:
            return len(self._pairs)

    def _set(self, mode):
        with self._lock:
            self._mode = mode
        self._wake()

    def _wake(self):
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self):
        self._stopping = True
        self._wake()
        self._thread.join(5)
        for pair in list(self._pairs):
            self._thd_close(pair)
        self._selector.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    # --- the thread ---------------------------------------------------------

    def _thd_run(self):
        while not self._stopping:
            timeout = self._thd_next_due()
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._thd_accept()
                elif key.data == "wake":
                    key.fileobj.recv(4096)
                else:
                    pair, side = key.data
                    self._thd_read(pair, side)
            with self._lock:
                mode = self._mode
                release, self._release = self._release, False
            if release:
                for pair in list(self._pairs):
                    side = pair.down
                    if side.held is not None:
                        side.out.append((time.monotonic(), bytes(side.held)))
                        side.held = None
                        rest, side.after_held = bytes(side.after_held), bytearray()
                        if rest:
                            self._thd_forward(pair, side, rest)
            if mode == RESET:
                for pair in list(self._pairs):
                    self._thd_close(pair, rst=True)
            for pair in list(self._pairs):
                self._thd_flush(pair, mode)

    def _thd_next_due(self):
        dues = [due for p in self._pairs for side in (p.up, p.down) for due, _ in side.out]
        if not dues:
            return 0.2
        return max(0.0, min(min(dues) - time.monotonic(), 0.2))

    def _thd_accept(self):
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(self.target, timeout=2)
        except OSError:
            self._thd_rst(client)
            return
        for s in (client, server):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        with self._lock:
            self._pairs.append(pair)
        self._selector.register(client, selectors.EVENT_READ, (pair, pair.up))
        self._selector.register(server, selectors.EVENT_READ, (pair, pair.down))

    def _thd_read(self, pair, side):
        try:
            data = side.src.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._thd_close(pair)
            return
        if side.held is not None:
            side.after_held += data
            return
        self._thd_forward(pair, side, data)

    def _thd_forward(self, pair, side, data):
        data, cut = self._thd_filter(pair, side, data)
        if cut:
            self._thd_flush(pair, PASS)  # what came before the lost reply
            self._thd_close(pair, rst=True)
            return
        if data:
            with self._lock:
                delay = self._delay if self._mode == DELAY else 0.0
            side.out.append((time.monotonic() + delay, data))

    def _thd_filter(self, pair, side, data):
        """Parse whole RESP values; count commands, drop matching replies.
        Returns the bytes to forward and whether a reply was dropped (the
        connection is cut after what comes before it)."""
        side.parse_buf += data
        kept = bytearray()
        pos = 0
        while True:
            parsed = _resp_end(side.parse_buf, pos)
            if parsed is None:
                break
            value, end = parsed
            chunk = side.parse_buf[pos:end]
            pos = end
            if side is pair.up:
                self._thd_command(pair, value)
                kept += chunk
            else:
                index, pair.replies = pair.replies, pair.replies + 1
                if index in pair.dropped:
                    pair.dropped.discard(index)
                    self.dropped += 1
                    if kept:
                        side.out.append((time.monotonic(), bytes(kept)))
                    return b"", True
                if index in pair.holding:
                    pair.holding.discard(index)
                    self.held += 1
                    side.held = bytes(chunk)
                    side.after_held = bytearray(side.parse_buf[pos:])
                    side.parse_buf.clear()
                    return bytes(kept), False
                kept += chunk
        del side.parse_buf[:pos]
        return bytes(kept), False

    def _thd_command(self, pair, value):
        index, pair.commands = pair.commands, pair.commands + 1
        with self._lock:
            if self._hold is not None and isinstance(value, list) and self._hold(value):
                pair.holding.add(index)
            drop = self._drop
            if drop is None or not isinstance(value, list) or not drop[0](value):
                return
            remaining = drop[1] - 1
            self._drop = (drop[0], remaining) if remaining > 0 else None
        pair.dropped.add(index)

    def _thd_flush(self, pair, mode):
        if mode == BLACKHOLE or pair not in self._pairs:
            return
        now = time.monotonic()
        for side in (pair.up, pair.down):
            while side.out and side.out[0][0] <= now:
                _, data = side.out.pop(0)
                try:
                    side.dst.setblocking(True)
                    side.dst.sendall(data)
                    side.dst.setblocking(False)
                except OSError:
                    self._thd_close(pair)
                    return

    def _thd_close(self, pair, rst=False):
        with self._lock:
            if pair not in self._pairs:
                return
            self._pairs.remove(pair)
        for s in (pair.client, pair.server):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            if rst:
                self._thd_rst(s)
            else:
                s.close()

    @staticmethod
    def _thd_rst(s):
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
