"""Rotation by file change, no signal: the watcher (inotify and the stat
poll) and the certificate pair's grace as units, then real ``twistd mc``
processes whose files are rotated the way the kubelet swaps a mounted Secret
and the way an operator rewrites a file."""

import os
import shutil
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from mc.errors import ConfigError, KeyMismatch
from mc.ops.metrics import Metrics
from mc.ops.reload import Reloadable, Reloader
from mc.ops.watch import POLL_INTERVAL, FileWatcher, inotify_factory
from mc.proto import gc_mc_pb2 as pb
from mc.testing.certs import write_self_signed
from mc.testing.daemon import wait_for
from mc.testing.fakegc import FakeGc
from mc.testing.wtclient import connect
from tests.conftest import E2E_GC_TOKEN, E2E_SERVICE_TOKEN
from tests.helpers import accepted_with, wait_until

SWAPPED_TOKEN = "svc-token-swapped-K2"
REWRITTEN_TOKEN = "svc-token-rewritten-P9"
NEW_GC_TOKEN = "gc-token-rewritten-J4"
MH = [("mh-1", "https://mh-1.example:4433", "")]
PAIR = "MC_TLS_CERT_PATH / MC_TLS_KEY_PATH"


def kubelet_swap(directory, files):
    """What the kubelet does to a mounted Secret (its AtomicWriter): the
    new files in a fresh ``..<timestamp>`` directory, the ``..data`` symlink
    renamed onto it, each name a symlink through ``..data``, then the
    previous directory removed."""
    stamp = directory / f"..{time.time_ns()}"
    stamp.mkdir()
    for name, content in files.items():
        (stamp / name).write_text(content)
    data = directory / "..data"
    previous = os.readlink(data) if data.is_symlink() else None
    (directory / "..data_tmp").symlink_to(stamp.name)
    os.rename(directory / "..data_tmp", data)
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    if previous:
        shutil.rmtree(directory / previous)


# --- the watcher ------------------------------------------------------------------


def polled(paths, clock):
    changes = []
    watcher = FileWatcher(paths, lambda: changes.append(clock.seconds()), clock, mode="poll",
                          in_thread=defer.maybeDeferred)
    watcher.startService()
    return watcher, changes


def test_the_poll_notices_a_swap_a_rewrite_and_a_removal_and_nothing_else(tmp_path):
    clock = Clock()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    kubelet_swap(secrets, {"token": "one"})
    plain = tmp_path / "plain"
    plain.write_text("a")
    watcher, changes = polled([str(secrets / "token"), str(plain)], clock)
    assert watcher.mode == "poll"
    clock.advance(POLL_INTERVAL)
    assert changes == [], "an unchanged file is no change"

    kubelet_swap(secrets, {"token": "two"})
    clock.advance(POLL_INTERVAL)
    assert len(changes) == 1
    with open(plain, "w") as f:  # in place: same inode, new size
        f.write("bb")
    clock.advance(POLL_INTERVAL)
    assert len(changes) == 2
    plain.unlink()
    clock.advance(POLL_INTERVAL)
    assert len(changes) == 3
    clock.advance(POLL_INTERVAL * 3)
    assert len(changes) == 3
    watcher.stopService()
    assert clock.getDelayedCalls() == []


def test_off_or_nothing_to_watch_watches_nothing(tmp_path):
    clock = Clock()
    (tmp_path / "f").write_text("x")
    for paths, mode in (([str(tmp_path / "f")], "off"), ([], "auto")):
        watcher = FileWatcher(paths, lambda: None, clock, mode=mode,
                              in_thread=defer.maybeDeferred)
        watcher.startService()
        assert watcher.mode == "off" and clock.getDelayedCalls() == []
        watcher.stopService()


@pytest.mark.skipif(inotify_factory(reactor) is None, reason="not Linux")
@pytest_twisted.ensureDeferred
async def test_inotify_follows_swaps_that_delete_watched_directories(tmp_path):
    """Each swap deletes the directory the last one resolved to, which
    closes Twisted's INotify: the watcher rebuilds it and hears the next."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    kubelet_swap(secrets, {"token": "0"})
    changes = []
    watcher = FileWatcher([str(secrets / "token")], lambda: changes.append(1), reactor,
                          mode="inotify", settle=0.05)
    watcher.startService()
    await wait_until(lambda: watcher._watched, timeout=5, what="the first look")
    try:
        for n in range(1, 4):
            kubelet_swap(secrets, {"token": str(n)})
            await wait_until(lambda n=n: len(changes) == n, timeout=5, what=f"swap {n}")
        with open(secrets / "token", "w") as f:  # through the symlinks, in place
            f.write("rewritten")
        await wait_until(lambda: len(changes) == 4, timeout=5, what="the in-place rewrite")
    finally:
        await watcher.stopService()


@pytest.mark.skipif(inotify_factory(reactor) is None, reason="not Linux")
@pytest_twisted.ensureDeferred
async def test_a_burst_of_writes_is_one_reload(tmp_path):
    path = tmp_path / "token"
    path.write_text("0")
    changes = []
    watcher = FileWatcher([str(path)], lambda: changes.append(1), reactor, mode="inotify",
                          settle=0.3)
    watcher.startService()
    await wait_until(lambda: watcher._watched, timeout=5, what="the first look")
    try:
        for n in range(5):
            with open(path, "a") as f:
                f.write(str(n))
        await wait_until(lambda: changes, timeout=5, what="the reload")
        await wait_until(lambda: watcher._looking is None, timeout=5, what="the look's end")
        assert changes == [1]
    finally:
        await watcher.stopService()


# --- a certificate and its key as a pair -------------------------------------------


class PairFiles:
    """A certificate setting whose load says what the test tells it."""

    def __init__(self):
        self.state = "pair-1"
        self.applied = []

    def load(self):
        if self.state == "half":
            raise KeyMismatch("MC_TLS_KEY_PATH", "/k is not the key of /c")
        if self.state == "garbage":
            raise ConfigError("MC_TLS_CERT_PATH", "/c holds no PEM certificate")
        return self.state


def pair_reloader(files, grace=30):
    clock, metrics = Clock(), Metrics()
    reloader = Reloader([Reloadable(PAIR, files.load, files.applied.append)], clock, metrics,
                        in_thread=defer.maybeDeferred, pair_grace=grace)
    reloader.startService()
    return reloader, clock, metrics


def count(metrics, outcome):
    return metrics.config_reloads.labels(outcome)._value.get()


def errors(events):
    return [formatEvent(e) for e in events if e["log_level"].name == "error"]


def test_a_pair_rotated_in_two_steps_is_applied_once_whole_without_an_error(events):
    files = PairFiles()
    reloader, clock, metrics = pair_reloader(files)
    files.state = "half"  # the certificate written, the key not yet
    reloader.reload("file change")
    assert files.applied == [] and count(metrics, "error") == 0
    clock.advance(1)
    files.state = "pair-2"  # the key a second later
    reloader.reload("file change")
    assert files.applied == ["pair-2"] and errors(events) == []
    assert clock.getDelayedCalls() == [], "no reload left at the grace's end"
    assert count(metrics, "ok") == 2


def test_a_pair_still_mismatched_after_the_grace_keeps_the_old_pair_with_an_error(events):
    files = PairFiles()
    reloader, clock, metrics = pair_reloader(files, grace=30)
    files.state = "half"
    reloader.reload("file change")
    clock.advance(29)
    assert errors(events) == []
    clock.advance(1)  # the grace's end reloads by itself
    assert files.applied == [] and count(metrics, "error") == 1
    (error,) = errors(events)
    assert PAIR in error and "keeps its previous value" in error and "not the key" in error
    reloader.reload("SIGHUP")
    assert count(metrics, "error") == 2, "no new grace for the same mismatch"
    files.state = "pair-3"
    reloader.reload("file change")
    assert files.applied == ["pair-3"]
    files.state = "garbage"
    reloader.reload("file change")
    assert count(metrics, "error") == 3, "a file that does not parse is refused at once"


# --- real processes ----------------------------------------------------------------


@pytest.fixture
def fake_gc():
    """A GC that accepts every service token the tests rotate through."""
    gc = FakeGc([E2E_SERVICE_TOKEN, SWAPPED_TOKEN, REWRITTEN_TOKEN], mc_token=E2E_GC_TOKEN,
                placeable=(pb.HEALTHY, pb.DEGRADED))
    gc.set_intervals(500, 3000)
    gc.start()
    yield gc
    gc.stop()


def carried(fake_gc, token):
    return any(h.metadata["authorization"] == "Bearer " + token for h in fake_gc.heartbeats())


def test_secrets_rotated_by_symlink_swap_and_by_rewrite_need_no_signal(
        mc_procs, fake_gc, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    kubelet_swap(secrets, {"service-token": E2E_SERVICE_TOKEN})
    gc_tokens = tmp_path / "gc-tokens"
    gc_tokens.write_text(E2E_GC_TOKEN)
    mc = mc_procs(args=["--service-token-file", str(secrets / "service-token"),
                        "--gc-tokens-file", str(gc_tokens)])
    wait_for(mc.ready, 20, what="MC ready")
    assert "watching 4 secret and certificate files (inotify)" in mc.log()

    kubelet_swap(secrets, {"service-token": SWAPPED_TOKEN})
    fake_gc.wait_for(lambda: carried(fake_gc, SWAPPED_TOKEN), timeout=5)
    with open(secrets / "service-token", "w") as f:  # in place, through the symlinks
        f.write(REWRITTEN_TOKEN)
    fake_gc.wait_for(lambda: carried(fake_gc, REWRITTEN_TOKEN), timeout=5)
    gc_tokens.write_text(NEW_GC_TOKEN)  # in place, a plain file
    wait_for(lambda: accepted_with(mc, NEW_GC_TOKEN, MH), 5, interval=0.2,
             what="the rewritten GC token accepted")
    assert not accepted_with(mc, E2E_GC_TOKEN, MH)
    log = mc.log()
    assert "file change: " in log and "SIGHUP:" not in log
    assert mc.metric('mc_config_reloads_total{outcome="error"}') in (None, 0.0)
    for secret in (E2E_SERVICE_TOKEN, SWAPPED_TOKEN, REWRITTEN_TOKEN, NEW_GC_TOKEN):
        assert secret not in log


def handshake(loop, mc, ca_file):
    """A new QUIC connection that trusts only ``ca_file``: True if it completes."""
    async def attempt():
        client = await connect("127.0.0.1", mc.wt_port, ca_file=str(ca_file), timeout=2)
        await client.close(0, 2)
    try:
        loop.run(attempt, timeout=5)
    except ConnectionError:
        return False
    return True


def test_a_certificate_renewed_in_two_steps_then_a_mismatched_one(
        mc_procs, fake_gc, loop, tmp_path):
    mc = mc_procs(env={"MC_CERT_PAIR_GRACE_SECONDS": "2"})
    wait_for(mc.ready, 20, what="MC ready")
    first = tmp_path / "first.pem"
    shutil.copyfile(mc.cert.cert_path, first)
    second = write_self_signed(tmp_path, name="second")

    shutil.copyfile(second.cert_path, mc.cert.cert_path)
    wait_for(lambda: "not a pair yet" in mc.log(), 5, what="the half-rotated pair seen")
    assert handshake(loop, mc, first), "the old pair serves while the key is awaited"
    time.sleep(1)  # the key a second later, as a renewal that writes two files does
    shutil.copyfile(second.key_path, mc.cert.key_path)
    wait_for(lambda: handshake(loop, mc, second.cert_path), 5, interval=0.2,
             what="new connections on the new pair")
    assert not handshake(loop, mc, first)
    assert "keeps its previous value" not in mc.log()

    third = write_self_signed(tmp_path, name="third")
    shutil.copyfile(third.cert_path, mc.cert.cert_path)  # and never its key
    wait_for(lambda: "keeps its previous value" in mc.log(), 10,
             what="the error once the grace is over")
    (error,) = [line for line in mc.log().splitlines() if "keeps its previous value" in line]
    assert PAIR in error and "is not the key of" in error
    assert handshake(loop, mc, second.cert_path), "the previous pair still serves"
    assert not handshake(loop, mc, third.cert_path)
    assert mc.metric('mc_config_reloads_total{outcome="error"}') == 1.0
