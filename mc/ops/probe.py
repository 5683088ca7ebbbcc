"""CPU and memory of this MC against what it may use, without blocking: every
reading is a small procfs/sysfs read or a psutil counter.

CPU is this MC's own (its container's, under a cgroup CPU quota) against one
core, or against the quota when that is smaller: an MC is one reactor, which
one core runs, so two MCs on a host, or the host's other work, never make
each other DEGRADED; a busy host shows as reactor lag instead. Memory is the
cgroup's against its limit, or the host's. Both cgroup versions are read:
v2 (one directory: ``cpu.max``, ``cpu.stat``, ``memory.max``,
``memory.current``) and v1 (a directory per controller: ``cpu.cfs_quota_us``
and ``cpu.cfs_period_us``, ``cpuacct.usage``, ``memory.limit_in_bytes`` and
``memory.usage_in_bytes``), as older container hosts still mount it."""

import os
import time

import psutil
from zope.interface import implementer

from mc.interfaces import ISystemProbe

CGROUP_ROOT = "/sys/fs/cgroup"
#: What one MC can use: its reactor runs on one core.
MC_CORES = 1.0
#: cgroup v1 says "no memory limit" with a number near 2**63 (page-rounded).
V1_UNLIMITED = 2**62


def _clamp(v):
    return max(0.0, min(100.0, float(v)))


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _int(path):
    raw = _read(path)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


class CgroupV2:
    """One cgroup v2 directory."""

    def __init__(self, path):
        self.path = path

    def cpu_limit(self):
        """Cores the cgroup may use, or None when unlimited."""
        raw = _read(os.path.join(self.path, "cpu.max"))
        quota, _, period = (raw or "max").partition(" ")
        if quota == "max":
            return None
        try:
            return int(quota) / int(period or 100000)
        except (ValueError, ZeroDivisionError):
            return None

    def cpu_seconds(self):
        for line in (_read(os.path.join(self.path, "cpu.stat")) or "").splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return None

    def memory(self):
        """``(current, limit)`` in bytes, or None when unlimited."""
        limit = _read(os.path.join(self.path, "memory.max"))
        current = _int(os.path.join(self.path, "memory.current"))
        if not limit or limit == "max" or current is None:
            return None
        try:
            return current, int(limit)
        except ValueError:
            return None


class CgroupV1:
    """The cgroup v1 directories of the ``cpu``, ``cpuacct`` and ``memory``
    controllers (any may be missing)."""

    def __init__(self, dirs):
        self.dirs = dirs

    def _path(self, controller, name):
        d = self.dirs.get(controller)
        return os.path.join(d, name) if d else ""

    def cpu_limit(self):
        quota = _int(self._path("cpu", "cpu.cfs_quota_us"))
        period = _int(self._path("cpu", "cpu.cfs_period_us"))
        if quota is None or quota <= 0 or not period:
            return None
        return quota / period

    def cpu_seconds(self):
        usage = _int(self._path("cpuacct", "cpuacct.usage"))
        return usage / 1e9 if usage is not None else None

    def memory(self):
        limit = _int(self._path("memory", "memory.limit_in_bytes"))
        current = _int(self._path("memory", "memory.usage_in_bytes"))
        if limit is None or limit >= V1_UNLIMITED or current is None:
            return None
        return current, limit


def find_cgroup(root=CGROUP_ROOT, proc_cgroup="/proc/self/cgroup"):
    """This process's cgroup: CgroupV2 when it is under cgroup v2 (the
    unified hierarchy with its controllers), else CgroupV1 of the v1
    controllers mounted, else None."""
    text = _read(proc_cgroup)
    if not text:
        return None
    v1 = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            d = os.path.join(root, path.lstrip("/"))
            if os.path.isfile(os.path.join(d, "cgroup.controllers")):
                return CgroupV2(d)
            continue
        for controller in controllers.split(","):
            for mount in (controller, controllers):
                d = os.path.join(root, mount, path.lstrip("/"))
                if controller in ("cpu", "cpuacct", "memory") and os.path.isdir(d):
                    v1.setdefault(controller, d)
    return CgroupV1(v1) if v1 else None


def _process_cpu_seconds():
    times = os.times()
    return times.user + times.system


@implementer(ISystemProbe)
class SystemProbe:
    """Usage against cgroup limits where they are set (see the module).

    ``cgroup``: a CgroupV2 or CgroupV1, or None for none (default: this
    process's). ``clock`` returns monotonic seconds and ``cpu_seconds`` the
    CPU time this MC has used (both injectable for tests).
    """

    def __init__(self, cgroup=find_cgroup, clock=time.monotonic,
                 cpu_seconds=_process_cpu_seconds):
        self._cgroup = cgroup() if callable(cgroup) else cgroup
        self._clock = clock
        self._cpu_seconds = cpu_seconds
        self._last_usage = None
        self._last_time = None
        self.cpu_percent()

    def cpu_percent(self):
        limit = self._cgroup.cpu_limit() if self._cgroup else None
        usage = self._cgroup.cpu_seconds() if limit else None
        if usage is None:
            usage = self._cpu_seconds()
        cores = min(limit, MC_CORES) if limit else MC_CORES
        now = self._clock()
        prev_usage, prev_time = self._last_usage, self._last_time
        self._last_usage, self._last_time = usage, now
        if prev_usage is None or now <= prev_time:
            return 0.0
        return _clamp(100.0 * (usage - prev_usage) / ((now - prev_time) * cores))

    def memory_percent(self):
        memory = self._cgroup.memory() if self._cgroup else None
        if memory is not None:
            current, limit = memory
            if limit > 0:
                return _clamp(100.0 * current / limit)
        return _clamp(psutil.virtual_memory().percent)
