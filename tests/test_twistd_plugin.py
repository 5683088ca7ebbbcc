"""``twistd mc`` is found both from this checkout (editable install) and from a
plain ``pip install .``: twistd's plugin scan has pitfalls with each."""

import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mc import config as mcconfig
from mc.testing.redisproc import free_port
from tests.configs import PARTICIPANT_ENV
from tests.conftest import E2E_GC_TOKEN, E2E_SERVICE_TOKEN

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "import sys; sys.argv[0] = \"twistd\"; from twisted.scripts.twistd import run; run()"


def run_twistd(python, args, cwd, env=None, timeout=60):
    return subprocess.run([python, "-c", TWISTD, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_documents_every_option(out):
    for s in mcconfig.SETTINGS:
        assert f"--{s.flag}" in out, s.flag
    assert "--service-token-file" in out and "--gc-tokens-file" in out


def test_help_from_the_development_install(tmp_path):
    r = run_twistd(sys.executable, ["mc", "--help"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_documents_every_option(r.stdout)


def test_listed_among_twistd_plugins(tmp_path):
    r = run_twistd(sys.executable, ["--help"], cwd=tmp_path)
    assert r.returncode == 0
    assert "mc" in r.stdout.split() and "Host meetings assigned" in r.stdout


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory):
    """A fresh virtualenv holding a plain (non-editable) install of the package;
    the dependencies come from this environment's site-packages through a .pth
    line, which does not process the editable install's own .pth."""
    base = tmp_path_factory.mktemp("plain")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig;print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "deps.pth").write_text(
        f"{target}\n{sysconfig.get_paths()['purelib']}\n")
    return python, target


def test_help_from_a_plain_install(plain_install, tmp_path):
    python, target = plain_install
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import mc, twisted.plugins.mc_plugin as p;"
                            "print(mc.__file__); print(p.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout
    assert (target / "mc" / "redis" / "lua" / "claim_and_write.lua").is_file()
    assert (target / "mc" / "proto" / "gc_mc_pb2.py").is_file()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    r = run_twistd(str(python), ["mc", "--help"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert_documents_every_option(r.stdout)


def test_bad_configuration_exits_non_zero_with_one_clear_line(tmp_path):
    env = {**os.environ, "MC_SERVICE_TOKEN": "tok-secret-123", "MC_GC_TOKENS": "gc-secret-9",
           "MC_MAX_MEETINGS": "lots"}
    r = run_twistd(sys.executable, ["-n", "mc"], cwd=tmp_path, env=env, timeout=10)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "MC_MAX_MEETINGS: 'lots' is not an integer" in out
    assert "tok-secret-123" not in out and "gc-secret-9" not in out


def test_missing_token_exits_non_zero(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_")}
    r = run_twistd(sys.executable, ["-n", "mc", "--insecure-no-auth"], cwd=tmp_path, env=env,
                   timeout=10)
    assert r.returncode != 0
    assert "MC_SERVICE_TOKEN" in r.stdout + r.stderr


def test_the_tac_file_builds_the_same_tree_from_the_environment(tmp_path, redis, fake_gc):
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "MC_SERVICE_TOKEN": E2E_SERVICE_TOKEN, "MC_GC_TOKENS": E2E_GC_TOKEN,
           "MC_ID": "mc-tac-1", "GC_GRPC_URL": fake_gc.url, "REDIS_URL": redis.url,
           "MC_GRPC_BIND_ADDRESS": f"127.0.0.1:{grpc_port}",
           "MC_GRPC_ADVERTISE_URL": f"http://127.0.0.1:{grpc_port}",
           "MC_HEALTH_BIND_ADDRESS": f"127.0.0.1:{http_port}", "MC_SHUTDOWN_GRACE_SECONDS": "0",
           "MC_WEBTRANSPORT_BIND_ADDRESS": "127.0.0.1:0",
           "MC_WEBTRANSPORT_ADVERTISE_URL": "https://127.0.0.1:4433/", **PARTICIPANT_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", TWISTD, "-ny", str(ROOT / "tac" / "mc.tac"), "--pidfile",
         str(tmp_path / "tac.pid"), "--logfile", str(tmp_path / "tac.log")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        fake_gc.wait_for(lambda: [r for r in fake_gc.registrations()
                                  if r.request.id == "mc-tac-1"], timeout=20)
        fake_gc.wait_for(lambda: fake_gc.heartbeats("fast"), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert not (tmp_path / "tac.pid").exists()


def test_the_tac_file_refuses_a_bad_environment(tmp_path):
    env = {**os.environ, "MC_SERVICE_TOKEN": "tac-secret-5", "MC_INSECURE_NO_AUTH": "1",
           "MC_GRPC_BIND_ADDRESS": "no-port"}
    r = run_twistd(sys.executable, ["-ny", str(ROOT / "tac" / "mc.tac")], cwd=tmp_path,
                   env=env, timeout=10)
    assert r.returncode != 0
    assert "MC_GRPC_BIND_ADDRESS: 'no-port' is not host:port" in r.stdout + r.stderr
    assert "tac-secret-5" not in r.stdout + r.stderr
