"""``twistd mc`` as a real subprocess, for end-to-end tests and the demo.

Waits are conditions polled against a deadline, never fixed sleeps.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mc.testing.certs import write_self_signed
from mc.testing.issuer import TokenIssuer
from mc.testing.redisproc import free_port, free_udp_port

TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def wait_for(predicate, timeout, interval=0.05, what="condition"):
    """Poll ``predicate`` until it returns something truthy; TimeoutError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class McProcess:
    """One MC under twistd. ``env`` adds to a minimal environment that points
    the MC at ``redis_url`` and ``gc_url`` on loopback with free ports.
    ``service_token`` / ``gc_token`` None leave MC_SERVICE_TOKEN /
    MC_GC_TOKENS unset (an MC whose identity comes from the Auth Controller)."""

    def __init__(self, workdir, gc_url, redis_url, service_token, gc_token, mc_id="mc-e2e-1",
                 env=None, daemonize=False, args=(), jwks_url=None, wt_path="/"):
        self.workdir = str(workdir)
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.wt_port = free_udp_port()
        self.wt_path = wt_path
        # ECDSA P-256, under 14 days: a browser can pin it by its hash.
        self.cert = write_self_signed(self.workdir, name=f"{mc_id}-wt")
        if jwks_url is None:
            jwks_path = os.path.join(self.workdir, f"{mc_id}-jwks.json")
            TokenIssuer().write_jwks(jwks_path)
            jwks_url = Path(jwks_path).as_uri()
        self.mc_id = mc_id
        self.pidfile = os.path.join(self.workdir, f"{mc_id}.pid")
        self.logfile = os.path.join(self.workdir, f"{mc_id}.log")
        self.daemonize = daemonize
        self.args = list(args)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MC_ID": mc_id,
            "GC_GRPC_URL": gc_url,
            "REDIS_URL": redis_url,
            **({"MC_SERVICE_TOKEN": service_token} if service_token is not None else {}),
            **({"MC_GC_TOKENS": gc_token} if gc_token is not None else {}),
            "MC_GRPC_BIND_ADDRESS": f"127.0.0.1:{self.grpc_port}",
            "MC_WEBTRANSPORT_BIND_ADDRESS": f"127.0.0.1:{self.wt_port}",
            "MC_WEBTRANSPORT_ADVERTISE_URL": self.wt_url,
            "MC_TLS_CERT_PATH": self.cert.cert_path,
            "MC_TLS_KEY_PATH": self.cert.key_path,
            "AC_JWKS_URL": jwks_url,
            "MC_HEALTH_BIND_ADDRESS": f"127.0.0.1:{self.http_port}",
            **(env or {}),
        }
        self.env.setdefault("MC_GRPC_ADVERTISE_URL", self.grpc_url)
        self.proc = None
        self._output = None

    @property
    def wt_url(self):
        """The MC's WebTransport URL, as it advertises it."""
        return f"https://127.0.0.1:{self.wt_port}{self.wt_path}"

    @property
    def grpc_url(self):
        """The MC's gRPC URL: https:// when it serves TLS."""
        scheme = "https" if self.env.get("MC_GRPC_TLS_CERT_PATH") else "http"
        return f"{scheme}://127.0.0.1:{self.grpc_port}"

    @property
    def grpc_target(self):
        return f"127.0.0.1:{self.grpc_port}"

    def command(self):
        cmd = [sys.executable, "-c", TWISTD, "--pidfile", self.pidfile, "--logfile",
               self.logfile]
        if not self.daemonize:
            cmd.append("--nodaemon")
        return cmd + ["mc", *self.args]

    def start(self, attempts=3, timeout=30.0):
        """Start the MC and wait until it listens or exits. A free port can be
        taken by someone else before twistd binds it: then try fresh ports."""
        for _ in range(attempts):
            self._launch()
            wait_for(self._settled, timeout, what="MC start-up")
            if self.alive() or "Address already in use" not in self.output() + self.log():
                return self
            self._output.close()
            self.grpc_port, self.http_port = free_port(), free_port()
            self.wt_port = free_udp_port()
            self.env.update(MC_WEBTRANSPORT_BIND_ADDRESS=f"127.0.0.1:{self.wt_port}",
                            MC_WEBTRANSPORT_ADVERTISE_URL=self.wt_url,
                            MC_GRPC_BIND_ADDRESS=f"127.0.0.1:{self.grpc_port}",
                            MC_GRPC_ADVERTISE_URL=self.grpc_url,
                            MC_HEALTH_BIND_ADDRESS=f"127.0.0.1:{self.http_port}")
            for leftover in (self.logfile, self.pidfile):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        return self

    def _launch(self):
        self._output = open(os.path.join(self.workdir, f"{self.mc_id}.out"), "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=self.env,
                                     stdout=self._output, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def _settled(self):
        """True once the MC listens on both ports, or has exited."""
        if "gRPC server listening on" in self.log():
            return True
        return self.proc.poll() is not None and (not self.daemonize or not self.alive())

    @property
    def pid(self):
        """The daemon's pid: from the pidfile when daemonized."""
        if not self.daemonize:
            return self.proc.pid
        with open(self.pidfile) as f:
            return int(f.read().strip())

    def signal(self, signum):
        os.kill(self.pid, signum)

    def alive(self):
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, FileNotFoundError, ValueError):
            return False
        if not self.daemonize:
            return self.proc.poll() is None
        return True

    def wait(self, timeout):
        """Wait for the MC to exit; its exit status (None when daemonized)."""
        if self.daemonize:
            wait_for(lambda: not os.path.exists(self.pidfile), timeout, what="pidfile removal")
            return None
        return self.proc.wait(timeout)

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.proc is None:
            return
        try:
            if self.alive():
                self.signal(signal.SIGTERM)
                try:
                    wait_for(lambda: not self.alive(), timeout, what="MC exit")
                except TimeoutError:
                    os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            if self.proc.poll() is None:
                self.proc.wait(5)
            self._output.close()

    def output(self):
        with open(os.path.join(self.workdir, f"{self.mc_id}.out"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log(self):
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def http(self, path, timeout=5.0):
        """``(status, body)`` of GET ``path`` on the health port; ``(None,
        reason)`` when nothing answers."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            return None, str(e)

    def ready(self):
        """``/readyz`` 200 and registered with the GC: what most tests wait
        for before they assign (readiness alone no longer needs the GC)."""
        status, body = self.http("/readyz")
        return status == 200 and json.loads(body).get("gc") == "registered"

    def rss(self):
        """The daemon's resident memory in bytes (Linux /proc)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def metric(self, name):
        """The value of an unlabelled metric from /metrics, or None."""
        status, body = self.http("/metrics")
        if status != 200:
            return None
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None
