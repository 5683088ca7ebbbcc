"""CPU and memory against what the MC may use (one core, cgroup v1 or v2 limits),
averaged over a window, and the health decision."""

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mc.interfaces import ISystemProbe
from mc.ops.health import DEGRADED, DRAINING, HEALTHY, UNHEALTHY, Health, HealthMonitor
from mc.ops.probe import CgroupV1, CgroupV2, SystemProbe, find_cgroup
from mc.testing.doubles import FixedProbe


def make_cgroup(tmp_path, cpu_max="max 100000", memory_max="max", current=0, usage=0):
    cg = tmp_path / "cg"
    cg.mkdir(exist_ok=True)
    (cg / "cgroup.controllers").write_text("cpu memory\n")
    (cg / "cpu.max").write_text(cpu_max + "\n")
    (cg / "memory.max").write_text(memory_max + "\n")
    (cg / "memory.current").write_text(f"{current}\n")
    (cg / "cpu.stat").write_text(f"usage_usec {usage}\nuser_usec 0\n")
    return cg


def make_v1(tmp_path, quota=-1, period=100000, usage_ns=0, limit=9223372036854771712,
            current=0):
    """cgroup v1 controllers as a container sees them, under ``tmp_path``."""
    dirs = {c: tmp_path / c / "kubepods" / "pod1" for c in ("cpu", "cpuacct", "memory")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (dirs["cpu"] / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (dirs["cpu"] / "cpu.cfs_period_us").write_text(f"{period}\n")
    (dirs["cpuacct"] / "cpuacct.usage").write_text(f"{usage_ns}\n")
    (dirs["memory"] / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (dirs["memory"] / "memory.usage_in_bytes").write_text(f"{current}\n")
    return dirs


def test_find_cgroup_from_proc_self_cgroup(tmp_path):
    make_cgroup(tmp_path)
    proc = tmp_path / "cgroup"
    proc.write_text("0::/cg\n")
    found = find_cgroup(root=str(tmp_path), proc_cgroup=str(proc))
    assert isinstance(found, CgroupV2) and found.path == str(tmp_path / "cg")
    dirs = make_v1(tmp_path)
    proc.write_text("4:memory:/kubepods/pod1\n3:cpu,cpuacct:/kubepods/pod1\n"
                    "1:name=systemd:/kubepods/pod1\n0::/\n")
    found = find_cgroup(root=str(tmp_path), proc_cgroup=str(proc))
    assert isinstance(found, CgroupV1)
    assert found.dirs == {name: str(d) for name, d in dirs.items()}
    proc.write_text("12:pids:/docker/abc\n")
    assert find_cgroup(root=str(tmp_path), proc_cgroup=str(proc)) is None
    assert find_cgroup(root=str(tmp_path), proc_cgroup=str(tmp_path / "missing")) is None


def test_cpu_against_cgroup_quota(tmp_path):
    cg = make_cgroup(tmp_path, cpu_max="50000 100000", usage=1_000_000)
    now = [100.0]
    probe = SystemProbe(cgroup=CgroupV2(str(cg)), clock=lambda: now[0])
    verifyObject(ISystemProbe, probe)
    now[0] += 2.0
    (cg / "cpu.stat").write_text("usage_usec 1500000\n")
    assert probe.cpu_percent() == pytest.approx(50.0)
    now[0] += 1.0
    (cg / "cpu.stat").write_text("usage_usec 2500000\n")
    assert probe.cpu_percent() == 100.0


def test_cpu_quota_above_one_core_counts_one_core(tmp_path):
    cg = make_cgroup(tmp_path, cpu_max="200000 100000", usage=0)
    now = [100.0]
    probe = SystemProbe(cgroup=CgroupV2(str(cg)), clock=lambda: now[0])
    now[0] += 2.0
    (cg / "cpu.stat").write_text("usage_usec 1500000\n")
    assert probe.cpu_percent() == pytest.approx(75.0)  # of the one core a reactor uses


def test_cpu_and_memory_against_cgroup_v1_limits(tmp_path):
    dirs = make_v1(tmp_path, quota=50000, usage_ns=10**9, limit=512 * 2**20,
                   current=128 * 2**20)
    now = [100.0]
    probe = SystemProbe(cgroup=CgroupV1({k: str(d) for k, d in dirs.items()}),
                        clock=lambda: now[0], cpu_seconds=lambda: 0.0)
    now[0] += 2.0
    (dirs["cpuacct"] / "cpuacct.usage").write_text(f"{int(1.6e9)}\n")
    assert probe.cpu_percent() == pytest.approx(60.0)  # 0.6 s of 1 s the half core allows
    assert probe.memory_percent() == pytest.approx(25.0)


def test_cgroup_v1_without_limits_counts_this_process_and_the_host(tmp_path):
    dirs = make_v1(tmp_path, usage_ns=10**12)
    now, used = [100.0], [1.0]
    probe = SystemProbe(cgroup=CgroupV1({k: str(d) for k, d in dirs.items()}),
                        clock=lambda: now[0], cpu_seconds=lambda: used[0])
    now[0] += 1.0
    used[0] += 0.5
    assert probe.cpu_percent() == pytest.approx(50.0)
    assert 0.0 < probe.memory_percent() <= 100.0


def test_cpu_without_a_quota_is_this_process_against_one_core(tmp_path):
    now, used = [100.0], [10.0]
    for cgroup in (CgroupV2(str(make_cgroup(tmp_path))), None):
        probe = SystemProbe(cgroup=cgroup, clock=lambda: now[0], cpu_seconds=lambda: used[0])
        now[0] += 2.0
        used[0] += 1.8
        assert probe.cpu_percent() == pytest.approx(90.0)
        now[0] += 1.0
        used[0] += 1.5  # the gRPC threads beside the reactor
        assert probe.cpu_percent() == 100.0
    assert 0.0 <= SystemProbe(cgroup=None).cpu_percent() <= 100.0
    assert 0.0 <= SystemProbe().cpu_percent() <= 100.0  # this process's own cgroup


def test_memory_against_cgroup_limit(tmp_path):
    cg = make_cgroup(tmp_path, memory_max=str(512 * 2**20), current=128 * 2**20)
    assert SystemProbe(cgroup=CgroupV2(str(cg))).memory_percent() == pytest.approx(25.0)
    (cg / "memory.current").write_text(str(600 * 2**20))
    assert SystemProbe(cgroup=CgroupV2(str(cg))).memory_percent() == 100.0


def test_unlimited_cgroup_falls_back_to_the_host(tmp_path):
    probe = SystemProbe(cgroup=CgroupV2(str(make_cgroup(tmp_path))))
    for value in (probe.cpu_percent(), probe.memory_percent()):
        assert 0.0 <= value <= 100.0
    assert 0.0 < SystemProbe(cgroup=None).memory_percent() <= 100.0


def test_fixed_probe_is_a_probe():
    verifyObject(ISystemProbe, FixedProbe())


@pytest.mark.parametrize("redis_up,draining,cpu,memory,lag,expected", [
    (True, False, 10, 10, 0.0, HEALTHY),
    (True, True, 10, 10, 0.0, DRAINING),
    (False, True, 10, 10, 0.0, DRAINING),
    (False, False, 10, 10, 0.0, UNHEALTHY),
    (False, False, 95, 10, 0.0, UNHEALTHY),
    (True, False, 90, 10, 0.0, DEGRADED),
    (True, False, 10, 90, 0.0, DEGRADED),
    (True, False, 10, 10, 0.6, DEGRADED),
    (True, False, 89.9, 89.9, 0.5, HEALTHY),
])
def test_health_decision(redis_up, draining, cpu, memory, lag, expected):
    h = Health(lambda: redis_up, lag_threshold=0.5)
    h.draining, h.cpu_percent, h.memory_percent, h.sustained_lag = draining, cpu, memory, lag
    assert h.status == expected


def test_observers_hear_each_change_once():
    redis = [True]
    h = Health(lambda: redis[0], 0.5)
    heard = []
    h.on_change(heard.append)
    h.check()
    h.check()
    redis[0] = False
    h.check()
    h.set_draining(True)
    h.set_draining(True)
    assert heard == [HEALTHY, UNHEALTHY, DRAINING]


def test_monitor_measures_lag_and_samples_the_probe():
    clock = Clock()
    h = Health(lambda: True, 0.5)
    probe = FixedProbe(cpu=20, memory=30)
    lags = []
    m = HealthMonitor(h, probe, clock, interval=0.25, sample_every=2.0, on_lag=lags.append,
                      window=lambda: 2.0)
    m.startService()
    clock.advance(0.25)
    assert lags == [0.0] and (h.cpu_percent, h.memory_percent) == (20, 30)
    probe.cpu = 95
    clock.advance(1.0)
    assert h.reactor_lag == pytest.approx(0.75)
    assert h.sustained_lag < 0.5  # one late tick: not a lasting lag
    assert h.status == HEALTHY
    assert h.cpu_percent == 20
    for _ in range(8):
        clock.advance(0.25)
    assert h.cpu_percent == 95
    m.stopService()
    assert clock.getDelayedCalls() == []


def test_monitor_survives_a_failing_probe():
    clock = Clock()

    class Broken(FixedProbe):
        def cpu_percent(self):
            raise OSError("cgroup vanished")

    h = Health(lambda: True, 0.5)
    m = HealthMonitor(h, Broken(), clock, interval=0.25, window=lambda: 30.0)
    m.startService()
    clock.advance(0.25)
    clock.advance(0.25)
    assert len(clock.getDelayedCalls()) == 1
    m.stopService()


def _monitor(window=30.0):
    clock, probe = Clock(), FixedProbe(cpu=40, memory=30)
    h = Health(lambda: True, 0.5)
    m = HealthMonitor(h, probe, clock, interval=0.25, sample_every=2.0, window=lambda: window)
    m.startService()
    return clock, probe, h, m


def _run(clock, seconds):
    for _ in range(int(seconds / 0.25)):
        clock.advance(0.25)


def test_a_burst_does_not_make_the_mc_degraded():
    clock, probe, h, m = _monitor()
    _run(clock, 60)
    assert h.cpu_percent == pytest.approx(40.0)
    probe.cpu = 100  # a drain's rejoins: ~10 s of the MC's CPU at once
    heard = []
    h.on_change(heard.append)
    _run(clock, 12)
    probe.cpu = 40
    _run(clock, 60)
    assert heard == [] and h.status == HEALTHY
    m.stopService()


def test_sustained_load_makes_it_degraded_and_its_end_healthy_again():
    clock, probe, h, m = _monitor()
    _run(clock, 60)
    probe.cpu = 100
    _run(clock, 20)
    assert h.status == HEALTHY  # 20 s of 30: not yet
    _run(clock, 10)
    assert h.status == DEGRADED and h.cpu_percent >= 90
    probe.cpu, probe.memory = 40, 95
    _run(clock, 6)
    assert h.status == HEALTHY  # CPU's mean fell below 90 %; memory's has not risen yet
    _run(clock, 30)
    assert h.status == DEGRADED and h.memory_percent == pytest.approx(95.0)
    probe.memory = 30
    _run(clock, 30)
    assert h.status == HEALTHY
    m.stopService()


def test_a_burst_at_start_up_counts_against_a_window_of_idle():
    clock, probe, h, m = _monitor()
    probe.cpu = 100
    _run(clock, 10)
    assert h.status == HEALTHY and h.cpu_percent < 50
    m.stopService()


def test_the_window_follows_the_comprehensive_interval():
    window = [30.0]
    clock, probe = Clock(), FixedProbe(cpu=40, memory=30)
    h = Health(lambda: True, 0.5)
    m = HealthMonitor(h, probe, clock, interval=0.25, window=lambda: window[0])
    m.startService()
    _run(clock, 40)
    window[0] = 10.0  # the GC asked for a shorter comprehensive interval
    probe.cpu = 100
    _run(clock, 10)
    assert h.status == DEGRADED
    m.stopService()


def test_a_lagging_burst_does_not_make_it_degraded_sustained_lag_does():
    clock, probe, h, m = _monitor(window=10.0)
    _run(clock, 20)
    clock.advance(2.5)  # the reactor held 2.25 s by a burst of work
    _run(clock, 5)
    assert h.reactor_lag == 0.0 and h.status == HEALTHY
    for _ in range(20):  # every tick 0.75 s late for 15 s
        clock.advance(1.0)
    assert h.reactor_lag == pytest.approx(0.75) and h.status == DEGRADED
    _run(clock, 10)
    assert h.status == HEALTHY
    m.stopService()
