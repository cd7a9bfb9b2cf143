"""The one runner of every workflow: run a claimed event's phases from its recovery point,
write each step into the ledger in the phase's transaction, and settle an error by its
disposition (core/errors.py). This is the only place that records a failure, schedules a
retry or buries an event. No Celery here: the task layer calls `run_event`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from core.errors import (
    Disposition,
    InternalError,
    LeaseLost,
    PayworkerError,
    PermanentError,
    PrerequisiteMissing,
    translate,
)
from db import ledger
from db.ledger import Claim, now
from tasks.logs import EventLog
from tasks.messages import Message
from tasks.phases import Advance, Fail, Progress, Run, Step, Succeed, Wait, Watch, Workflow
from tasks.resources import Resources
from tasks.retry import backoff

Outcome = dict[str, Any]


def run_event(
    res: Resources, workflow: Workflow[Any, Any], claim: Claim, message: Message, log: EventLog
) -> Outcome:
    """Run one claimed event until it is final, waits, or fails in a way to settle."""
    run: Run[Any, Any] | None = None
    try:
        run = Run(
            claim, message, workflow.progress_of(claim), res.gateway, res.settings, res.engine
        )
        while True:
            phase = workflow.phases.get(run.point)
            if phase is None:
                raise InternalError(f"{workflow.message_type} has no phase at {run.point!r}")
            value = phase.call(run)
            with res.engine.begin() as conn:
                step = phase.commit(run, conn, value)
                run = _apply(conn, res, workflow, run, step)
            if not isinstance(step, Advance):
                return _settled(res, workflow, run, step, log)
    except Exception as exc:
        error = translate(exc)
        if isinstance(error, InternalError):
            logging.getLogger("payworker").exception("unexpected error")
        return settle(res, workflow, run or _bare_run(res, claim, message), error, log)


def _bare_run(res: Resources, claim: Claim, message: Message) -> Run[Any, Any]:
    """A run whose progress could not even be read: enough to settle its error."""
    return Run(claim, message, Progress(), res.gateway, res.settings, res.engine)


def _apply(
    conn: Connection, res: Resources, workflow: Workflow[Any, Any], run: Run[Any, Any], step: Step
) -> Run[Any, Any]:
    """Write `step` into the ledger in the phase's transaction; returns the run that goes
    on (a new recovery point and progress after an Advance)."""
    if isinstance(step, Advance):
        progress = step.progress
        if step.starts_write:
            progress = progress.model_copy(update={"write_started_at": now()})
        claim = ledger.checkpoint(
            conn,
            run.claim,
            step.point,
            progress.model_dump(mode="json"),
            res.settings.lease_seconds,
            forget_token=step.forget_token,
        )
        return replace(run, claim=claim, progress=progress)
    if isinstance(step, Succeed):
        ledger.succeed(conn, run.claim, step.result)
    elif isinstance(step, Fail):
        _record_failure(conn, workflow, run, step.error, step.result)
    elif isinstance(step, Watch):
        action = step.action
        ledger.watch(
            conn,
            run.claim,
            point=step.point,
            progress=step.progress.model_dump(mode="json"),
            until=step.until,
            action=(action.code, action.message, action.result) if action else None,
        )
    else:
        ledger.release(conn, run.claim, retry_at=step.until, error=step.reason)
    return run


def _record_failure(
    conn: Connection,
    workflow: Workflow[Any, Any],
    run: Run[Any, Any],
    error: PermanentError,
    result: dict[str, Any] | None,
) -> None:
    """The one place a failure is recorded: the workflow's own records, then the event."""
    records = workflow.on_failure(run, conn, error)
    if records is not None or result is not None:
        result = {**(records or {}), **(result or {})}
    ledger.fail(conn, run.claim, error.code, error.message, result)


def _settled(
    res: Resources, workflow: Workflow[Any, Any], run: Run[Any, Any], step: Step, log: EventLog
) -> Outcome:
    event_id = run.claim.event_id
    if workflow.count_outcome is not None:
        workflow.count_outcome(res.telemetry, run, step)
    if isinstance(step, Wait):
        log.info("waiting", until=step.until.isoformat(), reason=step.reason)
        return {"event_id": event_id, "status": "waiting"}
    if isinstance(step, Watch):
        # Never the action's result: it holds a client secret, for the app alone.
        if step.action is not None:
            log.info("action required", code=step.action.code, until=step.until.isoformat())
            return {
                "event_id": event_id,
                "status": "action_required",
                "error_code": step.action.code,
            }
        log.info("watching", point=step.point, until=step.until.isoformat())
        return {"event_id": event_id, "status": "watching"}
    status = "succeeded" if isinstance(step, Succeed) else "failed"
    _count_final(res, workflow, run.claim, status)
    if isinstance(step, Fail):
        log.info("failed", code=step.error.code, error=step.error.message)
        return {"event_id": event_id, "status": status, "error_code": step.error.code}
    log.info("finished", status=status)
    return {"event_id": event_id, "status": status}


def settle(
    res: Resources,
    workflow: Workflow[Any, Any],
    run: Run[Any, Any],
    error: PayworkerError,
    log: EventLog,
) -> Outcome:
    """Turn a run's error into its outcome, by the error's disposition."""
    settler = _SETTLERS[error.disposition]
    try:
        return settler(res, workflow, run, error, log)
    except LeaseLost as lost:  # while writing the outcome
        log.warning("lease lost; the new owner finishes the event", error=lost.message)
        return {"event_id": run.claim.event_id, "status": "lease_lost"}
    except SQLAlchemyError:
        # The ledger is unreachable, but the event row exists: its lease runs out and the
        # sweeper re-drives it once Postgres is back.
        log.warning("database unavailable; the sweeper will re-drive the event")
        return {"event_id": run.claim.event_id, "status": "abandoned"}


Settler = Callable[
    [Resources, Workflow[Any, Any], Run[Any, Any], PayworkerError, EventLog], Outcome
]


def _stop(
    res: Resources, wf: Workflow[Any, Any], run: Run[Any, Any], error: PayworkerError, log: EventLog
) -> Outcome:
    log.warning("lease lost; the new owner finishes the event", error=error.message)
    return {"event_id": run.claim.event_id, "status": "lease_lost"}


def _fail(
    res: Resources, wf: Workflow[Any, Any], run: Run[Any, Any], error: PayworkerError, log: EventLog
) -> Outcome:
    assert isinstance(error, PermanentError)
    with res.engine.begin() as conn:
        _record_failure(conn, wf, run, error, None)
    return _settled(res, wf, run, Fail(error), log)


def _wait(
    res: Resources, wf: Workflow[Any, Any], run: Run[Any, Any], error: PayworkerError, log: EventLog
) -> Outcome:
    """A free wait: our limiter said "not now", or a prerequisite has not arrived (it is
    waited for PAYWORKER_PREREQUISITE_WAIT_SECONDS from the event's receipt, then fails)."""
    settings = res.settings
    cap = settings.retry_backoff_max
    if isinstance(error, PrerequisiteMissing):
        deadline = run.claim.created_at + timedelta(seconds=settings.prerequisite_wait_seconds)
        cap = (deadline - now()).total_seconds()
        if cap <= 0:
            return _fail(res, wf, run, PermanentError(error.message, code=error.code), log)
        log.info("waiting for a prerequisite", reason=error.message)
        failures = run.claim.attempts
    else:
        log.info("waiting", error=str(error))
        failures = max(1, run.claim.transient_failures)
    delay = min(cap, backoff(failures, settings.retry_backoff_base, settings.retry_backoff_max))
    return _later(res, wf, run, error, log, delay)


def _configuration(
    res: Resources, wf: Workflow[Any, Any], run: Run[Any, Any], error: PayworkerError, log: EventLog
) -> Outcome:
    log.critical(
        "CONFIGURATION FAULT: Stripe refuses our credentials; events wait until"
        " STRIPE_API_KEY is fixed",
        error=error.message,
    )
    return _later(res, wf, run, error, log, res.settings.retry_backoff_max)


def _retry(
    res: Resources, wf: Workflow[Any, Any], run: Run[Any, Any], error: PayworkerError, log: EventLog
) -> Outcome:
    """A counted retry, or a burial when the retry budget is spent."""
    log.warning("transient failure", error=str(error))
    settings = res.settings
    with res.engine.begin() as conn:
        failures = ledger.count_failure(conn, run.claim)
        if failures >= settings.max_attempts:
            ledger.bury(
                conn, run.claim, f"gave up after {failures} transient failures; last: {error}"
            )
            delay = None
        else:
            delay = backoff(failures, settings.retry_backoff_base, settings.retry_backoff_max)
            retry_at = now() + timedelta(seconds=delay)
            ledger.release(conn, run.claim, retry_at=retry_at, error=str(error))
    if delay is None:
        _count_final(res, wf, run.claim, "dead")
        log.error("dead: retries exhausted", error=str(error))
        return {"event_id": run.claim.event_id, "status": "dead"}
    return _scheduled(res, wf, run, error, log, delay)


def _later(
    res: Resources,
    wf: Workflow[Any, Any],
    run: Run[Any, Any],
    error: PayworkerError,
    log: EventLog,
    delay: float,
) -> Outcome:
    """Give the lease back until the next attempt, spending no retry budget."""
    with res.engine.begin() as conn:
        ledger.release(conn, run.claim, retry_at=now() + timedelta(seconds=delay), error=str(error))
    return _scheduled(res, wf, run, error, log, delay)


def _scheduled(
    res: Resources,
    wf: Workflow[Any, Any],
    run: Run[Any, Any],
    error: PayworkerError,
    log: EventLog,
    delay: float,
) -> Outcome:
    # No countdown on the broker: the sweeper publishes the event again when due.
    res.telemetry.retry_scheduled(wf.message_type, error.code)
    log.info("retry scheduled", seconds=round(delay, 2), error=str(error))
    return {"event_id": run.claim.event_id, "status": "retry_scheduled", "delay": delay}


_SETTLERS: dict[Disposition, Settler] = {
    Disposition.STOP: _stop,
    Disposition.FAIL: _fail,
    Disposition.WAIT: _wait,
    Disposition.CONFIGURATION: _configuration,
    Disposition.RETRY: _retry,
    # A conflict is refused before a run exists; met inside a run it is a bug: retried.
    Disposition.REJECT: _retry,
}


def _count_final(res: Resources, wf: Workflow[Any, Any], claim: Claim, status: str) -> None:
    age = (now() - claim.created_at).total_seconds()
    res.telemetry.event_finished(wf.message_type, status, max(0.0, age))
