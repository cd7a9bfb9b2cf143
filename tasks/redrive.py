"""A re-drive: resume one event from the ledger. The message names nothing but the event
(the sweeper's and a replay's re-drives, and `payworker.redrive` of older versions); the
rest of its message is rebuilt from the row, which was validated when first received."""

from __future__ import annotations

from typing import Any

from db import claims, ledger
from tasks.logs import EventLog
from tasks.messages import MESSAGE_TYPES, Message
from tasks.resources import ProcessResources
from tasks.runner import Outcome, run_event
from tasks.sealing import TokenSealer
from tasks.workflows import WORKFLOWS


def rebuild_message(event_type: str, payload: dict[str, Any], token: str | None) -> Message:
    """The event's message from its ledger row; it was validated when first received."""
    data = dict(payload)
    if token is not None:
        data["token"] = token
    return MESSAGE_TYPES[event_type].model_construct(**data)


def resume(resources: ProcessResources, event_id: Any, owner: str, log: EventLog) -> Outcome:
    """Take the lease of `event_id` for `owner` and run it from its recovery point."""
    if not isinstance(event_id, str):
        log.error("redrive without an event id")
        return {"status": "rejected"}
    res = resources.get()
    with res.engine.begin() as conn:
        taken = claims.reclaim(conn, event_id, owner, res.settings.lease_seconds)
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
