"""The participant benchmark (issues 11 and 18): participants over WebTransport
on one ``twistd mc``, in meetings of 10, and the same load on a plain aioquic
yardstick (bench/wtyardstick.py), side by side; the MC in several
configurations (``CONFIGS``: the QUIC engine by the garbage collector's
settings, and two MCs on the host against one).

For each size N (``--sizes``), with a fresh MC:

1. **join**: N participants join at ``--rate`` (100) a second, from
   ``--procs`` load generator processes (bench/wtload.py), each participant
   placed by the fake GC's join flow (``FakeGc.join``: AssignMeetingWithMh for
   a meeting's first participant, a meeting token for each) through a join
   broker in this process. Nobody mutes yet.
2. **steady**: every participant sends a ``MuteRequest`` every ``--mute-every``
   (10) s, from a random phase; the MC fans each out to the 10 of its meeting.
   Measured for ``--steady`` (30) s after ``--warmup`` (5) s.
3. **drain**: a second MC is started; SIGUSR2 to the first: every participant
   gets ``RedirectToMc{reason: "draining"}`` and rejoins through the join flow,
   which now places the meeting on the second MC. Measured from SIGUSR2 until
   every participant is joined on the second MC.

The fake GC runs at its production intervals (fast heartbeats every 10 s,
comprehensive every 30 s). MC CPU is utime + stime from /proc/<pid>/stat over
each phase; RSS is VmRSS from /proc/<pid>/status; reactor lag is the MC's
``mc_reactor_lag_seconds`` read every 250 ms (and its histogram); join latency
(JoinRequest sent to JoinResponse read) is measured by the generators.
Everything runs on 127.0.0.1 and stops by itself (SIGTERM or Ctrl-C too:
every process it started is stopped). The load generators run on qh3's
compiled QUIC core (``--loadgen-engine``) so that they do not bound the
figures.

    python bench/participants.py --sizes 2000 --servers mc,mc-pygc,mc-qh3,mc-qh3-pygc,yardstick
    python bench/participants.py --sizes 2000 --servers mc --profile /tmp/prof
    python bench/participants.py --sizes 1000 --servers mc --tracemalloc --no-drain
    python bench/participants.py --sizes 3000 --servers mc,mc-x2 --rate 300 --no-drain
"""

import argparse
import contextlib
import json
import os
import queue
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import percentile  # noqa: E402
from bench.run import LagSampler, lag_histogram, lag_summary, machine  # noqa: E402
from mc.testing.certs import write_self_signed  # noqa: E402
from mc.testing.daemon import McProcess, wait_for  # noqa: E402
from mc.testing.fakegc import FakeGc, NoMcAvailable  # noqa: E402
from mc.testing.redisproc import RedisProcess, free_udp_port  # noqa: E402

SERVICE_TOKEN = "bench-service-token"
GC_TOKEN = "bench-gc-token"
FAST_MS, COMPREHENSIVE_MS = 10_000, 30_000  # the fake GC's defaults, production's
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEALTH_NAMES = {0: "PENDING", 1: "HEALTHY", 2: "DEGRADED", 3: "UNHEALTHY", 4: "DRAINING"}
#: The MC's settings in this benchmark: its defaults (MC_MAX_MEETINGS 1000,
#: MC_MAX_PARTICIPANTS 10000, MC_MAX_PENDING_SESSIONS 1000, log level info...)
#: are kept but one: every generator shares 127.0.0.1, which the per-address
#: cap of handshakes (20, against one attacker's address) would hold to 20
#: at a time; the MC-wide cap still holds.
MC_ENV = {"MC_MAX_PENDING_SESSIONS_PER_ADDRESS": "1000"}
#: Issue 18's targets, for every configuration of the MC (one MC, production
#: intervals; the drain's receiving MC never DEGRADED by it).
TARGETS = {"cpu_per_join_ms": 2.0, "cpu_per_message_us": 80.0, "join_p99_ms": 20.0,
           "lag_p99_ms": 20.0, "heartbeat_late_ms": 50.0, "rss_per_participant_kib": 48.0,
           "drain_s": 10.0}
#: The MC's configurations side by side: the QUIC engine (MC_QUIC_ENGINE) by
#: the garbage collector's settings (MC_PYTHON_GC_THRESHOLDS), and two MCs on
#: the host against one. ``mc`` is the MC as it ships (aioquic, collector
#: tuned): the figure of record.
CONFIGS = {
    "mc": ("aioquic, collector tuned (the MC's defaults)", {}),
    "mc-pygc": ("aioquic, the interpreter's collector (700,10,10, no freeze)",
                {"MC_PYTHON_GC_THRESHOLDS": "python"}),
    "mc-qh3": ("qh3 2.x (compiled QUIC core), collector tuned", {"MC_QUIC_ENGINE": "qh3"}),
    "mc-qh3-pygc": ("qh3 2.x, the interpreter's collector",
                    {"MC_QUIC_ENGINE": "qh3", "MC_PYTHON_GC_THRESHOLDS": "python"}),
    "mc-x2": ("two MCs (aioquic, tuned) on this host, the meetings placed alternately", {}),
}
PROFILE_FORMATS = {".json": "speedscope", ".svg": "flamegraph", ".txt": "raw"}


def tree():
    """The commit and a fingerprint of the uncommitted changes to the MC's
    code (the tree is shared and changes between runs)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout
    import hashlib

    paths = ["mc", "tac", "twisted", "setup.py"]
    digest = hashlib.sha1(git("diff", "HEAD", "--", *paths).encode())
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *paths).split()
    for path in sorted(untracked):
        with contextlib.suppress(OSError), open(ROOT / path, "rb") as f:
            digest.update(path.encode() + f.read())
    return {"head": git("rev-parse", "--short", "HEAD").strip(),
            "uncommitted": digest.hexdigest()[:10], "untracked_files": len(untracked)}


def say(text=""):
    print(text, flush=True)


# -- the process under test, from /proc ----------------------------------------

def cpu_seconds(pid):
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_rss(pid):
    """VmRSS of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def udp_drops(pids):
    """Datagrams the kernel dropped on the UDP sockets of ``pids`` (their
    receive buffer was full): the ``drops`` column of /proc/net/udp for the
    sockets those processes hold."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    drops = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes:
                    drops += int(fields[12])
    return drops


def loadavg():
    return tuple(round(x, 2) for x in os.getloadavg())


def host_busy():
    """(busy, total) jiffies of the whole machine, all cores (guest time is
    already inside user time)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(v) for v in f.readline().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


class HostSampler(threading.Thread):
    """How busy the whole machine was, every 0.5 s: ``[(monotonic, %)]``
    (before issue 18 the MC's health read this when no cgroup v2 limit
    applied; now it reads its own CPU, averaged over 30 s)."""

    def __init__(self, period=0.5):
        super().__init__(daemon=True)
        self.period = period
        self.samples = []
        self._done = threading.Event()

    def run(self):
        last = host_busy()
        while not self._done.wait(self.period):
            now = host_busy()
            busy, total = (b - a for a, b in zip(last, now, strict=True))
            self.samples.append((time.monotonic(), 100 * busy / max(1, total)))
            last = now

    def busy(self, start, end):
        """Mean busy % over [start, end]."""
        values = [pct for t, pct in self.samples if start <= t <= end]
        return sum(values) / len(values) if values else 0.0

    def stop(self):
        self._done.set()
        self.join(2)


HOST = HostSampler()


# -- the join broker: the fake GC's join flow for the generator processes ------

class JoinBroker:
    """Serves the fake GC's join flow to the generators: one JSON line per
    request in, one per answer out, answered from a thread pool (``FakeGc.join``
    decides one join at a time, as one GC would; tokens are minted in
    parallel)."""

    def __init__(self, fake):
        self.fake = fake
        self.assigned = 0
        self.no_mc = 0
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="broker")
        broker = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                lock = threading.Lock()
                for line in self.rfile:
                    broker.executor.submit(broker._answer, self.connection, lock, line)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _answer(self, conn, lock, line):
        request = json.loads(line)
        answer = {"id": request["id"]}
        try:
            placed = self.fake.join(request["meeting"], request["sub"])
            answer.update(ok=True, endpoint=placed.webtransport_endpoint, token=placed.token,
                          mc=placed.mc_id)
            if placed.assigned:
                self.assigned += 1
        except NoMcAvailable:
            self.no_mc += 1
            answer.update(ok=False, error="no_mc")
        except Exception as e:  # the generator counts it and retries
            answer.update(ok=False, error=type(e).__name__)
        data = json.dumps(answer).encode() + b"\n"
        with lock, contextlib.suppress(OSError):
            conn.sendall(data)


# -- the load generator processes ----------------------------------------------

class Generators:
    """``procs`` bench/wtload.py processes; JSON lines both ways."""

    def __init__(self, workdir, args, count, prefix, broker=None, url=None):
        self.procs = []
        self.lines = []
        t0 = time.monotonic() + 2.0  # their imports take about a second
        self.t0 = t0
        for index in range(args.procs):
            cmd = [sys.executable, str(ROOT / "bench" / "wtload.py"), "--index", str(index),
                   "--procs", str(args.procs), "--count", str(count), "--group",
                   str(args.group), "--rate", str(args.rate), "--t0", repr(t0), "--prefix",
                   prefix, "--rejoin-inflight", str(args.rejoin_inflight),
                   "--max-seconds", "1200"]
            cmd += ["--broker", broker] if broker else ["--url", url]
            err = open(os.path.join(workdir, f"{prefix}-gen{index}.err"), "wb")  # noqa: SIM115 - closed in stop()
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, start_new_session=True,
                                    env={**os.environ, "MC_QUIC_ENGINE": args.loadgen_engine})
            proc.err = err
            lines = queue.Queue()
            threading.Thread(target=self._read, args=(proc, lines), daemon=True).start()
            self.procs.append(proc)
            self.lines.append(lines)

    @staticmethod
    def _read(proc, lines):
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                lines.put(json.loads(line))
        lines.put(None)

    @property
    def pids(self):
        return [p.pid for p in self.procs]


    def send(self, **cmd):
        data = (json.dumps(cmd) + "\n").encode()
        for p in self.procs:
            try:
                p.stdin.write(data)
                p.stdin.flush()
            except OSError:
                pass

    def ask(self, cmd, kind, timeout=20.0):
        """Send ``cmd`` and collect one answer of ``kind`` from each process."""
        self.send(cmd=cmd)
        answers = []
        deadline = time.monotonic() + timeout
        for lines in self.lines:
            while True:
                try:
                    line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(f"a generator did not answer {cmd!r}") from None
                if line is None:
                    raise RuntimeError("a generator exited")
                if line.get("type") == kind:
                    answers.append(line)
                    break
        return answers

    def stats(self):
        return combine(self.ask("stats", "stats"))

    def stop(self):
        """Stop them (they close their connections) and return their reports."""
        reports = []
        with contextlib.suppress(TimeoutError, RuntimeError):
            reports = self.ask("stop", "report", timeout=30)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
            p.err.close()
        return reports


def combine(stats):
    """Sum the generators' counters."""
    out = {"joined": 0, "joins": 0, "failed": 0, "mutes_sent": 0, "pings": 0, "redirects": 0,
           "rejoined": 0, "received": {}, "counters": {}, "by_mc": {}, "latencies": {},
           "connect_times": {}, "pace_late_max": 0.0, "loop_lag_max_ms": 0.0}
    for s in stats:
        for k in ("joined", "joins", "failed", "mutes_sent", "pings", "redirects", "rejoined"):
            out[k] += s[k]
        for k in ("received", "counters", "by_mc"):
            for name, v in s[k].items():
                out[k][name] = out[k].get(name, 0) + v
        for k in ("first_redirect",):
            if s.get(k) is not None:
                out[k] = min(out.get(k) or s[k], s[k])
        for k in ("last_redirect", "last_rejoin"):
            if s.get(k) is not None:
                out[k] = max(out.get(k) or s[k], s[k])
        for k in ("latencies", "connect_times"):
            for phase, values in s.get(k, {}).items():
                out[k].setdefault(phase, []).extend(values)
        out["pace_late_max"] = max(out["pace_late_max"], s.get("pace_late_max", 0.0))
        out["loop_lag_max_ms"] = max(out["loop_lag_max_ms"], s.get("loop_lag_max_ms", 0.0))
    return out


def frames_out(s):
    """Frames the server sent, as the generators counted them."""
    return sum(s["received"].values())


def latency_summary(values):
    values = sorted(values)
    if not values:
        return None
    return {"n": len(values), "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
            "max_ms": round(values[-1] * 1000, 2)}


# -- the MC and the yardstick ----------------------------------------------------

def mc_env(args, workdir, name, server):
    """The MC's environment: its configuration's settings (``CONFIGS``), and
    the hooks of bench/memhook for the diagnostics asked for, if any."""
    env = dict(CONFIGS[server][1])
    hooks = {}
    if args.tracemalloc:
        hooks.update(BENCH_TRACEMALLOC_DUMP=os.path.join(workdir, f"{name}.snap"),
                     BENCH_TRACEMALLOC_FRAMES="6")
    if args.tracemalloc or args.census:
        hooks.update(BENCH_OBJECTS_DUMP=os.path.join(workdir, f"{name}.objects"))
    if args.gc_log:
        hooks.update(BENCH_GC_LOG=os.path.join(workdir, f"{name}.gc"))
    if hooks:
        env.update(hooks, PYTHONPATH=str(ROOT / "bench" / "memhook"))
    return env


def gc_rows(workdir, name):
    """``[(monotonic end, generation, ms)]`` of the MC's logged collections."""
    rows = []
    with contextlib.suppress(OSError), open(os.path.join(workdir, f"{name}.gc")) as f:
        for line in f:
            t, generation, ms, _collected = line.split()
            rows.append((float(t), int(generation), float(ms)))
    return rows


def gc_pauses(args, workdir, name, start, end):
    """The MC's garbage collections in [start, end] (``--gc-log``)."""
    if not args.gc_log:
        return None
    rows = [(g, ms) for t, g, ms in gc_rows(workdir, name) if start <= t <= end]
    full = [ms for g, ms in rows if g == 2]
    return {"gen2": len(full), "gen2_ms_total": round(sum(full)),
            "gen2_max_ms": round(max(full, default=0), 1),
            "over_1ms_total_ms": round(sum(ms for _, ms in rows))}


def start_mc(workdir, fake, redis, mc_id, env=None):
    d = os.path.join(workdir, mc_id)
    os.makedirs(d, exist_ok=True)
    last = ""
    for attempt in range(4):  # the tree is shared: a half-finished edit may stop start-up
        mc = McProcess(d, fake.url, redis.url, SERVICE_TOKEN, GC_TOKEN, mc_id=mc_id,
                       env={**MC_ENV, **(env or {})}, jwks_url=fake.jwks_url).start()
        try:
            wait_for(mc.ready, 30, what=f"{mc_id} /readyz")
            fake.wait_for(lambda: any(h.request.controller_id == mc_id
                                      and h.request.health == 1
                                      for h in fake.heartbeats("fast")), timeout=30)
            return mc
        except TimeoutError:
            last = mc.output()[-2000:] + mc.log()[-2000:]
            mc.stop()
            say(f"  {mc_id} did not start (attempt {attempt + 1}); retrying in 60 s")
            time.sleep(60)
    raise RuntimeError(f"{mc_id} did not start:\n{last}")


class Yardstick:
    def __init__(self, workdir):
        self.cert = write_self_signed(workdir, name="yardstick")
        self.port = free_udp_port()
        self.out = os.path.join(workdir, "yardstick.out")
        self._out = open(self.out, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "wtyardstick.py"), "--listen",
             f"127.0.0.1:{self.port}", "--cert", self.cert.cert_path, "--key",
             self.cert.key_path], stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for(lambda: b"listening" in Path(self.out).read_bytes(), 20,
                 what="yardstick listening")
        self.pid = self.proc.pid
        self.url = f"https://127.0.0.1:{self.port}/"

    def lag(self):
        """The loop-lag samples (ms) since the last call."""
        before = self._lines()
        self.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: len(self._lines()) > len(before), 10, what="yardstick lag")
        return json.loads(self._lines()[-1])["samples_ms"]

    def _lines(self):
        with open(self.out, "rb") as f:
            return [line for line in f.read().splitlines() if b'"lag"' in line]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()


def heartbeats(fake, mc_ids, start, end, interval_s=FAST_MS / 1000):
    """Fast heartbeats of the MCs ``mc_ids`` that arrived in [start, end]: how
    many gaps, the lateness of each after the same MC's previous one (gap
    less the interval; a nudge comes early and is 0 late), how many were
    later than the target, and the health they reported."""
    late, health = [], {}
    for mc_id in mc_ids:
        records = [r for r in fake.heartbeats("fast")
                   if r.request.controller_id == mc_id and r.status == "OK"]
        arrivals = [r.monotonic for r in records]
        late += [max(0.0, (b - a - interval_s) * 1000)
                 for a, b in zip(arrivals, arrivals[1:], strict=False)
                 if start <= a and b <= end]
        for r in records:
            if start <= r.monotonic <= end:
                name = HEALTH_NAMES.get(r.request.health, str(r.request.health))
                health[name] = health.get(name, 0) + 1
    late.sort()
    return {"gaps": len(late), "max_late_ms": round(late[-1], 1) if late else None,
            "late": sum(1 for v in late if v > TARGETS["heartbeat_late_ms"]),
            "health": health}


class Profiler:
    """py-spy record of ``pid`` for ``seconds`` into ``path`` (by suffix)."""

    def __init__(self, pid, path, seconds):
        self.path = path
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--duration", str(int(seconds)), "--gil", "--rate", "100", "--nonblocking",
             "-o", path, "-f", PROFILE_FORMATS.get(Path(path).suffix, "speedscope")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self):
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- one size, one server ----------------------------------------------------------

class Meter:
    """CPU seconds of named groups of processes, and how busy the whole
    machine was, over one phase. ``others_pct``: the machine's busy time not
    spent by any process of the benchmark (other people's work), in % of all
    its cores."""

    def __init__(self, groups, drops=()):
        self.groups = groups  # name -> list of pids
        self.drops = drops  # the names whose UDP drops are counted
        self.t0 = time.monotonic()
        self.c0 = {k: self._cpu(pids) for k, pids in groups.items()}
        self.d0 = {k: udp_drops(groups[k]) for k in drops}
        self.h0 = host_busy()

    @staticmethod
    def _cpu(pids):
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def read(self):
        seconds = time.monotonic() - self.t0
        cpu = {k: round(self._cpu(pids) - self.c0[k], 2) for k, pids in self.groups.items()}
        busy, total = (b - a for a, b in zip(self.h0, host_busy(), strict=True))
        ours = sum(cpu.values()) * CLK_TCK
        return {"seconds": round(seconds, 2), "cpu_s": cpu,
                "udp_drops": {k: udp_drops(self.groups[k]) - self.d0[k] for k in self.drops},
                "host_pct": round(100 * busy / max(1, total), 1),
                "others_pct": round(max(0.0, 100 * (busy - ours) / max(1, total)), 1)}


def run_size(args, workdir, fake, redis, broker, server, n, seq):
    """Join, steady and drain of one server at one size; its figures."""
    r = {"server": server, "n": n, "loadavg_start": loadavg()}
    if server in CONFIGS:
        r["config"] = CONFIGS[server][0]
    prefix = f"pb{seq}-{server.replace('-', '')[:6]}-{n}"
    mc = mc2 = yard = gens = None
    mcs = []
    profile = args.profile
    try:
        if server in CONFIGS:
            for suffix in ("a", "c")[:2 if server == "mc-x2" else 1]:
                name = f"{prefix}-{suffix}"
                mcs.append(start_mc(workdir, fake, redis, name,
                                    mc_env(args, workdir, name, server)))
            mc = mcs[0]
            pids, mc_id = [m.pid for m in mcs], mc.mc_id
            if len(mcs) > 1:
                r["placed"] = place_alternately(fake, mcs, n, args.group, prefix)
        else:
            yard = Yardstick(workdir)
            pids, mc_id = [yard.pid], None
        pid = pids[0]
        # Settle, then the idle cost and RSS with nobody.
        time.sleep(3)
        idle = Meter({"server": pids})
        time.sleep(3)
        idle = idle.read()
        r["idle_cpu_pct"] = round(100 * idle["cpu_s"]["server"] / idle["seconds"], 2)
        r["rss0"] = sum(vm_rss(p) for p in pids)
        snapshot(args, workdir, f"{prefix}-a", mc, 0)

        # -- join ------------------------------------------------------------
        say(f"{server} N={n}: join at {args.rate:g}/s from {args.procs} processes "
            f"(load average {r['loadavg_start']})")
        lag = Lag(mcs, yard)
        gens = Generators(workdir, args, n, prefix, broker=broker.address if mc else None,
                          url=yard.url if yard else None)
        wait_for(lambda: time.monotonic() >= gens.t0, 10)
        meter = Meter(groups(pids, gens, redis), drops=("server", "generators"))
        assigned0 = broker.assigned
        prof = (Profiler(pid, os.path.join(profile, f"{prefix}-join.txt"),
                         n / args.rate + 5) if profile else None)
        deadline = time.monotonic() + n / args.rate + 120
        while True:
            s = gens.stats()
            if s["joined"] + s["failed"] >= n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        m = meter.read()
        t_a, t_b = meter.t0, time.monotonic()
        joined = max(1, s["joined"])
        r["join"] = {
            "seconds": m["seconds"], "joined": s["joined"], "failed": s["failed"],
            "rate": round(s["joined"] / m["seconds"], 1), "cpu_s": m["cpu_s"],
            "cpu_per_join_ms": round(1000 * m["cpu_s"]["server"] / joined, 2),
            "gen_cpu_per_join_ms": round(1000 * m["cpu_s"]["generators"] / joined, 2),
            "host_cpu_pct": m["host_pct"], "others_cpu_pct": m["others_pct"],
            "frames_out": frames_out(s), "retries": s["counters"], "udp_drops": m["udp_drops"],
            "assignments": broker.assigned - assigned0, "pings": s["pings"],
            "gen_loop_lag_max_ms": s["loop_lag_max_ms"], "loadavg": loadavg()}
        if prof:
            prof.wait()
        r["join"].update(lag.read())
        if mc:
            r["join"]["heartbeats"] = heartbeats(fake, [m.mc_id for m in mcs], t_a, t_b)
            r["join"]["gc"] = gc_pauses(args, workdir, f"{prefix}-a", t_a, t_b)
            r["join"]["degraded"] = degraded_causes(args, fake, workdir, mc_id,
                                                    f"{prefix}-a", t_a, t_b)
        time.sleep(1)
        r["rss_joined"] = sum(vm_rss(p) for p in pids)
        r["rss_per_participant"] = round((r["rss_joined"] - r["rss0"]) / joined)
        snapshot(args, workdir, f"{prefix}-a", mc, 1)
        if args.tracemalloc and mc:
            r["tracemalloc"] = tracemalloc_breakdown(
                os.path.join(workdir, f"{prefix}-a.snap.0"),
                os.path.join(workdir, f"{prefix}-a.snap.1"), joined)
            r["objects"] = objects_breakdown(
                os.path.join(workdir, f"{prefix}-a.objects.0"),
                os.path.join(workdir, f"{prefix}-a.objects.1"), joined)
        j = r["join"]
        say(f"  joined {s['joined']}/{n} in {j['seconds']} s; CPU {j['cpu_per_join_ms']} ms/join "
            f"(generators {j['gen_cpu_per_join_ms']}); lag p99 {j['lag']['p99_ms']} ms; machine "
            f"{j['host_cpu_pct']} % busy ({j['others_cpu_pct']} % others); RSS "
            f"{r['rss_per_participant'] / 1024:.1f} KiB/participant; UDP drops {j['udp_drops']}; "
            f"retries {s['counters']}; collector {j.get('collector')}")

        # -- steady ----------------------------------------------------------
        gens.send(cmd="phase", name="steady")
        gens.send(cmd="mute", at=time.monotonic() + 0.5, every=args.mute_every)
        time.sleep(0.5 + args.warmup)
        lag = Lag(mcs, yard)
        s0 = gens.stats()
        meter = Meter(groups(pids, gens, redis), drops=("server", "generators"))
        prof = (Profiler(pid, os.path.join(profile, f"{prefix}-steady.txt"), args.steady)
                if profile else None)
        time.sleep(args.steady)
        s1 = gens.stats()
        m = meter.read()
        t_a, t_b = meter.t0, time.monotonic()
        msgs_in = s1["mutes_sent"] - s0["mutes_sent"]
        msgs_out = frames_out(s1) - frames_out(s0)
        cpu = m["cpu_s"]["server"]
        r["steady"] = {
            "seconds": m["seconds"], "joined": s1["joined"], "in": msgs_in, "out": msgs_out,
            "cpu_s": m["cpu_s"], "server_cpu_pct": round(100 * cpu / m["seconds"], 1),
            "cpu_per_message_us": round(1e6 * cpu / max(1, msgs_in + msgs_out), 1),
            "cpu_per_mute_us": round(1e6 * cpu / max(1, msgs_in), 1),
            "gen_cpu_per_message_us": round(1e6 * m["cpu_s"]["generators"]
                                            / max(1, msgs_in + msgs_out), 1),
            "host_cpu_pct": m["host_pct"], "others_cpu_pct": m["others_pct"],
            "participants_per_core": round(n / (cpu / m["seconds"])) if cpu > 0 else None,
            "udp_drops": m["udp_drops"],
            "retries": {k: v - s0["counters"].get(k, 0) for k, v in s1["counters"].items()
                        if v != s0["counters"].get(k, 0)},
            "gen_loop_lag_max_ms": s1["loop_lag_max_ms"], "loadavg": loadavg()}
        if prof:
            prof.wait()
        r["steady"].update(lag.read())
        if mc:
            r["steady"]["heartbeats"] = heartbeats(fake, [m.mc_id for m in mcs], t_a, t_b)
            r["steady"]["gc"] = gc_pauses(args, workdir, f"{prefix}-a", t_a, t_b)
            r["steady"]["degraded"] = degraded_causes(args, fake, workdir, mc_id,
                                                      f"{prefix}-a", t_a, t_b)
        r["rss_steady"] = sum(vm_rss(p) for p in pids)
        st = r["steady"]
        say(f"  steady: {msgs_in} in, {msgs_out} out in {st['seconds']} s; CPU "
            f"{st['cpu_per_message_us']} us/message ({st['server_cpu_pct']} % of a core); lag "
            f"p99 {st['lag']['p99_ms']} ms; machine {st['host_cpu_pct']} % busy "
            f"({st['others_cpu_pct']} % others); UDP drops {st['udp_drops']}; collector "
            f"{st.get('collector')}")

        # -- drain -----------------------------------------------------------
        if mc:
            r["heartbeats_first_mc"] = heartbeats(fake, [m.mc_id for m in mcs], 0,
                                                  time.monotonic())
        if mc and len(mcs) == 1 and not args.no_drain:
            mc2, r["drain"] = drain(args, workdir, fake, redis, mc, gens, prefix, n, server)
        if mc:
            hb = [r["heartbeats_first_mc"]] + ([r["drain"]["mc2_heartbeats"]]
                                               if r.get("drain") else [])
            r["heartbeats_all"] = {
                "gaps": sum(h["gaps"] for h in hb),
                "late": sum(h["late"] for h in hb),
                "max_late_ms": max((h["max_late_ms"] or 0) for h in hb)}
        final = combine(gens.stop())
        gens = None
        r["join_latency"] = {phase: latency_summary(v) for phase, v in final["latencies"].items()}
        r["connect_time"] = {phase: latency_summary(v)
                             for phase, v in final["connect_times"].items()}
        r["pace_late_max_ms"] = round(final["pace_late_max"] * 1000, 1)
        r["counters"] = final["counters"]
        r["loadavg_end"] = loadavg()
        lat = r["join_latency"].get("join") or {}
        say(f"  join latency p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms")
        return r
    finally:
        if gens is not None:
            gens.stop()
        for m in (*mcs, mc2):
            if m is not None:
                m.stop()
        if yard is not None:
            yard.stop()


def groups(pids, gens, redis):
    return {"server": pids, "generators": gens.pids, "runner": [os.getpid()],
            "redis": [redis._proc.pid]}


def place_alternately(fake, mcs, n, group, prefix):
    """Place the run's meetings on ``mcs`` in turn, as a GC spreading them
    would (the fake's own choice, least loaded by the last heartbeat, would
    put 10 s of meetings on one MC); the join flow then reuses the places."""
    meetings = [f"{prefix}-m{i}" for i in range((n + group - 1) // group)]
    for i, meeting in enumerate(meetings):
        fake.place(meeting, mcs[i % len(mcs)].mc_id)
    return {m.mc_id: len(meetings[i::len(mcs)]) for i, m in enumerate(mcs)}


def collector_pauses(mc):
    """The MC's ``mc_python_gc_pause_seconds`` now: per generation, the
    count, the sum and the cumulative count at each bucket bound."""
    status, body = mc.http("/metrics")
    out = {}
    if status != 200:
        return out
    for line in body.splitlines():
        if not line.startswith("mc_python_gc_pause_seconds"):
            continue
        name, value = line.rsplit(" ", 1)
        generation = name.split('generation="', 1)[1].split('"', 1)[0]
        g = out.setdefault(generation, {"buckets": {}})
        if "_bucket{" in name:
            g["buckets"][float(name.split('le="', 1)[1].split('"', 1)[0])] = float(value)
        elif name.startswith("mc_python_gc_pause_seconds_count"):
            g["count"] = float(value)
        elif name.startswith("mc_python_gc_pause_seconds_sum"):
            g["sum"] = float(value)
    return out


def collector_summary(before, after):
    """Collections between two ``collector_pauses`` reads of each MC, summed:
    how many (full ones apart), their total pause, how many over 10 and
    50 ms (the histogram's bounds)."""
    out = {"collections": 0, "full": 0, "pause_ms": 0.0, "over_10ms": 0, "over_50ms": 0}
    for b_all, a_all in zip(before, after, strict=True):
        for generation, a in a_all.items():
            b = b_all.get(generation, {"buckets": {}})
            count = a.get("count", 0) - b.get("count", 0)
            out["collections"] += int(count)
            out["full"] += int(count) if generation == "2" else 0
            out["pause_ms"] += 1000 * (a.get("sum", 0) - b.get("sum", 0))
            for bound, key in ((0.01, "over_10ms"), (0.05, "over_50ms")):
                under = a["buckets"].get(bound, 0) - b["buckets"].get(bound, 0)
                out[key] += int(count - under)
    out["pause_ms"] = round(out["pause_ms"], 1)
    return out


def _histogram_sum(histograms):
    total = {}
    for h in histograms:
        for le, count in h.items():
            total[le] = total.get(le, 0.0) + count
    return total


class Lag:
    """The servers' lag over a phase: each MC's ``mc_reactor_lag_seconds``
    every 250 ms and its histogram, pooled over the MCs; the yardstick's own
    samples."""

    def __init__(self, mcs, yard):
        self.mcs, self.yard = mcs, yard
        if mcs:
            self.before = _histogram_sum(lag_histogram(m) for m in mcs)
            self.collector = [collector_pauses(m) for m in mcs]
            self.samplers = [LagSampler(m) for m in mcs]
            for sampler in self.samplers:
                sampler.start()
        else:
            yard.lag()

    def read(self):
        if not self.mcs:
            return {"lag": lag_of(self.yard.lag())}
        for sampler in self.samplers:
            sampler.stop()
        after = _histogram_sum(lag_histogram(m) for m in self.mcs)
        return {"lag": lag_summary(self.before, after,
                                   [v for sampler in self.samplers for v in sampler.samples]),
                "collector": collector_summary(
                    self.collector, [collector_pauses(m) for m in self.mcs])}


def snapshot(args, workdir, name, mc, k):
    """Have the MC write tracemalloc snapshot and object census ``k``."""
    if not (args.tracemalloc and mc):
        return
    mc.signal(signal.SIGRTMIN)
    mc.signal(signal.SIGRTMIN + 1)
    for what in ("snap", "objects"):
        path = os.path.join(workdir, f"{name}.{what}.{k}")
        wait_for(lambda p=path: os.path.exists(p), 300, interval=0.5, what=path)


def census(workdir, name, mc, k, collect=False):
    """The MC's tracked objects now (census ``k``), then optionally what a
    forced full collection finds."""
    mc.signal(signal.SIGRTMIN + 1)
    path = os.path.join(workdir, f"{name}.objects.{k}")
    wait_for(lambda: os.path.exists(path), 120, interval=0.25, what=path)
    with open(path) as f:
        out = {"tracked": json.load(f)["tracked"]}
    if collect:
        mc.signal(signal.SIGRTMIN + 2)
        path = os.path.join(workdir, f"{name}.objects.collect.0")
        wait_for(lambda: os.path.exists(path), 120, interval=0.25, what=path)
        with open(path) as f:
            out["full_collection"] = json.load(f)
    return out


def lag_of(samples):
    lags = sorted(samples)
    return {"samples": len(lags), "p50_ms": round(percentile(lags, 50), 1) if lags else None,
            "p99_ms": round(percentile(lags, 99), 1) if lags else None,
            "max_ms": round(lags[-1], 1) if lags else None}


def degraded_causes(args, fake, workdir, mc_id, name, start, end):
    """The heartbeats of ``mc_id`` in [start, end] that said DEGRADED, by
    likely cause: ``gc_pause`` when one arrived within 1.5 s after a
    collection of over 400 ms ended (``--gc-log``; the lag it caused is over
    MC_REACTOR_LAG_THRESHOLD, 0.5 s), else ``machine_cpu`` when the machine
    was at least 85 % busy over the 2.5 s before it, else ``other`` (its own
    CPU over the last 30 s, or lag)."""
    arrivals = [r.monotonic for r in fake.heartbeats("fast")
                if r.request.controller_id == mc_id and start <= r.monotonic <= end
                and r.request.health == 2]
    pauses = gc_rows(workdir, name) if args.gc_log else []
    out = {"degraded_heartbeats": len(arrivals), "gc_pause": 0, "machine_cpu": 0, "other": 0}
    for t in arrivals:
        if any(ms > 400 and 0 <= t - end_at <= 1.5 for end_at, _g, ms in pauses):
            out["gc_pause"] += 1
        elif HOST.busy(t - 2.5, t) >= 85:
            out["machine_cpu"] += 1
        else:
            out["other"] += 1
    return out


def drain(args, workdir, fake, redis, mc1, gens, prefix, n, server):
    say(f"  drain: starting {prefix}-b, then SIGUSR2 to {mc1.mc_id}")
    mc2 = start_mc(workdir, fake, redis, f"{prefix}-b",
                   mc_env(args, workdir, f"{prefix}-b", server))
    gens.send(cmd="phase", name="drain")
    time.sleep(1)
    lag = Lag([mc2], None)
    rss2_0 = vm_rss(mc2.pid)
    meter = Meter({"first": [mc1.pid], "second": [mc2.pid], "generators": gens.pids,
                   "runner": [os.getpid()], "redis": [redis._proc.pid]},
                  drops=("first", "second", "generators"))
    prof = (Profiler(mc2.pid, os.path.join(args.profile, f"{prefix}-drain.txt"), 30)
            if args.profile else None)
    before = census(workdir, f"{prefix}-a", mc1, 0) if args.census else None
    rss1_0 = vm_rss(mc1.pid)
    t_sig = time.monotonic()
    mc1.signal(signal.SIGUSR2)
    deadline = t_sig + args.drain_timeout
    while True:
        s = gens.stats()
        if s["by_mc"].get(mc2.mc_id, 0) + s["failed"] >= n or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    m = meter.read()
    rss1_1 = vm_rss(mc1.pid)
    t_end = time.monotonic()
    on_mc2 = s["by_mc"].get(mc2.mc_id, 0)
    done_at = s.get("last_rejoin") if on_mc2 >= n else None
    # Nobody left behind: the first MC counts nobody, the second everybody.
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: mc1.metric("mc_participants_current") == 0, 10, interval=0.25)
    if prof:
        prof.wait()
    left = None
    if args.census:
        time.sleep(5)
        left = {"before": before, "after": census(workdir, f"{prefix}-a", mc1, 1, collect=True),
                }
    out = {
        "first_mc_garbage": left, "first_rss_before": rss1_0, "first_rss_after": rss1_1,
        "seconds": round(done_at - t_sig, 2) if done_at else None,
        "on_second_mc": on_mc2,
        "left_on_first_mc": int(mc1.metric("mc_participants_current") or 0),
        "second_mc_counts": int(mc2.metric("mc_participants_current") or 0),
        "failed": s["failed"], "redirects": s["redirects"],
        "first_redirect_s": round(s["first_redirect"] - t_sig, 3)
        if s.get("first_redirect") else None,
        "last_redirect_s": round(s["last_redirect"] - t_sig, 3)
        if s.get("last_redirect") else None,
        "retries": s["counters"], "cpu_s": m["cpu_s"], "udp_drops": m["udp_drops"],
        "second_cpu_per_join_ms": round(1000 * m["cpu_s"]["second"] / max(1, on_mc2), 2),
        "host_cpu_pct": m["host_pct"], "others_cpu_pct": m["others_pct"],
        "window_s": m["seconds"], "loadavg": loadavg(),
        "second_rss_per_participant": round((vm_rss(mc2.pid) - rss2_0) / max(1, on_mc2)),
        "mc2_lag": lag.read()["lag"],
        "mc2_heartbeats": heartbeats(fake, [mc2.mc_id], t_sig, t_end),
        "mc2_gc": gc_pauses(args, workdir, f"{prefix}-b", t_sig, t_end),
        "mc2_degraded": degraded_causes(args, fake, workdir, mc2.mc_id, f"{prefix}-b", t_sig,
                                        t_end),
        "mc1_heartbeats": heartbeats(fake, [mc1.mc_id], t_sig, t_end),
    }
    say(f"  drain: {on_mc2}/{n} on the second MC in {out['seconds']} s (redirects "
        f"{out['first_redirect_s']}-{out['last_redirect_s']} s after SIGUSR2), left on the "
        f"first {out['left_on_first_mc']}, second counts {out['second_mc_counts']}; second "
        f"MC {out['second_cpu_per_join_ms']} ms CPU/join, lag p99 {out['mc2_lag']['p99_ms']} "
        f"ms, health {out['mc2_heartbeats']['health']}; UDP drops {out['udp_drops']}; retries "
        f"{s['counters']}")
    return mc2, out


def tracemalloc_breakdown(before_path, after_path, n, top=25):
    """What the memory grown between two snapshots is, per participant: by
    allocation site (file:line) and by package."""
    import tracemalloc

    before = tracemalloc.Snapshot.load(before_path)
    after = tracemalloc.Snapshot.load(after_path)
    by_line = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in by_line)
    sites = [{"site": f"{_short(d.traceback[0].filename)}:{d.traceback[0].lineno}",
              "bytes_per_participant": round(d.size_diff / n),
              "blocks_per_participant": round(d.count_diff / n, 2)}
             for d in by_line[:top]]
    packages = {}
    for d in by_line:
        name = _package(d.traceback[0].filename)
        packages[name] = packages.get(name, 0) + d.size_diff
    return {"traced_bytes_per_participant": round(total / n), "sites": sites,
            "packages": {k: round(v / n) for k, v in
                         sorted(packages.items(), key=lambda kv: -kv[1])[:12]}}


def objects_breakdown(before_path, after_path, n, top=20):
    """The objects the garbage collector tracks, before and after, per
    participant, by type: what a full collection has to walk."""
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    was = dict(before["types"])
    grown = sorted(((name, count - was.get(name, 0)) for name, count in after["types"]),
                   key=lambda kv: -kv[1])[:top]
    return {"tracked_before": before["tracked"], "tracked_after": after["tracked"],
            "tracked_per_participant": round((after["tracked"] - before["tracked"]) / n, 1),
            "types_per_participant": {name: round(d / n, 2) for name, d in grown}}


def _short(filename):
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _package(filename):
    short = _short(filename)
    return short.split("/", 1)[0] if "/" in short else short


# -- the report ------------------------------------------------------------------

def mark(ok):
    return "met" if ok else "**missed**"


def report(results):
    rows = results["runs"]
    say()
    say("| server | N | CPU/join ms | CPU/message us | join p50 / p99 ms | lag p99 ms "
        "(join, steady) | fast heartbeats > 50 ms late | RSS/participant KiB | drain s (left "
        "behind; receiving MC's health) | participants/core (steady) | generators: CPU/join "
        "ms, /message us | machine busy % (others) join; steady | load average (start; "
        "steady) |")
    say("|" + "---|" * 13)
    for r in rows:
        j, s = r["join"], r["steady"]
        lat = r["join_latency"].get("join") or {}
        hb = r.get("heartbeats_all")
        hb_text = f"{hb['late']} of {hb['gaps']} (max {hb['max_late_ms']})" if hb else "n/a"
        d = r.get("drain")
        d_text = (f"{d['seconds']} ({d['left_on_first_mc']}; "
                  f"{d['mc2_heartbeats']['health']})" if d else "n/a")
        say(f"| {r['server']} | {r['n']} | {j['cpu_per_join_ms']} | {s['cpu_per_message_us']} | "
            f"{lat.get('p50_ms')} / {lat.get('p99_ms')} | {j['lag']['p99_ms']}, "
            f"{s['lag']['p99_ms']} | {hb_text} | {r['rss_per_participant'] / 1024:.1f} | "
            f"{d_text} | {s['participants_per_core']} | {j['gen_cpu_per_join_ms']}, "
            f"{s['gen_cpu_per_message_us']} | {j['host_cpu_pct']} ({j['others_cpu_pct']}); "
            f"{s['host_cpu_pct']} ({s['others_cpu_pct']}) | {r['loadavg_start'][0]}; "
            f"{s['loadavg'][0]} |")
    for r in rows:
        if r["server"] not in CONFIGS or r["server"] == "mc-x2":
            continue
        j, s, d = r["join"], r["steady"], r.get("drain")
        lat = r["join_latency"].get("join") or {}
        hb = r["heartbeats_all"]
        t = TARGETS
        say()
        say(f"targets, {r['server']} ({r['config']}) at N = {r['n']}:")
        checks = [
            (f"CPU per join <= {t['cpu_per_join_ms']} ms",
             j["cpu_per_join_ms"] <= t["cpu_per_join_ms"], f"{j['cpu_per_join_ms']} ms"),
            (f"CPU per message <= {t['cpu_per_message_us']} us",
             s["cpu_per_message_us"] <= t["cpu_per_message_us"],
             f"{s['cpu_per_message_us']} us"),
            (f"JoinRequest to JoinResponse p99 < {t['join_p99_ms']} ms",
             (lat.get("p99_ms") or 1e9) < t["join_p99_ms"], f"{lat.get('p99_ms')} ms"),
            (f"reactor lag p99 < {t['lag_p99_ms']} ms, joining and holding",
             max(j["lag"]["p99_ms"] or 1e9, s["lag"]["p99_ms"] or 1e9) < t["lag_p99_ms"],
             f"join {j['lag']['p99_ms']} ms, steady {s['lag']['p99_ms']} ms"),
            (f"no fast heartbeat > {t['heartbeat_late_ms']:g} ms late",
             hb["gaps"] > 0 and hb["late"] == 0,
             f"{hb['late']} of {hb['gaps']}, max {hb['max_late_ms']} ms"),
            (f"RSS <= {t['rss_per_participant_kib']:g} KiB per participant",
             r["rss_per_participant"] / 1024 <= t["rss_per_participant_kib"],
             f"{r['rss_per_participant'] / 1024:.1f} KiB"),
        ]
        if d:
            health = d["mc2_heartbeats"]["health"]
            checks.append((f"drain of all to another MC < {t['drain_s']:g} s, none left "
                           "behind, the receiving MC never DEGRADED",
                           d["seconds"] is not None and d["seconds"] < t["drain_s"]
                           and d["left_on_first_mc"] == 0 and d["on_second_mc"] == r["n"]
                           and not health.get("DEGRADED"),
                           f"{d['seconds']} s, {d['on_second_mc']} on the second MC, "
                           f"{d['left_on_first_mc']} left, its health {health}"))
        for name, ok, figure in checks:
            say(f"  [{mark(ok)}] {name}: {figure}")
    pairs = {r["n"]: r for r in rows if r["server"] == "mc"}
    for r in rows:
        one = pairs.get(r["n"])
        if r["server"] != "mc-x2" or one is None:
            continue
        say()
        say(f"two MCs on this host against one, N = {r['n']} offered at "
            f"{results['settings']['rate']:g}/s:")
        for name, row in (("one MC", one), ("two MCs", r)):
            j, s = row["join"], row["steady"]
            lat = row["join_latency"].get("join") or {}
            say(f"  {name}: {j['joined']} joined at {j['rate']}/s (join p99 {lat.get('p99_ms')} "
                f"ms), {s['joined']} held while muting at {s['server_cpu_pct']} % of a core "
                f"in all, lag p99 {s['lag']['p99_ms']} ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[500, 1000, 2000], help="participants, comma-separated "
                        "(default 500,1000,2000)")
    parser.add_argument("--servers", default="mc,yardstick",
                        help="comma-separated, run in this order at each size: yardstick "
                        "(bench/wtyardstick.py) or a configuration of the MC: "
                        + "; ".join(f"{k} ({v[0]})" for k, v in CONFIGS.items())
                        + "; default mc,yardstick")
    parser.add_argument("--loadgen-engine", choices=("aioquic", "qh3"), default="qh3",
                        help="the load generators' QUIC engine (MC_QUIC_ENGINE of their "
                        "processes; default qh3, whose compiled core keeps them from bounding "
                        "the figures)")
    parser.add_argument("--procs", type=int, default=4,
                        help="load generator processes (default 4)")
    parser.add_argument("--rate", type=float, default=100.0, help="joins a second (100)")
    parser.add_argument("--group", type=int, default=10, help="participants per meeting")
    parser.add_argument("--mute-every", type=float, default=10.0,
                        help="seconds between one participant's mutes (10)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of muting before the steady window (5)")
    parser.add_argument("--steady", type=float, default=30.0,
                        help="measured seconds of the steady phase (30, at most 300)")
    parser.add_argument("--no-drain", action="store_true", help="skip the drain")
    parser.add_argument("--drain-timeout", type=float, default=180.0,
                        help="give the drain up after this long (180 s)")
    parser.add_argument("--rejoin-inflight", type=int, default=16,
                        help="rejoins in flight at once per generator process (16)")
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy (--gil, collapsed stacks) of the server in each phase "
                        "into DIR; costs CPU: not for the table")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="run the MC under tracemalloc (bench/memhook) and break down "
                        "what a participant holds; slows the MC: not for the table")
    parser.add_argument("--gc-log", action="store_true",
                        help="log the MC's garbage collections (bench/memhook) and report "
                        "their pauses per phase")
    parser.add_argument("--census", action="store_true",
                        help="count the first MC's tracked objects before the drain and "
                        "after it, then force a full collection: the garbage a drain leaves "
                        "for the collector (bench/memhook)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs)")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, through every ``finally`` that stops a process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not 0 < args.steady <= 300 or max(args.sizes) > 20000 or args.procs < 1:
        parser.error("--steady in (0, 300], sizes at most 20000, --procs >= 1")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    servers = args.servers.split(",")
    if not set(servers) <= {"yardstick", *CONFIGS}:
        parser.error(f"--servers: yardstick, {', '.join(CONFIGS)}")
    results = {"machine": machine(), "tree": tree(), "settings": {
        k: getattr(args, k) for k in ("sizes", "servers", "procs", "rate", "group",
                                      "mute_every", "warmup", "steady", "rejoin_inflight",
                                      "loadgen_engine")}, "runs": []}
    m = results["machine"]
    say(f"{m['date']}  nproc {m['nproc']}  {m['cpu']}  Python {m['python']}  "
        f"tree {results['tree']}  load average {loadavg()}")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with (contextlib.nullcontext(args.keep) if args.keep else
          tempfile.TemporaryDirectory(prefix="mc-bench-participants-")) as workdir:
        redis = RedisProcess(dir=workdir)
        fake = FakeGc(SERVICE_TOKEN, mc_token=GC_TOKEN, max_workers=8)
        fake.set_intervals(FAST_MS, COMPREHENSIVE_MS)
        redis.start()
        fake.start()
        broker = JoinBroker(fake).start()
        HOST.start()
        runner_cpu = cpu_seconds(os.getpid())
        try:
            seq = 0
            for n in args.sizes:
                for server in servers:
                    seq += 1
                    results["runs"].append(run_size(args, workdir, fake, redis, broker, server,
                                                    n, seq))
                    if args.json:  # keep what is done so far
                        with open(args.json, "w") as f:
                            json.dump(results, f, indent=1, default=str)
        finally:
            results["runner_cpu_s"] = round(cpu_seconds(os.getpid()) - runner_cpu, 1)
            HOST.stop()
            broker.stop()
            fake.stop()
            redis.cleanup()
    report(results)
    say(f"runner (fake GC, join broker, probes) CPU {results['runner_cpu_s']} s; load average "
        f"now {loadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
