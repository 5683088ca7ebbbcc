"""Small waits for tests on the real reactor."""

import time

import grpc
from twisted.internet import reactor
from twisted.internet.task import deferLater

from mc.testing.fakegc import assign_meeting

STEP = 0.01


async def wait_until(predicate, timeout=10.0, what=None):
    """Yield to the reactor in short steps until ``predicate()`` is true;
    AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await deferLater(reactor, STEP, lambda: None)


def accepted_with(mc, gc_token, mh):
    """An assignment to ``mc`` (an McProcess) carrying ``gc_token`` is
    accepted; False when refused UNAUTHENTICATED (any other error raises)."""
    try:
        return assign_meeting(mc.grpc_target, f"token-check-{time.time_ns()}", mh, gc_token,
                              timeout=2).accepted
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        return False
