"""Tasks of payworker itself (not of the upstream contract): the periodic sweep and the
re-drive of one event from the ledger."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Celery

from db.session import transaction
from tasks import ledger
from tasks.base import LedgerTask, Outcome
from tasks.context import Context
from tasks.logs import EventLog
from tasks.messages import MESSAGE_TYPES, Message
from tasks.payments import WORKFLOWS
from tasks.sealing import TokenSealer
from tasks.sweeper import SweepReport, sweep
from tasks.workflows.cards import TOKEN_NEEDED_AT
from worker import metrics
from worker.app import app
from worker.resources import resources
from worker.settings import Settings, get_settings

REDRIVE_TASK = "payworker.redrive"


def run_sweep(celery_app: Celery, settings: Settings, engine: Any) -> SweepReport:
    """One sweep pass: publish a re-drive for every due event of our queue."""
    with celery_app.producer_or_acquire() as producer:

        def publish(event_id: str) -> None:
            celery_app.send_task(
                REDRIVE_TASK, kwargs={"event_id": event_id}, queue=settings.queue, producer=producer
            )

        with transaction(engine) as session:
            return sweep(
                session,
                publish,
                queue=settings.queue,
                grace_seconds=settings.redrive_after_seconds,
            )


@app.task(name="payworker.sweep", ignore_result=True)
def sweep_task() -> dict[str, Any]:
    """Periodic (beat): re-drive due and abandoned events."""
    report = run_sweep(app, get_settings(), resources().engine)
    for reason, count in report.reasons.items():
        metrics.REDRIVES.labels(reason).inc(count)
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
        res = resources()
        owner = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
        with transaction(res.engine) as session:
            taken = ledger.reclaim(session, event_id, owner, res.settings.lease_seconds)
            if taken is None:
                log.error("redrive of an unknown event")
                return {"event_id": event_id, "status": "unknown"}
            claimed, event = taken
            if not isinstance(claimed, ledger.Claim):
                log.info("redrive not needed", state=type(claimed).__name__)
                return {"event_id": event_id, "status": "not_needed"}
            message_type, payload, sealed = event.type, dict(event.payload), event.sealed_token
        log = log.bind(user_id=payload.get("user_id"), attempt=claimed.attempts)
        ctx = Context(res.engine, res.gateway, res.settings, claimed, message_type)
        token = None
        if message_type == "card_token_received":
            token = _open(sealed, res.sealer)
            if token is None and claimed.recovery_point in TOKEN_NEEDED_AT:
                with ctx.tx() as session:
                    ledger.bury_unrecoverable(
                        ledger.owned(session, claimed),
                        "the card token needed to resume this event cannot be recovered",
                    )
                log.error("dead: card token not recoverable")
                return {"event_id": event_id, "status": "dead"}
        log.info("redriving", point=claimed.recovery_point)
        message = rebuild_message(message_type, payload, token)
        return self.run_workflow(ctx, WORKFLOWS[message_type], message, log)


def _open(sealed: str | None, sealer: TokenSealer) -> str | None:
    if sealed is None:
        return None
    try:
        return sealer.unseal(sealed)
    except Exception:  # a changed PAYWORKER_SEAL_KEY: treated as a lost token
        return None


@app.task(name=REDRIVE_TASK, bind=True, base=RedriveTask)
def redrive_task(self: RedriveTask, /, **kwargs: Any) -> Outcome:
    return self.redrive(kwargs.get("event_id"))
