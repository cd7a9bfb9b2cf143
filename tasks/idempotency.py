"""Our deterministic Stripe idempotency keys: one per (event, generation, step)."""

from __future__ import annotations

import hashlib

# Stripe rejects idempotency keys longer than this.
MAX_IDEMPOTENCY_KEY = 255
# Steps never contain ':', so the step of any key is what follows its last ':'.
STEPS = frozenset({"customer", "attach", "default", "charge"})
# Generation >= 1 keys start with this, which no generation-0 key can (see idempotency_key).
GENERATION_PREFIX = "pwg:"
# Their hashed form (for event ids too long for a key), again a prefix of its own.
HASHED_GENERATION_PREFIX = "pwh:"


def idempotency_key(event_id: str, step: str, generation: int = 0, *, legacy: bool = False) -> str:
    """Our deterministic key for one step of one generation of an event: a retry or a
    redelivery repeats it, and no other (event, generation, step) can derive it.

    - Generation 0: `pw:{event_id}:{step}`, as it has always been (an event in flight
      across an upgrade must send the same key again, or a resumed charge could double).
      Every generation-0 key therefore starts with the three characters `pw:`.
    - Generation n >= 1: `pwg:{n}:{event_id}:{step}`. Its fourth character is `g`, not the
      `:` of `pw:`, so it can never equal a generation-0 key, whatever the event id
      contains (a separator "ids cannot contain" would lean on validation; a prefix leans on
      nothing). Among themselves they are unambiguous: `n` is digits ended by the first
      `:`, the step is what follows the last `:` (steps have none), the event id is the rest.
    - A key longer than Stripe's 255 characters is hashed: generation 0 keeps its
      `pw:sha256:{sha256(event_id)}:g0:{step}`; generation n uses
      `pwh:{n}:{sha256(event_id)}:{step}`, again a prefix of its own. (Messages limit
      event ids to 200 characters, so no valid event needs hashing: `pw:`, 200 characters
      and `:{step}` fit in 255.)
    - `legacy`: the key of a generation >= 1 that an operator started before the `pwg:`
      form existed, `pw:{event_id}:g{n}:{step}`, which its resumed writes must keep
      sending. That form is ambiguous: generation 0 of event "order-7:g1" and generation 1
      of "order-7" both give `pw:order-7:g1:charge`.
    """
    if generation == 0:
        key = f"pw:{event_id}:{step}"
    elif legacy:
        key = f"pw:{event_id}:g{generation}:{step}"
    else:
        key = f"{GENERATION_PREFIX}{generation}:{event_id}:{step}"
    if len(key) <= MAX_IDEMPOTENCY_KEY:
        return key
    digest = hashlib.sha256(event_id.encode()).hexdigest()
    if generation == 0 or legacy:
        return f"pw:sha256:{digest}:g{generation}:{step}"
    return f"{HASHED_GENERATION_PREFIX}{generation}:{digest}:{step}"
