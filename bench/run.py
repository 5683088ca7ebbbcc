"""``make bench``: the MC and the baseline side by side, in one run, on loopback.

Starts a throwaway redis-server, the fake GC (in this process: it records each
heartbeat's arrival time), the baseline (bench/baseline.py) and ``twistd mc``
(McProcess), then for each concurrency runs the load generator
(bench/loadgen.py, a process of its own) against the baseline and then the MC.
During the MC's run at ``--full-load`` concurrency it measures the lateness of
every fast heartbeat at the fake GC and the reactor lag from the MC's
/metrics histogram. Then the memory probe: RSS of a fresh MC with 0, 10 000
and 20 000 hosted meetings. Prints a table, the MC / baseline ratios and the
targets of issue 6, and with ``--json FILE`` writes every figure.

    python bench/run.py                       # everything, a few minutes
    python bench/run.py -c 16 -d 5 --no-memory
    python bench/run.py --only memory
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import percentile, run_load  # noqa: E402
from mc.testing.daemon import McProcess, wait_for  # noqa: E402
from mc.testing.fakegc import FakeGc  # noqa: E402
from mc.testing.redisproc import RedisProcess, free_port  # noqa: E402

SERVICE_TOKEN = "bench-service-token"
GC_TOKEN = "bench-gc-token"
#: Capacity far above what a run can fill, so nothing is rejected for capacity.
CAPACITY_ENV = {"MC_MAX_MEETINGS": "100000000", "MC_MAX_PARTICIPANTS": "2000000000",
                # Meetings of a run must not end (and be deleted) during later runs.
                "MC_MEETING_IDLE_SECONDS": "86400"}
#: A long comprehensive interval: the ownership sweep (one fenced write per
#: hosted meeting every half interval) would otherwise load the MC with the
#: tens of thousands of meetings a run leaves behind, which the baseline
#: never does. The accept path is what is measured.
COMPREHENSIVE_MS = 3_600_000
#: py-spy output formats by the --profile file's suffix (.txt: collapsed stacks).
PROFILE_FORMATS = {".json": "speedscope", ".svg": "flamegraph", ".txt": "raw"}

TARGETS = {"calls_ratio": 1.5, "heartbeat_late_ms": 100.0, "lag_p99_ms": 50.0,
           "rss_per_meeting_bytes": 2048}


def say(text=""):
    print(text, flush=True)


def loadgen(target, concurrency, duration, warmup, count=None):
    """Run bench/loadgen.py in a process of its own (its own GIL); its summary."""
    cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--target", target,
           "--token", GC_TOKEN, "-c", str(concurrency), "-d", str(duration),
           "--warmup", str(warmup), "--json"]
    if count is not None:
        cmd += ["--count", str(count)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         timeout=duration + warmup + 60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def lag_histogram(mc):
    """``{upper_bound: cumulative_count}`` of mc_reactor_lag_distribution_seconds."""
    status, body = mc.http("/metrics")
    if status != 200:
        return {}
    buckets = {}
    for line in body.splitlines():
        if line.startswith("mc_reactor_lag_distribution_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


class LagSampler(threading.Thread):
    """Reads the MC's last reactor lag (mc_reactor_lag_seconds, the lateness
    of its 250 ms health tick) every ``period`` seconds until stopped. The
    histogram's buckets are too coarse for a p99; these samples are not."""

    def __init__(self, mc, period=0.25):
        super().__init__(daemon=True)
        self._mc, self._period = mc, period
        self._done = threading.Event()
        self.samples = []

    def run(self):
        while not self._done.wait(self._period):
            value = self._mc.metric("mc_reactor_lag_seconds")
            if value is not None:
                self.samples.append(value * 1000)

    def stop(self):
        self._done.set()
        self.join(5)


def lag_summary(before, after, sampled_ms):
    """Reactor-lag figures of a run: the sampled ticks' p99 and max, and from
    the histogram between two scrapes every tick's count and those over 50 ms."""
    diff = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = diff.get(float("inf"), 0.0)
    lags = sorted(sampled_ms)
    return {"ticks": int(total), "ticks_over_50ms": int(total - diff.get(0.05, 0.0)),
            "samples": len(lags),
            "p50_ms": round(percentile(lags, 50), 1) if lags else None,
            "p99_ms": round(percentile(lags, 99), 1) if lags else None,
            "max_ms": round(lags[-1], 1) if lags else None}


def heartbeat_lateness(gc, start, end, interval_s):
    """Lateness (ms) of each fast heartbeat that arrived in [start, end]: its
    gap after the previous one, less the interval."""
    arrivals = [r.monotonic for r in gc.heartbeats("fast") if r.status == "OK"]
    late = [max(0.0, (b - a - interval_s) * 1000)
            for a, b in zip(arrivals, arrivals[1:], strict=False) if start <= a and b <= end]
    late.sort()
    return {"heartbeats": len(late), "max_late_ms": round(late[-1], 1) if late else None,
            "p50_late_ms": round(percentile(late, 50), 1) if late else None,
            "over_100ms": sum(1 for v in late if v > 100)}


def start_mc(workdir, gc, redis, mc_id):
    mc = McProcess(workdir, gc.url, redis.url, SERVICE_TOKEN, GC_TOKEN, mc_id=mc_id,
                   env=CAPACITY_ENV).start()
    try:
        wait_for(mc.ready, 30, what=f"{mc_id} /readyz")
        gc.wait_for(lambda: any(r.request.controller_id == mc_id
                                for r in gc.heartbeats("fast")), timeout=30)
    except TimeoutError:
        mc.stop()
        raise RuntimeError(f"{mc_id} did not start:\n{mc.output()[-3000:]}") from None
    return mc


def start_baseline(workdir, redis):
    port = free_port()
    log = open(os.path.join(workdir, "baseline.out"), "w+b")  # noqa: SIM115 - closed by caller
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "baseline.py"), "--listen", f"127.0.0.1:{port}",
         "--redis-url", redis.url, "--token", GC_TOKEN],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    target = f"127.0.0.1:{port}"
    try:
        asyncio.run(run_load(target, GC_TOKEN, 1, 5.0, count=1))
    except Exception:
        proc.kill()
        raise
    return proc, log, target


def throughput(args, workdir, redis, gc, results):
    interval_s = args.heartbeat_ms / 1000
    baseline, baseline_log, baseline_target = start_baseline(workdir, redis)
    mc = None
    try:
        mc = start_mc(workdir, gc, redis, "mc-bench-1")
        results["mc_pid"] = mc.pid
        rows = results["runs"] = []
        # Rounds alternate which server goes first, so a machine whose speed
        # drifts (a VM's does) favours neither; ratios are taken within a round.
        plan = [(rnd, c, name) for rnd in range(args.rounds) for c in args.concurrency
                for name in (args.servers if rnd % 2 == 0 else args.servers[::-1])]
        for rnd, c, name in plan:
            target = baseline_target if name == "baseline" else mc.grpc_target
            full_load = name == "mc" and c == args.full_load and rnd == 0
            profiler = None
            if full_load:
                lag_before = lag_histogram(mc)
                sampler = LagSampler(mc)
                sampler.start()
                if args.profile:
                    profiler = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                         str(mc.pid), "-d", str(int(args.duration + args.warmup)),
                         "--gil", "-o", args.profile, "-f", PROFILE_FORMATS.get(
                             Path(args.profile).suffix, "flamegraph"), "--nonblocking"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.monotonic() + args.warmup
            cpu_before = psutil.Process(mc.pid if name == "mc" else baseline.pid).cpu_times()
            summary = loadgen(target, c, args.duration, args.warmup)
            ended = time.monotonic()
            cpu_after = psutil.Process(mc.pid if name == "mc" else baseline.pid).cpu_times()
            cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            summary["server_cpu_s"] = round(cpu, 2)
            # Robust to other load on the machine, unlike calls/s.
            summary["cpu_us_per_call"] = round(
                1e6 * cpu / max(1, summary["calls"] + summary["warmup_calls"]))
            summary.update(server=name, concurrency=c, round=rnd)
            if full_load:
                summary["heartbeats"] = heartbeat_lateness(gc, started, ended, interval_s)
                sampler.stop()
                summary["reactor_lag"] = lag_summary(lag_before, lag_histogram(mc),
                                                     sampler.samples)
                if profiler is not None:
                    profiler.wait(30)
            rows.append(summary)
            say(f"  {name:<8} c={c:<3} {summary['calls_per_s']:>7.0f} calls/s  "
                f"p50 {summary['p50_ms']:>7} ms  p99 {summary['p99_ms']:>7} ms  "
                f"max {summary['max_ms']:>7} ms  accepted {summary['accepted']} "
                f"rejected {summary['rejected']} errors {summary['errors']}  "
                f"cpu {summary['cpu_us_per_call']} us/call")
    finally:
        if mc is not None:
            mc.stop()
        baseline.terminate()
        try:
            baseline.wait(10)
        except subprocess.TimeoutExpired:
            baseline.kill()
            baseline.wait(5)
        baseline_log.close()


def memory(args, workdir, redis, gc, results):
    mc = start_mc(workdir, gc, redis, "mc-bench-mem")
    try:
        process = psutil.Process(mc.pid)
        # Warm the call path (gRPC threads and buffers, the token check and
        # validation) with calls that host nothing, so that the 0-meeting
        # figure is of a process that has served, not of one just started.
        mc.signal(signal.SIGUSR2)
        wait_for(lambda: mc.http("/readyz")[0] == 503, 10, what="drain")
        loadgen(mc.grpc_target, 16, 300, 0, count=args.meetings // 5)
        mc.signal(signal.SIGUSR2)
        wait_for(mc.ready, 10, what="undrain")
        points = [(0, process.memory_info().rss)]
        for _ in range(2):
            loadgen(mc.grpc_target, 16, 300, 0, count=args.meetings)
            hosted = int(mc.metric("mc_meetings_current") or 0)
            points.append((hosted, process.memory_info().rss))
        (_, rss0), (n1, rss1), (n2, rss2) = points
        results["memory"] = {
            "points": points,
            "per_meeting_bytes": round((rss1 - rss0) / n1) if n1 else None,
            "marginal_per_meeting_bytes": round((rss2 - rss1) / (n2 - n1)) if n2 > n1 else None,
        }
    finally:
        mc.stop()


def report(args, results):
    runs = results.get("runs", [])
    if runs:
        say()
        say("| round | concurrency | server | calls/s | p50 ms | p90 ms | p99 ms | max ms | "
            "accepted | rejected | errors | server CPU us/call |")
        say("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(runs, key=lambda r: (r["concurrency"], r["round"], r["server"])):
            say(f"| {r['round']} | {r['concurrency']} | {r['server']} | {r['calls_per_s']:.0f} | "
                f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} | "
                f"{r['accepted']} | {r['rejected']} | {r['errors']} | {r['cpu_us_per_call']} |")
        say()
        by = {(r["server"], r["concurrency"], r["round"]): r for r in runs}
        ratios = results["ratios"] = {}
        for c in args.concurrency:
            calls, p99 = [], []
            for rnd in range(args.rounds):
                m, b = by.get(("mc", c, rnd)), by.get(("baseline", c, rnd))
                if m and b and b["calls_per_s"] and b["p99_ms"]:
                    calls.append(round(m["calls_per_s"] / b["calls_per_s"], 2))
                    p99.append(round(m["p99_ms"] / b["p99_ms"], 2))
            if calls:
                ratios[c] = {"calls_per_s": statistics.median(calls),
                             "p99": statistics.median(p99),
                             "rounds": {"calls_per_s": calls, "p99": p99}}
                say(f"MC / baseline at c={c} (median of {len(calls)} rounds): calls/s "
                    f"x{ratios[c]['calls_per_s']} {calls}, p99 x{ratios[c]['p99']} {p99}")
    by = {(r["server"], r["concurrency"]): r for r in runs if r["round"] == 0}
    full = by.get(("mc", args.full_load))
    if full:
        say(f"punctuality at c={args.full_load} (fast heartbeat every {args.heartbeat_ms} ms): "
            f"{full['heartbeats']}; reactor lag: {full['reactor_lag']}")
    mem = results.get("memory")
    if mem:
        say("memory: " + ", ".join(f"{n} hosted {rss / 2**20:.1f} MiB"
                                   for n, rss in mem["points"])
            + f"; growth {mem['per_meeting_bytes']} B/meeting (0 -> {mem['points'][1][0]}), "
              f"marginal {mem['marginal_per_meeting_bytes']} B/meeting")
    failed = [f"{r['server']} c={r['concurrency']}: {r['errors']} errors {r['error_codes']}"
              for r in results.get("runs", []) if r["errors"]]
    if failed:
        say("WARNING, calls failed (the figures are not comparable): " + "; ".join(failed))
    say()
    say("targets (issue 6):")
    ratio = results.get("ratios", {}).get(16)
    if ratio:
        ok = ratio["calls_per_s"] >= TARGETS["calls_ratio"] and ratio["p99"] <= 1.0
        say(f"  [{'PASS' if ok else 'FAIL'}] c=16 calls/s x{ratio['calls_per_s']} >= x1.5 "
            f"and p99 x{ratio['p99']} <= x1.0")
    if full:
        hb, lag = full["heartbeats"], full["reactor_lag"]
        ok = hb["heartbeats"] > 0 and hb["over_100ms"] == 0
        say(f"  [{'PASS' if ok else 'FAIL'}] fast heartbeats > 100 ms late: {hb['over_100ms']} "
            f"of {hb['heartbeats']} (max {hb['max_late_ms']} ms)")
        ok = lag["samples"] > 0 and lag["p99_ms"] < TARGETS["lag_p99_ms"]
        say(f"  [{'PASS' if ok else 'FAIL'}] reactor lag p99 {lag['p99_ms']} ms < 50 ms "
            f"({lag['samples']} sampled ticks, max {lag['max_ms']} ms; "
            f"{lag['ticks_over_50ms']} of {lag['ticks']} ticks over 50 ms)")
    if mem:
        ok = mem["per_meeting_bytes"] is not None and \
            mem["per_meeting_bytes"] <= TARGETS["rss_per_meeting_bytes"]
        say(f"  [{'PASS' if ok else 'FAIL'}] RSS growth {mem['per_meeting_bytes']} B/meeting "
            f"<= 2048")


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        if dirty:
            commit += " with uncommitted changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "nproc": os.cpu_count(),
            "cpu": model, "python": platform.python_version(), "commit": commit}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 16, 64], help="comma-separated (default 1,16,64)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each server and concurrency, alternating which goes "
                        "first; ratios are medians over rounds (default 3)")
    parser.add_argument("-d", "--duration", type=float, default=10.0,
                        help="measured seconds per run (default 10, max 120)")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds per run")
    parser.add_argument("--only", choices=("throughput", "memory", "mc", "baseline"),
                        help="one part: throughput (both servers), memory, or one server")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probe")
    parser.add_argument("--full-load", type=int, default=16,
                        help="the concurrency of the punctuality probe (default 16)")
    parser.add_argument("--heartbeat-ms", type=int, default=1000,
                        help="fast heartbeat interval the fake GC asks for (default 1000)")
    parser.add_argument("--meetings", type=int, default=10_000,
                        help="meetings per step of the memory probe (default 10000)")
    parser.add_argument("--profile", help="py-spy the MC during the full-load run into this "
                        "file (.svg flame graph, .json speedscope, .txt collapsed stacks)")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 120:
        parser.error("--duration must be in (0, 120]")
    args.servers = {"mc": ["mc"], "baseline": ["baseline"]}.get(args.only, ["baseline", "mc"])
    do_throughput = args.only != "memory"
    do_memory = args.only in (None, "memory") and not args.no_memory

    results = {"machine": machine(), "settings": {
        "concurrency": args.concurrency, "duration": args.duration, "warmup": args.warmup,
        "full_load": args.full_load, "heartbeat_ms": args.heartbeat_ms,
        "meetings": args.meetings}}
    m = results["machine"]
    say(f"{m['date']}  nproc {m['nproc']}  {m['cpu']}  Python {m['python']}  "
        f"commit {m['commit']}")
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as workdir:
        redis = RedisProcess(dir=workdir)
        gc = FakeGc(SERVICE_TOKEN, max_workers=4)
        gc.set_intervals(args.heartbeat_ms, COMPREHENSIVE_MS)
        redis.start()
        gc.start()
        try:
            if do_throughput:
                say(f"throughput: {args.duration:g} s per run after {args.warmup:g} s warm-up")
                throughput(args, workdir, redis, gc, results)
            if do_memory:
                say(f"memory: a fresh MC, then {args.meetings} meetings twice")
                memory(args, workdir, redis, gc, results)
        finally:
            gc.stop()
            redis.cleanup()
    report(args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
