"""Closed-loop AssignMeetingWithMh load: ``concurrency`` callers, each sending
its next call as soon as the previous one is answered, every call for a fresh
meeting id, with the GC's bearer token.

    python bench/loadgen.py --target 127.0.0.1:50052 --token T -c 16 -d 10

Stops after ``--duration`` seconds (calls in flight are still counted) or
after ``--count`` calls, whichever comes first. ``--warmup`` seconds of calls
are sent first and not counted. Prints calls, accepted, rejected, errors,
calls/s and latency percentiles; ``--json`` prints them as one JSON object.
"""

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mc.proto import gc_mc_pb2 as pb  # noqa: E402
from mc.proto import gc_mc_pb2_grpc  # noqa: E402

MH = (
    pb.MhAssignment(mh_id="mh-bench-a", webtransport_endpoint="https://mh-a.bench:4433"),
    pb.MhAssignment(mh_id="mh-bench-b", webtransport_endpoint="https://mh-b.bench:4433"),
)
CALL_TIMEOUT = 10.0


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


class Stats:
    __slots__ = ("latencies", "accepted", "rejected", "errors", "error_codes", "reasons")

    def __init__(self):
        self.latencies = []
        self.accepted = self.rejected = self.errors = 0
        self.error_codes = {}
        self.reasons = {}

    def summary(self, elapsed):
        lat = sorted(self.latencies)
        calls = len(lat)

        def ms(v):
            return None if v is None else round(v * 1000, 3)

        return {
            "calls": calls, "accepted": self.accepted, "rejected": self.rejected,
            "errors": self.errors, "error_codes": self.error_codes, "reasons": self.reasons,
            "seconds": round(elapsed, 3),
            "calls_per_s": round(calls / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": ms(percentile(lat, 50)), "p90_ms": ms(percentile(lat, 90)),
            "p99_ms": ms(percentile(lat, 99)), "max_ms": ms(lat[-1] if lat else None),
        }


async def _caller(stub, metadata, prefix, worker, stop_at, budget, stats):
    """One closed-loop caller; ``budget`` is a one-element list of calls left
    (None: unbounded), shared by all callers of a run."""
    i = 0
    while time.perf_counter() < stop_at:
        if budget[0] is not None:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        i += 1
        request = pb.AssignMeetingWithMhRequest(
            meeting_id=f"{prefix}-{worker}-{i}", mh_assignments=MH,
            requesting_gc_id="gc-bench")
        started = time.perf_counter()
        try:
            response = await stub.AssignMeetingWithMh(request, timeout=CALL_TIMEOUT,
                                                      metadata=metadata)
        except grpc.aio.AioRpcError as e:
            stats.latencies.append(time.perf_counter() - started)
            stats.errors += 1
            name = e.code().name
            stats.error_codes[name] = stats.error_codes.get(name, 0) + 1
            continue
        stats.latencies.append(time.perf_counter() - started)
        if response.accepted:
            stats.accepted += 1
        else:
            stats.rejected += 1
            name = pb.RejectionReason.Name(response.rejection_reason)
            stats.reasons[name] = stats.reasons.get(name, 0) + 1


async def run_load(target, token, concurrency, duration, count=None, warmup=0.0, prefix=None):
    """Run the load and return the summary dict (warm-up calls not counted)."""
    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}"
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = gc_mc_pb2_grpc.MeetingControllerServiceStub(channel)
        warm = Stats()
        if warmup > 0:
            stop_at = time.perf_counter() + warmup
            await asyncio.gather(*(
                _caller(stub, metadata, f"{prefix}-w", w, stop_at, [None], warm)
                for w in range(concurrency)))
        stats = Stats()
        budget = [count]
        started = time.perf_counter()
        stop_at = started + duration
        await asyncio.gather(*(
            _caller(stub, metadata, prefix, w, stop_at, budget, stats)
            for w in range(concurrency)))
        summary = stats.summary(time.perf_counter() - started)
        summary["warmup_calls"] = len(warm.latencies)
        return summary


def format_summary(s):
    return (f"calls {s['calls']}  accepted {s['accepted']}  rejected {s['rejected']}  "
            f"{' ' + str(s['reasons']) if s['reasons'] else ''}  "
            f"errors {s['errors']}{' ' + str(s['error_codes']) if s['error_codes'] else ''}  "
            f"{s['calls_per_s']:.0f} calls/s  p50 {s['p50_ms']} ms  p90 {s['p90_ms']} ms  "
            f"p99 {s['p99_ms']} ms  max {s['max_ms']} ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port of the MC (or baseline)")
    parser.add_argument("--token", required=True, help="the bearer token the server accepts")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds (max 600)")
    parser.add_argument("-n", "--count", type=int, help="stop after this many calls")
    parser.add_argument("--warmup", type=float, default=0.0, help="uncounted seconds first")
    parser.add_argument("--prefix", help="meeting id prefix (default: random)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 600 or args.concurrency < 1:
        parser.error("duration must be in (0, 600] and concurrency at least 1")
    summary = asyncio.run(run_load(args.target, args.token, args.concurrency, args.duration,
                                   args.count, args.warmup, args.prefix))
    print(json.dumps(summary) if args.json else format_summary(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
