"""A misbehaving Stripe for the storm scenarios: four faults sharing a fault rate, and how
often each fired."""

from __future__ import annotations

from stripe_fake import FakeStripe

# Seconds the fake holds a "timed out" request: beyond the storm workers'
# PAYWORKER_STRIPE_TIMEOUT (1 s).
SLOW = 1.5


def unleash(fake: FakeStripe, rate: float, slow: float = SLOW) -> None:
    """Four faults, each hitting rate/4 of all Stripe requests:

    - a 500 before Stripe runs the request (nothing happened);
    - a 429 before Stripe runs it;
    - a response slower than the worker's timeout (the fake holds the request `slow`
      seconds and then runs it: the outcome is unknown to the worker);
    - a 500 after Stripe ran the request (it happened, the worker does not know).

    A rule that loses its roll lets the next one try, so each conditional probability is
    scaled up accordingly."""
    share = rate / 4
    before = [
        {"status": 500, "name": "500-before"},
        {"status": 429, "name": "429"},
        {"delay": slow, "name": "timeout"},
    ]
    left = 1.0
    for spec in before:
        fake.inject(when="before", probability=share / left, **spec)
        left -= share
    # "after" rules are rolled only for requests that got past the "before" ones
    fake.inject(when="after", status=500, probability=share / left, name="500-after")


FAULT_NAMES = ("500-before", "429", "timeout", "500-after")


def fired(fake: FakeStripe) -> dict[str, int]:
    return {f["name"]: f["fired"] for f in fake.faults()}
