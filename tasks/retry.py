"""Backoff for retries: exponential with jitter, capped below the broker's redelivery."""

from __future__ import annotations

import random


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds before attempt `failures + 1`: base·2^(n-1), capped, with 50 to 100 % jitter so
    a burst of failures does not come back as a burst."""
    exponent = min(max(failures, 1) - 1, 30)
    return float(min(cap, base * 2**exponent) * random.uniform(0.5, 1.0))
