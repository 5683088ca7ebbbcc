"""Small waits for tests on the real reactor."""

import time

from twisted.internet import reactor
from twisted.internet.task import deferLater

STEP = 0.01


async def wait_until(predicate, timeout=10.0, what=None):
    """Yield to the reactor in short steps until ``predicate()`` is true;
    AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await deferLater(reactor, STEP, lambda: None)
