"""CPU and memory of this MC against what it may use, without blocking: every
reading is a small procfs/sysfs read or a psutil counter.

CPU is this MC's own (its container's, under a cgroup v2 quota) against one
core, or against the quota when that is smaller: an MC is one reactor, which
one core runs, so two MCs on a host, or the host's other work, never make
each other DEGRADED; a busy host shows as reactor lag instead. Memory is the
cgroup's against its limit, or the host's."""

import os

import psutil
from zope.interface import implementer

from mc.interfaces import ISystemProbe

CGROUP_ROOT = "/sys/fs/cgroup"


def _clamp(v):
    return max(0.0, min(100.0, float(v)))


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_dir(root=CGROUP_ROOT, proc_cgroup="/proc/self/cgroup"):
    """This process's cgroup v2 directory, or None when not under cgroup v2."""
    text = _read(proc_cgroup)
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            path = os.path.join(root, line[3:].lstrip("/"))
            return path if os.path.isfile(os.path.join(path, "cgroup.controllers")) else None
    return None


#: What one MC can use: its reactor runs on one core.
MC_CORES = 1.0


def _process_cpu_seconds():
    times = os.times()
    return times.user + times.system


@implementer(ISystemProbe)
class SystemProbe:
    """Usage against cgroup v2 limits where they are set (see the module).

    ``clock`` is a callable returning monotonic seconds and ``cpu_seconds``
    one returning the CPU time this MC has used (both injectable for tests).
    """

    def __init__(self, cgroup=None, clock=None, cpu_seconds=_process_cpu_seconds):
        import time

        self._cgroup = cgroup if cgroup is not None else cgroup_dir()
        self._clock = clock or time.monotonic
        self._cpu_seconds = cpu_seconds
        self._last_usage = None
        self._last_time = None
        self.cpu_percent()

    def _cpu_limit(self):
        """Cores the cgroup may use, or None when unlimited."""
        if not self._cgroup:
            return None
        raw = _read(os.path.join(self._cgroup, "cpu.max"))
        if not raw:
            return None
        quota, _, period = raw.partition(" ")
        if quota == "max":
            return None
        try:
            return int(quota) / int(period or 100000)
        except (ValueError, ZeroDivisionError):
            return None

    def _cgroup_usage_usec(self):
        raw = _read(os.path.join(self._cgroup, "cpu.stat")) if self._cgroup else None
        if raw:
            for line in raw.splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1])
        return None

    def cpu_percent(self):
        limit = self._cpu_limit()
        usec = self._cgroup_usage_usec() if limit else None
        usage = self._cpu_seconds() if usec is None else usec / 1e6
        cores = min(limit, MC_CORES) if limit else MC_CORES
        now = self._clock()
        prev_usage, prev_time = self._last_usage, self._last_time
        self._last_usage, self._last_time = usage, now
        if prev_usage is None or now <= prev_time:
            return 0.0
        return _clamp(100.0 * (usage - prev_usage) / ((now - prev_time) * cores))

    def memory_percent(self):
        if self._cgroup:
            limit = _read(os.path.join(self._cgroup, "memory.max"))
            current = _read(os.path.join(self._cgroup, "memory.current"))
            if limit and limit != "max" and current:
                try:
                    return _clamp(100.0 * int(current) / int(limit))
                except (ValueError, ZeroDivisionError):
                    pass
        return _clamp(psutil.virtual_memory().percent)
