"""A real ``redis-server`` in a subprocess, for tests and the demo.

Standard library only (no redis client), so that it can inspect keys from any
test, blocking, without a reactor.
"""

import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class RedisReplyError(Exception):
    """Redis answered ``command`` with an error reply."""


def free_port(kind=socket.SOCK_STREAM):
    """A TCP (or, with ``socket.SOCK_DGRAM``, UDP) port on 127.0.0.1 that
    nothing uses right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port():
    return free_port(socket.SOCK_DGRAM)


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _read_reply(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by redis-server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line!r}")


class RedisProcess:
    """``redis-server`` on 127.0.0.1 without persistence, unless ``persist``:
    then every write is in an fsynced append-only file, so that a restart,
    even after SIGKILL, comes back with the same data. ``password`` turns on
    ``--requirepass`` (and goes into ``url``). ``tls``: ``(cert_path,
    key_path, ca_path)`` to serve TLS only, on ``port`` (``url`` is then
    rediss://; clients are not asked for a certificate)."""

    def __init__(self, port=None, dir=None, args=(), password=None,
                 executable="redis-server", persist=False, tls=None):
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.persist = persist
        self._args = tuple(args)
        self._executable = executable
        self._tmp = None if dir else tempfile.TemporaryDirectory(prefix="mc-redis-")
        self.dir = dir or self._tmp.name
        self._proc = None
        self._log = None

    def __repr__(self):
        return f"<RedisProcess 127.0.0.1:{self.port} running={self.running}>"

    @property
    def url(self):
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout=START_TIMEOUT):
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        argv = self._argv()
        self._log = open(os.path.join(self.dir, "redis.log"), "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._close_log()
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}: "
                                   f"{self._log_tail()}")
            try:
                if self.command("PING", timeout=0.5) == "PONG":
                    return self
            except (OSError, RedisReplyError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING within {timeout}s: "
                                   f"{self._log_tail()}")
            time.sleep(0.02)

    def _argv(self):
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else \
            ["--appendonly", "no"]
        argv = [self._executable, "--save", "", *aof, *self._listen_args(), "--dir", self.dir]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv + list(self._args)

    def _listen_args(self):
        """Plaintext on ``port``, or with ``tls`` TLS only (its replication
        and Sentinel's links too)."""
        if not self.tls:
            return ["--port", str(self.port), "--bind", "127.0.0.1"]
        cert, key, ca = self.tls
        return ["--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
                "--tls-auth-clients", "no", "--tls-replication", "yes"]

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL if it has not exited by the deadline."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._proc = None
        self._close_log()

    def kill(self):
        """SIGKILL: the server vanishes without closing its connections itself."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(STOP_TIMEOUT)
        self._proc = None
        self._close_log()

    def pause(self):
        """SIGSTOP: the server keeps its connections open but answers nothing."""
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self._proc.send_signal(signal.SIGCONT)

    def cleanup(self):
        """Stop and remove the temporary directory, if this object made it."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def command(self, *args, timeout=5.0):
        """Send one command on a fresh connection and return the decoded reply
        (str, int, None or a list); an error reply raises RedisReplyError."""
        with self._connect(timeout) as s:
            payload = _encode(args)
            if self.password:
                payload = _encode(("AUTH", self.password)) + payload
            s.sendall(payload)
            with s.makefile("rb") as f:
                if self.password:
                    _read_reply(f)
                reply = _read_reply(f)
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def _connect(self, timeout):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if not self.tls:
            return s
        context = ssl.create_default_context(cafile=self.tls[2])
        return context.wrap_socket(s, server_hostname="127.0.0.1")

    def hgetall(self, key):
        flat = self.command("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self):
        try:
            with open(os.path.join(self.dir, "redis.log"), "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""


class SentinelProcess(RedisProcess):
    """``redis-server --sentinel`` on 127.0.0.1 watching ``primary`` (a
    RedisProcess) as ``service``, with short timeouts so that a failover
    takes a couple of seconds; its config file is its own (Sentinel rewrites it)."""

    def __init__(self, primary, service="mymaster", quorum=2, down_after_ms=500,
                 failover_timeout_ms=2000, port=None, tls=None):
        super().__init__(port=port, executable="redis-server", tls=tls)
        self.service = service
        with open(os.path.join(self.dir, "sentinel.conf"), "w") as f:
            f.write(f"sentinel monitor {service} 127.0.0.1 {primary.port} {quorum}\n"
                    f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                    f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {service} 1\n")

    def _argv(self):
        return [self._executable, os.path.join(self.dir, "sentinel.conf"), "--sentinel",
                *self._listen_args(), "--dir", self.dir]

    def primary_port(self):
        """The port of the primary this sentinel names now."""
        return int(self.command("SENTINEL", "get-master-addr-by-name", self.service)[1])
