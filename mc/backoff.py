"""The one retry policy: registration with the GC and NotifyMeetingEnded both
back off 1 s, 2 s, 4 s, ... up to 30 s, each delay shrunk by a random share of
up to ``SPREAD`` so a fleet restarting together spreads out instead of
hitting the GC in step, and the cap is never exceeded. Redis connections use
the same shape with shorter steps (``redis_reconnect_policy``): a Redis back
from an outage is used again within ``REDIS_MAX_DELAY``."""

import math
import random

from twisted.application.internet import backoffPolicy

INITIAL_DELAY = 1.0
MAX_DELAY = 30.0
FACTOR = 2.0
SPREAD = 0.25
#: The first attempt whose nominal delay is the cap.
CAPPED_ATTEMPT = math.ceil(math.log(MAX_DELAY / INITIAL_DELAY, FACTOR))


def retry_policy(initial=INITIAL_DELAY, maximum=MAX_DELAY, spread=SPREAD, rng=random.random):
    """Return ``delay(attempt)`` for attempt 0, 1, 2, ..."""
    base = backoffPolicy(initial, maximum, FACTOR, jitter=lambda: 0.0)

    def delay(attempt):
        return base(attempt) * (1.0 - spread * rng())

    return delay


#: Redis reconnects: 0.1 s, 0.2 s, ... up to 2 s, for as long as the MC runs.
REDIS_INITIAL_DELAY = 0.1
REDIS_MAX_DELAY = 2.0


def redis_reconnect_policy(rng=random.random):
    """``delay(attempt)`` for the reconnects of one Redis connection."""
    return retry_policy(REDIS_INITIAL_DELAY, REDIS_MAX_DELAY, rng=rng)
