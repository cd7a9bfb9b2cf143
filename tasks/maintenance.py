"""Tasks of payworker itself (not of the upstream contract): the periodic sweep and the
re-drive of one event from the ledger."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from sqlalchemy import Engine

from core.settings import Settings
from db import claims, ledger
from tasks.base import LedgerTask
from tasks.logs import EventLog
from tasks.messages import MESSAGE_TYPES, Message
from tasks.resources import ProcessResources
from tasks.runner import Outcome, run_event
from tasks.sealing import TokenSealer
from tasks.sweeper import SweepReport, sweep
from tasks.workflows import WORKFLOWS

REDRIVE_TASK = "payworker.redrive"
SWEEP_TASK = "payworker.sweep"


def run_sweep(celery_app: Celery, settings: Settings, engine: Engine) -> SweepReport:
    """One sweep pass: publish a re-drive for every due event of our queue."""
    with celery_app.producer_or_acquire() as producer:

        def publish(event_id: str) -> None:
            celery_app.send_task(
                REDRIVE_TASK, kwargs={"event_id": event_id}, queue=settings.queue, producer=producer
            )

        with engine.begin() as conn:
            return sweep(
                conn, publish, queue=settings.queue, grace_seconds=settings.redrive_after_seconds
            )


class SweepTask(Task):  # type: ignore[misc]
    """Periodic (beat): re-drive due and abandoned events."""

    abstract = True
    resources: ProcessResources

    def sweep(self) -> dict[str, Any]:
        res = self.resources.get()
        report = run_sweep(self.app, res.settings, res.engine)
        for reason, count in report.reasons.items():
            res.telemetry.redriven(reason, count)
        if report.redriven:
            EventLog().info("sweep", redriven=len(report.redriven), **dict(report.reasons))
        return {"redriven": len(report.redriven), **report.reasons}


def rebuild_message(event_type: str, payload: dict[str, Any], token: str | None) -> Message:
    """The event's message from its ledger row; it was validated when first received."""
    data = dict(payload)
    if token is not None:
        data["token"] = token
    return MESSAGE_TYPES[event_type].model_construct(**data)


class RedriveTask(LedgerTask):
    """Resume one event from the ledger; the message names nothing but the event."""

    abstract = True

    def redrive(self, event_id: Any) -> Outcome:
        log = EventLog(event_id=event_id, task_id=self.request.id, task=self.name)
        if not isinstance(event_id, str):
            log.error("redrive without an event id")
            return {"status": "rejected"}
        res = self.resources.get()
        with res.engine.begin() as conn:
            taken = claims.reclaim(conn, event_id, self.owner(), res.settings.lease_seconds)
        if taken is None:
            log.error("redrive of an unknown event")
            return {"event_id": event_id, "status": "unknown"}
        claimed, stored = taken
        if not isinstance(claimed, ledger.Claim) or stored is None:
            log.info("redrive not needed", state=type(claimed).__name__)
            return {"event_id": event_id, "status": "not_needed"}
        log = log.bind(user_id=stored.user_id, attempt=claimed.attempts)
        workflow = WORKFLOWS[stored.type]
        token = None
        if workflow.token_needed_at:
            token = _open(stored.sealed_token, res.sealer)
            if token is None and claimed.recovery_point in workflow.token_needed_at:
                with res.engine.begin() as conn:
                    ledger.bury(
                        conn,
                        claimed,
                        "the card token needed to resume this event cannot be recovered",
                    )
                log.error("dead: card token not recoverable")
                return {"event_id": event_id, "status": "dead"}
        log.info("redriving", point=claimed.recovery_point)
        message = rebuild_message(stored.type, stored.payload, token)
        return run_event(res, workflow, claimed, message, log)


def _open(sealed: str | None, sealer: TokenSealer) -> str | None:
    if sealed is None:
        return None
    try:
        return sealer.unseal(sealed)
    except Exception:  # a changed PAYWORKER_SEAL_KEY: treated as a lost token
        return None
