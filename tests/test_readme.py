"""The README's "Running it" runs as written: its shell block, with a
throwaway Redis, the fake GC and its token issuer in place of the example
hosts (and free loopback ports), in a fresh install, registers with the GC;
started again on the same host, the MC has the same id."""

import json
import os
import re
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil

from mc.testing.certs import write_self_signed
from mc.testing.daemon import wait_for
from mc.testing.redisproc import free_port, free_udp_port
from tests.conftest import E2E_GC_TOKEN, E2E_SERVICE_TOKEN

ROOT = Path(__file__).resolve().parent.parent
#: The settings the block points at the example hosts: the test's own instead.
ENDPOINTS = ("GC_GRPC_URL", "REDIS_URL", "AC_JWKS_URL", "MC_WEBTRANSPORT_ADVERTISE_URL")
REQUIRED = {"MC_SERVICE_TOKEN_FILE", "MC_GC_TOKENS_FILE", "MC_TLS_CERT_PATH", "MC_TLS_KEY_PATH",
            "AC_JWKS_URL"}


def running_it_block():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Running it\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def with_endpoints(block, values):
    """``block`` with each ENDPOINTS export's value replaced; nothing else."""
    for name in ENDPOINTS:
        block, n = re.subn(rf"^export {name}=\S+$", f"export {name}={values[name]}", block,
                           flags=re.M)
        assert n == 1, f"the block exports {name} once"
    return block


def test_the_block_sets_every_required_setting_and_runs_in_the_foreground():
    block = running_it_block()
    exported = set(re.findall(r"^export ([A-Z_]+)=", block, re.M))
    assert exported >= REQUIRED | set(ENDPOINTS)
    assert "MC_ID" not in exported, "the default id is the one to show"
    lines = block.strip().splitlines()
    assert lines[0] == "pip install -c constraints.txt ." and lines[-1] == "twistd -n mc"


def registered_and_ready(port):
    """/readyz says ready and registered with the GC (the MC is fully up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return json.load(r) == {"ready": True, "gc": "registered"}
    except (OSError, ValueError):
        return False


def run(block, home, env, workdir):
    out = open(workdir / "out.txt", "w+b")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(["bash", "-euc", block], cwd=ROOT, env={**env, "HOME": str(home)},
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, out


def stop(proc, out):
    """SIGTERM to twistd, as an operator stops it: the block then ends 0
    (bash runs its last command in its own place, or as its child)."""
    try:
        shell = psutil.Process(proc.pid)
        (twistd,) = [p for p in (shell, *shell.children(recursive=True))
                     if "twistd" in " ".join(p.cmdline())]
        twistd.send_signal(signal.SIGTERM)
        out.seek(0)
        assert proc.wait(30) == 0, out.read().decode(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        out.close()


def test_running_it_as_written_registers_with_the_same_id_at_every_start(
        installed, tmp_path, redis, fake_gc):
    home = tmp_path / "home"
    (home / "mc").mkdir(parents=True)
    (home / "mc" / "service-token").write_text(E2E_SERVICE_TOKEN)
    (home / "mc" / "gc-tokens").write_text(E2E_GC_TOKEN + "\n")
    cert = write_self_signed(tmp_path)
    os.replace(cert.cert_path, home / "mc" / "fullchain.pem")
    os.replace(cert.key_path, home / "mc" / "key.pem")
    grpc, http, wt = free_port(), free_port(), free_udp_port()
    block = with_endpoints(running_it_block(), {
        "GC_GRPC_URL": fake_gc.url, "REDIS_URL": redis.url, "AC_JWKS_URL": fake_gc.jwks_url,
        "MC_WEBTRANSPORT_ADVERTISE_URL": f"https://127.0.0.1:{wt}/"})
    env = {"PATH": f"{installed / 'bin'}:/usr/bin:/bin",
           "MC_GRPC_BIND_ADDRESS": f"127.0.0.1:{grpc}",
           "MC_GRPC_ADVERTISE_URL": f"http://127.0.0.1:{grpc}",
           "MC_HEALTH_BIND_ADDRESS": f"127.0.0.1:{http}",
           "MC_WEBTRANSPORT_BIND_ADDRESS": f"127.0.0.1:{wt}",
           "MC_SHUTDOWN_GRACE_SECONDS": "1"}
    expected_id = "mc-" + re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])

    def registered():
        return [r.request.id for r in fake_gc.registrations() if r.status == "OK"]

    ids = []
    # As written, then started again (the install already done) on the same host.
    for n, script in enumerate((block, block.split("\n", 1)[1])):
        workdir = tmp_path / f"run-{n}"
        workdir.mkdir()
        before = len(registered())
        proc, out = run(script, home, env, workdir)
        try:
            wait_for(lambda proc=proc: registered_and_ready(http) or proc.poll() is not None,
                     120, interval=0.2, what="the MC registered and ready")
            assert proc.poll() is None, (workdir / "out.txt").read_text()[-3000:]
            assert len(registered()) > before
        finally:
            stop(proc, out)
        ids.append(registered()[-1])
    assert ids == [expected_id, expected_id]
