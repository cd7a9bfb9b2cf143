"""charge_requested: validate, record a pending charge, charge once, record the outcome.

started ──(pending charges row, API chosen)──> charge_creating   (Charges API: legacy.py)
                                          └──> intent_creating   (PaymentIntents: intents.py)

One workflow, two APIs (PAYWORKER_CHARGE_API): the shared start and failure records are in
start.py, what a forced replay asks in replay.py.
"""

from __future__ import annotations

from typing import Any

from tasks.messages import ChargeRequested
from tasks.phases import Fail, Phase, Run, Step, Succeed, Watch, Workflow
from tasks.telemetry import Telemetry
from tasks.workflows.charges import intents, legacy
from tasks.workflows.charges.replay import charged_on_stripe, regenerate
from tasks.workflows.charges.start import (
    CANCELED_CODES,
    ChargeProgress,
    Point,
    api_of,
    check_amount,
    record_failure,
    record_pending,
)


def count_outcome(telemetry: Telemetry, run: Run[Any, Any], step: Step) -> None:
    """Count a charge's outcome by API: succeeded, failed, canceled (its PaymentIntent),
    or action_required (the first time it waits for its customer)."""
    outcome = None
    if isinstance(step, Succeed):
        outcome = "succeeded"
    elif isinstance(step, Fail):
        canceled = step.error.code in CANCELED_CODES
        outcome = "canceled" if canceled else "failed"
    elif isinstance(step, Watch) and step.action is not None and run.point != Point.INTENT_WATCHING:
        outcome = "action_required"
    if outcome is not None:
        telemetry.charge_outcome(api_of(run), outcome)


WORKFLOW: Workflow[ChargeRequested, ChargeProgress] = Workflow(
    message_type="charge_requested",
    progress=ChargeProgress,
    phases={
        Point.STARTED: Phase(call=check_amount, commit=record_pending),
        Point.CHARGING: Phase(call=legacy.charge, commit=legacy.record_outcome),
        Point.INTENT_CREATING: Phase(call=intents.create, commit=intents.record_created),
        Point.INTENT_WATCHING: Phase(call=intents.read, commit=intents.record_read),
        Point.INTENT_CANCELING: Phase(call=intents.cancel, commit=intents.record_canceled),
    },
    on_failure=record_failure,
    regenerate=regenerate,
    check_stripe=charged_on_stripe,
    count_outcome=count_outcome,
)
