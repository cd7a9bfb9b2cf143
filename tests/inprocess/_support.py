"""What the in-process tests share besides fixtures: the settings they run with, the
deliveries they make to the runner, the rows they read, and a metrics sink that records.
Fixtures are in conftest.py."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from db import claims, ledger
from db.claims import NewEvent
from db.ledger import Claim, now
from tasks.logs import EventLog
from tasks.messages import MESSAGE_TYPES, CardTokenReceived, Message
from tasks.redrive import rebuild_message
from tasks.resources import Resources
from tasks.runner import Outcome, run_event
from tasks.workflows import WORKFLOWS

MESSAGE_TYPE = {model: name for name, model in MESSAGE_TYPES.items()}
# The retry budget of these tests: the third counted failure buries an event.
MAX_ATTEMPTS = 3
RETRY_BACKOFF_BASE = 1.0
RETRY_BACKOFF_MAX = 30.0
PREREQUISITE_WAIT_SECONDS = 900
LEASE_SECONDS = 60
# Owners of a lease, as tasks/base.py names them (host:pid:task id).
WORKER_A = "host-a:1:task-a"
WORKER_B = "host-b:2:task-b"


class RecordingTelemetry:
    """A metrics sink that keeps what it was told."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []
        self.retries: list[tuple[str, str]] = []
        self.redrives: list[tuple[str, int]] = []
        self.stripe_requests: list[tuple[str, str, int | None]] = []
        self.refused: list[tuple[str, str]] = []
        self.charge_outcomes: list[tuple[str, str]] = []

    def event_finished(self, message_type: str, status: str, age_seconds: float) -> None:
        self.finished.append((message_type, status))

    def retry_scheduled(self, message_type: str, reason: str) -> None:
        self.retries.append((message_type, reason))

    def redriven(self, reason: str, count: int) -> None:
        self.redrives.append((reason, count))

    def stripe_request(
        self, method: str, endpoint: str, status: int | None, seconds: float
    ) -> None:
        self.stripe_requests.append((method, endpoint, status))

    def message_refused(self, task: str, reason: str) -> None:
        self.refused.append((task, reason))

    def charge_outcome(self, api: str, outcome: str) -> None:
        self.charge_outcomes.append((api, outcome))


def new_event(res: Resources, message: Message) -> NewEvent:
    """The ledger's first record of a delivery, built as tasks/base.py::_claim builds it."""
    sealed = res.sealer.seal(message.token) if isinstance(message, CardTokenReceived) else None
    return NewEvent(
        event_id=message.event_id,
        type=MESSAGE_TYPE[type(message)],
        user_id=message.user_id,
        payload=message.stored_payload(),
        payload_hash=message.fingerprint(),
        queue=res.settings.queue,
        sealed_token=sealed,
    )


class Deliveries:
    """Deliveries of messages to the runner, as the Celery task makes them: claim the event
    in a transaction of its own, then `run_event` with the message."""

    def __init__(self, res: Resources) -> None:
        self.res = res

    def claim(
        self, message: Message, *, owner: str = WORKER_A, lease_seconds: int = LEASE_SECONDS
    ) -> Claim:
        """Claim the event for `owner`; fails the test unless the claim is granted."""
        with self.res.engine.begin() as conn:
            claimed = claims.claim(conn, new_event(self.res, message), owner, lease_seconds)
        assert isinstance(claimed, Claim), claimed
        return claimed

    def claim_at(
        self,
        message: Message,
        point: str,
        progress: dict[str, Any],
        *,
        owner: str = WORKER_A,
        lease_seconds: int = LEASE_SECONDS,
    ) -> Claim:
        """A claimed event that an earlier run left at `point` with `progress`."""
        claim = self.claim(message, owner=owner, lease_seconds=lease_seconds)
        with self.res.engine.begin() as conn:
            return ledger.checkpoint(conn, claim, point, progress, lease_seconds)

    def run(self, message: Message, claim: Claim) -> Outcome:
        workflow = WORKFLOWS[MESSAGE_TYPE[type(message)]]
        log = EventLog(event_id=message.event_id, user_id=message.user_id)
        return run_event(self.res, workflow, claim, message, log)

    def deliver(self, message: Message, *, owner: str = WORKER_A) -> Outcome:
        """One delivery: claim, then run."""
        return self.run(message, self.claim(message, owner=owner))

    def redrive(self, event_id: str, *, owner: str = WORKER_A) -> Outcome:
        """A re-drive (the sweeper's, or a replay's), as tasks/redrive.py's resume
        makes it: take the known event's lease, rebuild its message from the ledger (the
        card token unsealed), run it."""
        with self.res.engine.begin() as conn:
            taken = claims.reclaim(conn, event_id, owner, LEASE_SECONDS)
        assert taken is not None, f"unknown event {event_id!r}"
        claimed, stored = taken
        assert isinstance(claimed, Claim) and stored is not None, claimed
        token = self.res.sealer.unseal(stored.sealed_token) if stored.sealed_token else None
        message = rebuild_message(stored.type, stored.payload, token)
        return self.run(message, claimed)


class Rows:
    """The rows a test asserts, read in a transaction of their own; and time moved in them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _one(self, sql: str, **params: Any) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(text(sql), params).mappings().first()
        return dict(row) if row is not None else None

    def _all(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(sql), params).mappings()]

    def event(self, event_id: str) -> dict[str, Any]:
        row = self._one("SELECT * FROM payment_events WHERE event_id = :e", e=event_id)
        assert row is not None, f"no ledger row for {event_id!r}"
        return row

    def charge(self, event_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM charges WHERE event_id = :e", e=event_id)

    def customer(self, user_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM customers WHERE user_id = :u", u=user_id)

    def cards(self, user_id: str) -> list[dict[str, Any]]:
        return self._all(
            "SELECT * FROM cards WHERE user_id = :u ORDER BY created_at, stripe_card_id",
            u=user_id,
        )

    def card(self, card_id: str) -> dict[str, Any]:
        row = self._one("SELECT * FROM cards WHERE stripe_card_id = :c", c=card_id)
        assert row is not None, f"no cards row for {card_id!r}"
        return row

    def default_card(self, user_id: str) -> str | None:
        defaults = [
            c["stripe_card_id"]
            for c in self.cards(user_id)
            if c["is_default"] and c["removed_at"] is None
        ]
        assert len(defaults) <= 1, defaults
        return defaults[0] if defaults else None

    def backdate_receipt(self, event_id: str, seconds: float) -> None:
        """The event was first received `seconds` earlier than the ledger says."""
        self._execute(
            "UPDATE payment_events SET created_at = created_at - make_interval(secs => :s)"
            " WHERE event_id = :e",
            s=seconds,
            e=event_id,
        )

    def age_pending_write(self, event_id: str, hours: float) -> None:
        """The idempotency key of the event's pending write was first used `hours` ago."""
        moment = (now() - timedelta(hours=hours)).isoformat()
        self._execute(
            "UPDATE payment_events SET progress = progress || jsonb_build_object("
            "'write_started_at', CAST(:m AS text)) WHERE event_id = :e",
            m=moment,
            e=event_id,
        )

    def _execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            assert conn.execute(text(sql), params).rowcount == 1


def a_day_ago() -> str:
    """When a pending write's key was first used, for a recovery point set up directly:
    longer ago than Stripe keeps a key."""
    return (now() - timedelta(hours=25)).isoformat()


def assert_scheduled(row: dict[str, Any], after: datetime, low: float, high: float) -> None:
    """The event waits, lease given back, for `low` to `high` seconds from `after`
    (taken before the run: the run picked the moment later)."""
    assert row["locked_by"] is None and row["locked_until"] is None
    due = row["next_attempt_at"]
    assert due is not None
    assert after + timedelta(seconds=low) <= due <= now() + timedelta(seconds=high), due - after
