"""One retry delay for every adapter that waits on something down (ARI
reconnects, the CDR outbox, the agent log, recording rows)."""

from __future__ import annotations

import random


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Capped exponential backoff with jitter: retry `attempt` (from 0) waits
    between half and all of min(max_s, initial_s * 2**attempt), so many
    waiters do not come back at the same instant."""
    step = min(max_s, initial_s * 2.0 ** min(attempt, 30))
    return step * random.uniform(0.5, 1.0)
