"""The baseline: AssignMeetingWithMh the plain way, as a user without Twisted
would write it: a grpcio thread-pool server and redis-py, each worker doing the
whole call itself.

It does the MC's work for a call: the same static bearer-token check and
request validation (mc.gc.grpcserver's authorizations with the TokenCheck, and
thd_valid_assignments, which the MC's workers run too), the same capacity check
(mc.meetings.MeetingRegistry, under a lock), the same Lua fencing the plain
way, as issue 6 describes it: claim (the CLAIM script), then the fenced writes
of the MH assignment and of the state hash (WRITE_ASSIGNMENT, WRITE_STATE),
each by EVALSHA with the store's own keys and arguments, loaded again if Redis
forgot it; and the same answers. A meeting already hosted is written again,
fenced by its generation, as the MC does. (The MC's one-round-trip
CLAIM_AND_WRITE is one of its optimisations, so the baseline does not use it.)

    python bench/baseline.py --listen 127.0.0.1:50060 --redis-url redis://127.0.0.1:6379/0 \
        --token T
"""

import argparse
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mc.assignment import assignment_record  # noqa: E402
from mc.config import Secret  # noqa: E402
from mc.gc.auth import TokenCheck  # noqa: E402
from mc.gc.grpcserver import authorizations, thd_valid_assignments  # noqa: E402
from mc.meetings import AtCapacity, MeetingRegistry  # noqa: E402
from mc.proto import gc_mc_pb2 as pb  # noqa: E402
from mc.proto import gc_mc_pb2_grpc  # noqa: E402
from mc.redis import scripts  # noqa: E402
from mc.redis.store import RedisFencedStore, write_state_call  # noqa: E402

MAX_MESSAGE_BYTES = 64 * 1024  # as the MC's gRPC server
ACCEPTED = pb.AssignMeetingWithMhResponse(accepted=True)
AT_CAPACITY = pb.AssignMeetingWithMhResponse(accepted=False,
                                             rejection_reason=pb.REJECTION_REASON_AT_CAPACITY)
UNHEALTHY = pb.AssignMeetingWithMhResponse(accepted=False,
                                           rejection_reason=pb.REJECTION_REASON_UNHEALTHY)


class _Clock:
    """What MeetingRegistry asks of a clock."""

    seconds = staticmethod(time.time)


class _ScriptCall:
    """Stands in for a RedisFencedStore to take its operations' script, keys
    and arguments rather than run them, so that the baseline sends Redis the
    very same fenced script calls as the MC, whatever the store's layout."""

    def _eval(self, script, meeting_id, generation, keys, args, **_options):
        # No replicas in the bench, so the store's durable WAIT never runs.
        return script, keys, args


_CALL = _ScriptCall()


class Baseline(gc_mc_pb2_grpc.MeetingControllerServiceServicer):
    def __init__(self, redis_url, tokens, mc_id, grpc_advertise, max_meetings,
                 max_participants, participant_estimate, pool_size):
        self._redis = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            redis_url, max_connections=pool_size, timeout=5, socket_timeout=5,
            decode_responses=True))
        self._tokens = TokenCheck([Secret(t) for t in tokens])
        self._mc_id = mc_id
        self._grpc_advertise = grpc_advertise
        self._lock = threading.Lock()
        self._registry = MeetingRegistry(max_meetings, max_participants, participant_estimate,
                                         _Clock())

    def AssignMeetingWithMh(self, request, context):
        values = authorizations(context.invocation_metadata())
        if len(values) != 1 or not self._tokens.check(values[0]):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "Invalid token")
        mh = thd_valid_assignments(request, context, MAX_MESSAGE_BYTES)
        meeting_id = request.meeting_id
        with self._lock:
            hosted = self._registry.get(meeting_id)
            if hosted is None:
                try:
                    reservation = self._registry.reserve(meeting_id)
                except AtCapacity:
                    return AT_CAPACITY
                except ValueError:  # an accept of this meeting is in flight
                    return UNHEALTHY
        now = int(time.time())
        record = assignment_record(mh, now)
        state = {"grpc_endpoint": self._grpc_advertise, "assigned_at": now}
        if hosted is not None:
            return self._reassert(hosted, record, state)
        try:
            reply = self._eval(*RedisFencedStore.claim(_CALL, meeting_id))
            written = reply[0] == scripts.OK and self._write(
                meeting_id, int(reply[1]), record, state)
        except redis.RedisError:
            written = False
        with self._lock:
            if not written:
                self._registry.release(reservation)
                return UNHEALTHY
            self._registry.commit(reservation, int(reply[1]), mh)
        return ACCEPTED

    def _write(self, meeting_id, generation, record, state):
        """The fenced writes of a claimed meeting's keys; True when both took."""
        replies = [
            self._eval(*RedisFencedStore.write_assignment(_CALL, meeting_id, generation,
                                                          self._mc_id, record)),
            self._eval(scripts.WRITE_STATE,
                       *write_state_call(meeting_id, generation, self._mc_id, state)),
        ]
        return replies[0][0] == scripts.OK and replies[1][1][0] == scripts.OK

    def _reassert(self, m, record, state):
        try:
            if self._write(m.meeting_id, m.generation, record, state):
                return ACCEPTED
        except redis.RedisError:
            return UNHEALTHY
        with self._lock:
            if self._registry.get(m.meeting_id) is m:
                self._registry.remove(m.meeting_id)
        return UNHEALTHY

    def _eval(self, script, keys, args):
        try:
            return self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._redis.script_load(script.source)
            return self._redis.evalsha(script.sha, len(keys), *keys, *args)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:50060")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--token", required=True, help="the bearer token accepted")
    parser.add_argument("--mc-id", default="baseline-1")
    parser.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    parser.add_argument("--pool-size", type=int, default=16, help="Redis connections")
    parser.add_argument("--max-meetings", type=int, default=10_000_000)
    parser.add_argument("--max-participants", type=int, default=2**31 - 1)
    parser.add_argument("--participant-estimate", type=int, default=10)
    args = parser.parse_args(argv)

    servicer = Baseline(args.redis_url, [args.token], args.mc_id, f"http://{args.listen}",
                        args.max_meetings, args.max_participants, args.participant_estimate,
                        args.pool_size)
    server = grpc.server(
        ThreadPoolExecutor(args.workers, thread_name_prefix="baseline"),
        options=[("grpc.so_reuseport", 0), ("grpc.max_metadata_size", 64 * 1024),
                 ("grpc.absolute_max_metadata_size", 64 * 1024)],
        maximum_concurrent_rpcs=args.workers * 8)
    gc_mc_pb2_grpc.add_MeetingControllerServiceServicer_to_server(servicer, server)
    if not server.add_insecure_port(args.listen):
        parser.error(f"cannot listen on {args.listen}")
    server.start()
    print(f"baseline listening on {args.listen}", file=sys.stderr, flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    server.stop(1).wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
