"""refund_requested: judge what remains of the charge under its lock, record a pending
refund, refund once, record the outcome and re-derive the charge's `amount_refunded`.

started ──(charge locked, pending refunds row)──> refund_creating ──(Stripe: create)──>
    succeeded | failed | refund_pending ──(Stripe: re-read every
    PAYWORKER_ACTION_POLL_SECONDS)──> succeeded | failed

What remains of a charge is its amount, less its succeeded refunds (`amount_refunded`), less
its pending ones: a refund in flight counts from the moment its pending row commits, so two
concurrent refunds of one charge are judged one after the other and never exceed it.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from core.errors import PermanentError
from db import refunds
from db.ledger import STARTED, now
from db.models import ChargeStatus, RefundStatus
from db.refunds import RefundableCharge
from db.replays import EventRow
from tasks.gateway import RefundOutcome
from tasks.messages import RefundRequested
from tasks.phases import Advance, Fail, Phase, Progress, Run, Step, Succeed, Watch, Workflow


class Point(enum.StrEnum):
    STARTED = STARTED
    # A pending refunds row exists and the refund may have reached Stripe: repeat the
    # create with the same key; Stripe's replay tells what happened.
    REFUNDING = "refund_creating"
    # Stripe holds the refund as pending: re-read it until it ends.
    WATCHING = "refund_pending"


class RefundProgress(Progress):
    charge_id: str | None = None
    amount: int | None = None
    refund_id: str | None = None


RefundRun = Run[RefundRequested, RefundProgress]

# Stripe's words for "less remains to refund than asked": nothing at all is left
# (charge_already_refunded, which the gateway already calls refund_exceeds_charge), or less
# than the amount (amount_too_large, which for a charge means too many minor units).
_STRIPE_HOLDS_LESS = {"refund_exceeds_charge", "amount_too_large"}
_FINAL_FAILURES = {RefundStatus.FAILED.value, RefundStatus.CANCELED.value}


def _refundable(msg: RefundRequested, charge: RefundableCharge | None) -> str:
    """The Stripe charge to refund.

    Raises:
        PermanentError: `charge_not_found` (no charge of that event, or another user's),
            `charge_not_refundable` (not succeeded, or no Stripe charge to refund).
    """
    if charge is None or charge.user_id != msg.user_id:
        raise PermanentError(
            f"no charge of this user was made by event {msg.charge_event_id!r}",
            code="charge_not_found",
        )
    if charge.status != ChargeStatus.SUCCEEDED:
        raise PermanentError(
            f"the charge of event {msg.charge_event_id!r} is {charge.status}, not succeeded:"
            " only a succeeded charge can be refunded",
            code="charge_not_refundable",
        )
    if charge.stripe_charge_id is None:
        raise PermanentError(
            f"the charge of event {msg.charge_event_id!r} has no Stripe charge to refund",
            code="charge_not_refundable",
        )
    return charge.stripe_charge_id


def _record_pending(run: RefundRun, conn: Connection, _: None) -> Step:
    """Under the charge's lock: what remains, the amount, and the pending refunds row.

    Raises:
        PermanentError: `charge_not_found`, `charge_not_refundable` (also: nothing remains),
            `refund_exceeds_charge` (more asked than remains).
    """
    msg = run.message
    charge = refunds.lock_charge(conn, msg.charge_event_id)
    charge_id = _refundable(msg, charge)
    assert charge is not None
    remaining = (
        charge.amount - charge.amount_refunded - refunds.pending_total(conn, charge.event_id)
    )
    if remaining <= 0:
        raise PermanentError(
            f"nothing of the charge of event {msg.charge_event_id!r} remains to refund"
            f" ({charge.amount_refunded} of {charge.amount} refunded, the rest pending)",
            code="charge_not_refundable",
        )
    amount = remaining if msg.amount is None else msg.amount
    if amount > remaining:
        raise PermanentError(
            f"refund of {amount} asked, but only {remaining} of the charge's {charge.amount}"
            f" {charge.currency.upper()} remains to refund",
            code="refund_exceeds_charge",
        )
    refunds.add_pending(
        conn,
        event_id=msg.event_id,
        user_id=msg.user_id,
        charge_event_id=charge.event_id,
        amount=amount,
        currency=charge.currency,
        reason=msg.reason,
    )
    progress = RefundProgress(charge_id=charge_id, amount=amount)
    return Advance(Point.REFUNDING, progress, starts_write=True)


def _refund(run: RefundRun) -> RefundOutcome:
    """Create the refund (or, after Stripe forgot the key, find the one we made).

    Raises:
        PermanentError: `refund_exceeds_charge` when Stripe holds less to refund than we do
            (refunded outside payworker, e.g. on the dashboard).
    """
    msg, progress = run.message, run.progress
    charge_id, amount = progress.charge_id, progress.amount
    assert charge_id is not None and amount is not None
    try:
        return run.resume_write(
            lambda: run.gateway.find_refund(
                charge_id=charge_id, event_id=msg.event_id, generation=run.lookup_generation
            ),
            lambda: run.gateway.create_refund(
                run.key("refund"),
                charge_id=charge_id,
                amount=amount,
                reason=msg.reason,
                metadata=run.metadata(msg.metadata),
            ),
        )
    except PermanentError as refused:
        if refused.code not in _STRIPE_HOLDS_LESS:
            raise
        raise PermanentError(
            f"Stripe refused the refund: {refused.message}",
            code="refund_exceeds_charge",
            **refused.context,
        ) from None


def _reread(run: RefundRun) -> RefundOutcome:
    assert run.progress.refund_id is not None
    return run.gateway.retrieve_refund(run.progress.refund_id)


def _result(run: RefundRun, row: refunds.RefundRow, amount_refunded: int) -> dict[str, Any]:
    return {
        "refund_id": row.stripe_refund_id,
        "charge_event_id": row.charge_event_id,
        "charge_id": run.progress.charge_id,
        "amount": row.amount,
        "currency": row.currency,
        "status": row.status,
        "amount_refunded": amount_refunded,
        "reason": row.reason,
    }


def _record_outcome(run: RefundRun, conn: Connection, outcome: RefundOutcome) -> Step:
    """Stripe's answer into the refunds row and the charge's `amount_refunded`; a pending
    refund is watched, a failed or canceled one fails the event."""
    event_id = run.message.event_id
    if outcome.status == RefundStatus.SUCCEEDED or outcome.status in _FINAL_FAILURES:
        status = RefundStatus(outcome.status)
    else:  # pending, requires_action: Stripe has not finished
        status = RefundStatus.PENDING
    reason = outcome.failure_reason if status != RefundStatus.SUCCEEDED else None
    refunded = refunds.record_outcome(
        conn, event_id, status, stripe_refund_id=outcome.refund_id, failure_reason=reason
    )
    row = refunds.row(conn, event_id)
    assert row is not None
    result = _result(run, row, refunded)
    if status == RefundStatus.SUCCEEDED:
        return Succeed(result)
    if status == RefundStatus.PENDING:
        progress = run.progress.model_copy(update={"refund_id": outcome.refund_id})
        until = now() + timedelta(seconds=run.settings.action_poll_seconds)
        return Watch(Point.WATCHING, progress, until)
    error = PermanentError(
        f"Stripe's refund {outcome.refund_id} ended {status}"
        f" ({outcome.failure_reason or 'no reason given'})",
        code="refund_failed",
    )
    return Fail(error, {**result, "failure_reason": row.failure_reason})


def _record_failure(run: RefundRun, conn: Connection, error: PermanentError) -> dict[str, Any]:
    """A refund that failed before Stripe held it frees its pending amount (its row, if it
    has one, becomes failed with the error's code); the result describes the refund."""
    refunds.fail_pending(conn, run.message.event_id, error.code)
    row = refunds.row(conn, run.message.event_id)
    if row is None:
        return {"charge_event_id": run.message.charge_event_id, "refund_id": None}
    refunded = refunds.amount_refunded(conn, row.charge_event_id)
    return {**_result(run, row, refunded), "failure_reason": row.failure_reason}


def _regenerate(_conn: Connection, event: EventRow) -> str:
    """A failed refund is never run again as a new generation: what remains of the charge
    may have changed since, and the amount it asked is the app's decision to make again."""
    return (
        "a failed refund is not replayed; publish a new refund_requested under a new"
        " event_id (this event's refunds row stays failed)"
    )


WORKFLOW: Workflow[RefundRequested, RefundProgress] = Workflow(
    message_type="refund_requested",
    progress=RefundProgress,
    phases={
        Point.STARTED: Phase(commit=_record_pending),
        Point.REFUNDING: Phase(call=_refund, commit=_record_outcome),
        Point.WATCHING: Phase(call=_reread, commit=_record_outcome),
    },
    on_failure=_record_failure,
    regenerate=_regenerate,
)
