"""Replay by an operator (`payworker replay`): the ledger side, no Celery inside.

- A `dead` event resumes from its recovery point with the **same** idempotency keys: Stripe
  answers a write that already happened with its first result, so a replay never doubles
  an effect. Its retry budget starts again.
- A `failed` event is a business outcome. Only `force` runs it again, as a **new
  generation**: new idempotency keys (`pwg:{N}:{event_id}:{step}`), so Stripe acts again.
  Where the new generation starts is the workflow's decision (`Workflow.regenerate`).
  Before it, Stripe is asked (`ask_stripe`, outside any transaction) whether it already
  holds what the new generation would make again (`Workflow.check_stripe`: a succeeded
  charge of the event); if so, the replay is refused.
- `succeeded` events are never replayed; unfinished ones belong to the sweeper.

Every replay appends what the event had ended with (status, error, result, and what the
workflow adds), who replayed it and why, to `progress["replays"]`, so nothing an operator
saw before is lost.

The caller publishes the re-drive (`publish`: the event's own task, marked as a re-drive)
inside the transaction that reopened the row, as the sweeper does: a worker that receives
it before the commit waits on the row lock, and a lost publish is repeated by the sweeper
after `grace_seconds`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from core.errors import InvalidMessage
from db import replays
from db.ledger import now
from db.models import UNFINISHED_STATUSES, EventStatus
from db.replays import EventRow
from tasks.gateway import StripeGateway
from tasks.messages import parse_message
from tasks.phases import GENERATION_KEYS, KEY_FORM, Regeneration, key_pattern
from tasks.sweeper import Publisher, Redrive
from tasks.workflows import WORKFLOWS

# Where the outcomes before each replay are kept, oldest first. Keys of `progress` survive
# every later checkpoint (checkpoints merge into it) and the final outcome.
REPLAYS = "replays"


@dataclass(frozen=True)
class Replayed:
    """The event is open again and its re-drive published (or left to its queue's sweeper)."""

    event_id: str
    was: str
    generation: int
    recovery_point: str
    new_generation: bool
    published: bool
    queue: str | None
    # The idempotency keys the re-drive sends, `{step}` standing for the step.
    keys: str


@dataclass(frozen=True)
class Checked:
    """What Stripe said before a forced replay about the event at `generation` (None: it
    was not a failed event then, nothing to ask): `refusal`, or None when it may go on."""

    event_id: str
    generation: int | None
    refusal: str | None = None


@dataclass(frozen=True)
class Refused:
    """Nothing was changed, for `reason`."""

    event_id: str
    reason: str


ReplayOutcome = Replayed | Refused


def ask_stripe(engine: Engine, gateway: Callable[[], StripeGateway], event_id: str) -> Checked:
    """Before a forced replay, outside any transaction (a row lock is never held across a
    Stripe call): does Stripe already hold what a new generation of this failed event would
    make a second time? `gateway` is built only when Stripe must be asked.

    Nothing creates Stripe objects for a failed event (it is final) until a replay reopens
    it, so the answer holds until `replay` locks the row, if the event is still failed at
    the same generation then; `replay` checks that.
    """
    with engine.connect() as conn:
        event = replays.event(conn, event_id)
    if event is None or event.status != EventStatus.FAILED:
        return Checked(event_id, None)
    workflow = WORKFLOWS.get(event.type)
    if workflow is None or workflow.check_stripe is None:
        return Checked(event_id, event.generation)
    return Checked(event_id, event.generation, workflow.check_stripe(gateway(), engine, event))


def replay(
    conn: Connection,
    event_id: str,
    *,
    force: bool,
    queue: str,
    publish: Publisher,
    grace_seconds: float,
    operator: str,
    reason: str | None = None,
    checked: Checked | None = None,
) -> ReplayOutcome:
    """Reopen one dead (or, with `force`, failed) event and publish its re-drive; `operator`
    and `reason` go into its replay history.

    A new generation of a failed event whose workflow asks Stripe first (`check_stripe`)
    needs `checked`, the answer of `ask_stripe` for the event at its current generation.
    Events of another queue than `queue` are reopened and left to that queue's sweeper.
    """
    event = replays.locked_event(conn, event_id)
    if event is None:
        return Refused(event_id, "unknown event")
    refusal = _refusal(event, force=force) or _stripe_refusal(event, checked)
    if refusal is not None:
        return Refused(event_id, refusal)
    moment = now()
    new_generation = event.status == EventStatus.FAILED
    record = _outcome(event, moment, new_generation=new_generation)
    record.update(operator=operator, reason=reason)
    history = [*event.progress.get(REPLAYS, []), record]
    if new_generation:
        regeneration = WORKFLOWS[event.type].regenerate(conn, event)
        if isinstance(regeneration, str):
            return Refused(event_id, regeneration)
        point, generation = regeneration.point, event.generation + 1
        record.update(regeneration.record)
        # This generation's keys and metadata take the current form (tasks/phases.py).
        progress = {**_fresh(regeneration, moment), REPLAYS: history, KEY_FORM: GENERATION_KEYS}
    else:
        point, generation = event.recovery_point, event.generation
        progress = {**event.progress, REPLAYS: history}
    target = event.queue or queue
    published = target == queue
    if published:
        publish(Redrive(event_id, event.type, event.user_id))
    replays.reopen(
        conn,
        event_id,
        recovery_point=point,
        progress=progress,
        generation=generation,
        queue=target,
        # As the sweeper does: the next re-drive only if this message never arrives; an
        # event of another queue is due at once for that queue's sweeper.
        next_attempt_at=moment + timedelta(seconds=grace_seconds) if published else moment,
        forget_token=new_generation,
    )
    return Replayed(
        event_id=event_id,
        was=event.status,
        generation=generation,
        recovery_point=point,
        new_generation=new_generation,
        published=published,
        queue=target,
        keys=key_pattern(event_id, generation, progress),
    )


def _stripe_refusal(event: EventRow, checked: Checked | None) -> str | None:
    """Why a new generation must not start, by what Stripe said before; None when it may."""
    if event.status != EventStatus.FAILED or WORKFLOWS[event.type].check_stripe is None:
        return None
    if checked is None or checked.generation != event.generation:
        return "Stripe was not asked about this event's generation before replaying it; run again"
    return checked.refusal


def _fresh(regeneration: Regeneration, moment: datetime) -> dict[str, Any]:
    """The new generation's progress; its first write's key is first used now."""
    progress = regeneration.progress
    if progress.write_started_at is not None or regeneration.point != "started":
        progress = progress.model_copy(update={"write_started_at": moment})
    return progress.model_dump(mode="json", exclude_none=True)


def _refusal(event: EventRow, *, force: bool) -> str | None:
    """Why this event must not be replayed; None when it may."""
    status = event.status
    if status == EventStatus.SUCCEEDED:
        return "succeeded: a final outcome, never replayed (a new intent needs a new event_id)"
    if status in UNFINISHED_STATUSES:
        return (
            f"{status}: not finished; the sweeper re-drives it when due"
            " (see `payworker status`, or run `payworker sweep`)"
        )
    workflow = WORKFLOWS.get(event.type)
    if workflow is None:
        return f"unknown event type {event.type!r}"
    if status == EventStatus.DEAD:
        if event.recovery_point in workflow.token_needed_at and event.sealed_token is None:
            return (
                f"the card token needed to resume at {event.recovery_point} is gone;"
                " the app must send a new card_token_received with a fresh token"
            )
        return None
    # failed
    if not force:
        return (
            f"failed ({event.error_code}): a final business outcome; --force runs it again"
            " as a new generation with NEW idempotency keys (Stripe acts again)"
        )
    if event.error_code == "invalid_message":
        return (
            "invalid_message: the message never validated, a replay cannot change that;"
            " publish a corrected message under a new event_id"
        )
    try:
        parse_message(event.type, dict(event.payload))
    except InvalidMessage as exc:
        if not workflow.token_needed_at:
            return f"the stored message does not validate: {exc.message}"
    return None


def _outcome(event: EventRow, moment: datetime, *, new_generation: bool) -> dict[str, Any]:
    """What the event had ended with, for `progress["replays"]`."""
    return {
        "replayed_at": moment.isoformat(),
        "new_generation": new_generation,
        "generation": event.generation,
        "status": event.status,
        "error_code": event.error_code,
        "error_message": event.error_message,
        "last_error": event.last_error,
        "result": event.result,
        "recovery_point": event.recovery_point,
        "attempts": event.attempts,
        "completed_at": event.completed_at.isoformat() if event.completed_at else None,
    }
