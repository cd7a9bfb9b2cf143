"""Replay by an operator (`payworker replay`): the ledger side, no Celery inside.

- A `dead` event resumes from its recovery point with the **same** idempotency keys: Stripe
  answers a write that already happened with its first result, so a replay never doubles
  an effect. Its retry budget starts again.
- A `failed` event is a business outcome. Only `force` runs it again, as a **new
  generation**: new idempotency keys (`pw:{event_id}:g{N}:{step}`), so Stripe acts again.
- `succeeded` events are never replayed; unfinished ones belong to the sweeper.

Every replay appends what the event had ended with (status, error, result, the charge it
made) to `progress["replays"]`, so nothing an operator saw before is lost.

The caller publishes the re-drive (`publish`) inside the transaction that reopened the
row, as the sweeper does: a worker that receives it before the commit waits on the row
lock, and a lost publish is repeated by the sweeper after `grace_seconds`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Card, Charge, ChargeStatus, EventStatus, PaymentEvent
from tasks.errors import InvalidMessage
from tasks.ledger import STARTED, now
from tasks.messages import MESSAGE_TYPES, parse_message
from tasks.workflows.cards import TOKEN_NEEDED_AT
from tasks.workflows.charges import Point as ChargePoint

Publisher = Callable[[str], None]

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


@dataclass(frozen=True)
class Refused:
    """Nothing was changed, for `reason`."""

    event_id: str
    reason: str


ReplayOutcome = Replayed | Refused


def replay(
    session: Session,
    event_id: str,
    *,
    force: bool,
    queue: str,
    publish: Publisher,
    grace_seconds: float,
) -> ReplayOutcome:
    """Reopen one dead (or, with `force`, failed) event and publish its re-drive.

    Events of another queue than `queue` are reopened and left to that queue's sweeper.
    """
    stmt = select(PaymentEvent).where(PaymentEvent.event_id == event_id).with_for_update()
    event = session.scalars(stmt).one_or_none()
    if event is None:
        return Refused(event_id, "unknown event")
    charge = None
    if event.type == "charge_requested":
        charge = session.get(Charge, event_id, with_for_update=True)
    reason = _refusal(session, event, charge, force=force)
    if reason is not None:
        return Refused(event_id, reason)

    was = event.status
    new_generation = was == EventStatus.FAILED
    moment = now()
    record = _outcome(event, moment, new_generation=new_generation)
    if new_generation:
        _start_new_generation(event, charge, record, moment)
    else:
        event.progress = {**(event.progress or {}), REPLAYS: [*_replays(event), record]}
    _reopen(event)
    if event.queue is None:
        event.queue = queue
    published = event.queue == queue
    if published:
        publish(event_id)
        # As the sweeper does: the next re-drive only if this message never arrives.
        event.next_attempt_at = moment + timedelta(seconds=grace_seconds)
    else:
        event.next_attempt_at = moment  # due now for the sweeper of its own queue
    return Replayed(
        event_id=event_id,
        was=was,
        generation=event.generation,
        recovery_point=event.recovery_point,
        new_generation=new_generation,
        published=published,
        queue=event.queue,
    )


def _refusal(
    session: Session, event: PaymentEvent, charge: Charge | None, *, force: bool
) -> str | None:
    """Why this event must not be replayed; None when it may."""
    status = event.status
    if status == EventStatus.SUCCEEDED:
        return "succeeded: a final outcome, never replayed (a new intent needs a new event_id)"
    if status in (EventStatus.RECEIVED, EventStatus.PROCESSING):
        return (
            f"{status}: not finished; the sweeper re-drives it when due"
            " (see `payworker status`, or run `payworker sweep`)"
        )
    if status == EventStatus.DEAD:
        if (
            event.type == "card_token_received"
            and event.recovery_point in TOKEN_NEEDED_AT
            and event.sealed_token is None
        ):
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
    return _force_refusal(session, event, charge)


def _force_refusal(session: Session, event: PaymentEvent, charge: Charge | None) -> str | None:
    if event.error_code == "invalid_message":
        return (
            "invalid_message: the message never validated, a replay cannot change that;"
            " publish a corrected message under a new event_id"
        )
    if event.type == "card_token_received":
        return (
            "a failed card_token_received has no card token any more (it is erased once"
            " an event is final); the app must send a new message with a fresh token"
        )
    if event.type not in MESSAGE_TYPES:
        return f"unknown event type {event.type!r}"
    try:
        parse_message(event.type, dict(event.payload))
    except InvalidMessage as exc:
        return f"the stored message does not validate: {exc.message}"
    if charge is None:
        return None
    if charge.status != ChargeStatus.FAILED:
        return f"its charges row is {charge.status}, not failed: look at it before replaying"
    if "customer_id" not in (event.progress or {}):
        return "no customer recorded for its charge; publish a new charge_requested"
    card = session.get(Card, charge.stripe_card_id)
    if card is None or card.user_id != event.user_id or card.removed_at is not None:
        return (
            f"the charged card {charge.stripe_card_id} is no longer an active card of the"
            " user; publish a new charge_requested under a new event_id"
        )
    return None


def _outcome(event: PaymentEvent, moment: datetime, *, new_generation: bool) -> dict[str, Any]:
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


def _replays(event: PaymentEvent) -> list[dict[str, Any]]:
    return list((event.progress or {}).get(REPLAYS, []))


def _start_new_generation(
    event: PaymentEvent, charge: Charge | None, record: dict[str, Any], moment: datetime
) -> None:
    """Start the next generation of a failed event.

    A charge that reached Stripe keeps its `charges` row (its primary key is the event):
    the row goes back to `pending` (its old outcome moves to the replay record), and the
    new generation repeats the charge of the same card and customer from `charge_creating`,
    under the new key. Everything else starts over from `started` with empty progress."""
    progress: dict[str, Any] = {}
    point = STARTED
    if charge is not None:
        record["charge"] = {
            "stripe_charge_id": charge.stripe_charge_id,
            "status": charge.status,
            "stripe_card_id": charge.stripe_card_id,
            "failure_code": charge.failure_code,
            "decline_code": charge.decline_code,
            "failure_message": charge.failure_message,
        }
        charge.status = ChargeStatus.PENDING
        charge.stripe_charge_id = None
        charge.failure_code = None
        charge.decline_code = None
        charge.failure_message = None
        point = ChargePoint.CHARGING
        progress = {
            "customer_id": (event.progress or {})["customer_id"],
            "card_id": charge.stripe_card_id,
            # The new key is first used now: its 24-hour window starts here.
            "write_started_at": moment.isoformat(),
        }
    event.progress = {**progress, REPLAYS: [*_replays(event), record]}
    event.recovery_point = point
    event.generation += 1
    event.sealed_token = None


def _reopen(event: PaymentEvent) -> None:
    """Back to `processing` with a fresh retry budget; the recovery point stays."""
    event.status = EventStatus.PROCESSING
    event.error_code = None
    event.error_message = None
    event.result = None
    event.completed_at = None
    event.transient_failures = 0
    event.locked_by = None
    event.locked_until = None
