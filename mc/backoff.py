"""The one retry policy: registration with the GC and NotifyMeetingEnded both
back off 1 s, 2 s, 4 s, ... up to 30 s, each delay shrunk by a random share of
up to ``SPREAD`` so a fleet restarting together spreads out instead of
hitting the GC in step, and the cap is never exceeded."""

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
