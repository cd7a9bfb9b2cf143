"""The shape of a workflow: recovery points, typed progress, phases and their steps.

A workflow is a table from recovery point to phase. A phase is two functions:
`call` talks to Stripe (outside any transaction: a transaction held open across an HTTP
call is a lock held for seconds) and `commit` decides, inside the phase's one
transaction, what happens next. `commit` returns a step — advance to a recovery point with
new progress, succeed with a result, fail with an error, or wait until a time — and the
runner (tasks/runner.py) writes that step into the ledger in the same transaction, with
the lease check. Outcomes are return values; nothing outside a workflow reads its progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine

from core.errors import PermanentError
from core.settings import Settings
from db.ledger import STARTED, Claim, now
from db.replays import EventRow
from tasks.gateway import StripeGateway
from tasks.idempotency import idempotency_key
from tasks.messages import GENERATION_METADATA_KEY, Message
from tasks.telemetry import Telemetry


class Progress(BaseModel):
    """What a workflow has learnt so far, kept in `payment_events.progress`. Each workflow
    extends it; keys it does not know (an operator's replay history) are left alone."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # When the idempotency key of the pending Stripe write was first used: Stripe forgets
    # a key after 24 hours, and the outcome must then be looked up by metadata instead.
    write_started_at: datetime | None = None


# A generation >= 1 started by `payworker replay --force` since idempotency keys of new
# generations took the `pwg:` form has this key in its progress (tasks/replay.py writes
# it). One started before has not: until it ends, it keeps the keys it was started with
# (`pw:{event_id}:g{n}:{step}`) and the metadata it sent, or a resumed write could double.
KEY_FORM = "key_form"
GENERATION_KEYS = "pwg"


def legacy_keys(generation: int, progress: Mapping[str, Any]) -> bool:
    """True for a generation >= 1 started before the `pwg:` key form (see KEY_FORM)."""
    return generation > 0 and progress.get(KEY_FORM) != GENERATION_KEYS


def key_pattern(event_id: str, generation: int, progress: Mapping[str, Any]) -> str:
    """The idempotency keys of an event's generation, `{step}` standing for the step."""
    return idempotency_key(event_id, "{step}", generation, legacy=legacy_keys(generation, progress))


M = TypeVar("M", bound=Message)
P = TypeVar("P", bound=Progress)
T = TypeVar("T")


@dataclass(frozen=True)
class Advance:
    """Go on at `point` with `progress`. `starts_write`: the next phase sends a Stripe write
    whose outcome may become unknown, so its key's first use is noted now. `forget_token`:
    the sealed card token can never be needed again."""

    point: str
    progress: Progress
    starts_write: bool = False
    forget_token: bool = False


@dataclass(frozen=True)
class Succeed:
    """The event succeeded with this result; final."""

    result: dict[str, Any]


@dataclass(frozen=True)
class Fail:
    """The event failed with this business outcome; final. The workflow's `on_failure` adds
    its own records (a failed charges row) in the same transaction."""

    error: PermanentError
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class Wait:
    """Nothing to do until `until` (no retry budget spent): the sweeper re-drives it then."""

    until: datetime
    reason: str


@dataclass(frozen=True)
class CustomerAction:
    """What an event waiting for its customer shows the app: the error code (why the
    customer is needed), a message, and the result (what stripe.js needs, e.g. the
    PaymentIntent's id and client secret)."""

    code: str
    message: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Watch:
    """Stripe decides what comes next: read it again at `point` with `progress` when
    `until` comes (the sweeper re-drives the event). With `action` the event waits for its
    customer (status `action_required`); without, Stripe is still processing."""

    point: str
    progress: Progress
    until: datetime
    action: CustomerAction | None = None


Step = Advance | Succeed | Fail | Wait | Watch


@dataclass(frozen=True)
class Run(Generic[M, P]):
    """One run of one claimed event, as its phases see it."""

    claim: Claim
    message: M
    progress: P
    gateway: StripeGateway
    settings: Settings
    engine: Engine

    @property
    def point(self) -> str:
        return self.claim.recovery_point

    @property
    def legacy_generation(self) -> bool:
        """True for a generation >= 1 started before the `pwg:` key form (see KEY_FORM)."""
        return legacy_keys(self.claim.generation, self.claim.progress)

    def key(self, step: str) -> str:
        """The deterministic Stripe idempotency key of `step` for this event's generation."""
        return idempotency_key(
            self.claim.event_id, step, self.claim.generation, legacy=self.legacy_generation
        )

    def metadata(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Stripe metadata of what this run creates: `extra`, `event_id`, `user_id`, and for a
        generation >= 1 its number (`generation`). Generation 0 (and a legacy generation)
        adds nothing: a resumed write must repeat the parameters it was first sent with, as
        Stripe refuses a key reused with other ones."""
        metadata = self.message.stripe_metadata(extra)
        if self.claim.generation > 0 and not self.legacy_generation:
            metadata[GENERATION_METADATA_KEY] = str(self.claim.generation)
        return metadata

    @property
    def lookup_generation(self) -> int | None:
        """The generation an object made by this run carries in its metadata, to find it by
        (generation 0: none); None for a legacy generation, whose objects carry no number."""
        return None if self.legacy_generation else self.claim.generation

    def key_may_have_expired(self) -> bool:
        """True when Stripe may have forgotten the key of the pending write: its outcome
        must then be looked up by metadata rather than replayed."""
        started = self.progress.write_started_at
        if started is None:
            return False
        age = (now() - started).total_seconds()
        return age > self.settings.stripe_key_window_seconds

    def resume_write(self, find: Callable[[], T | None], write: Callable[[], T]) -> T:
        """The answer of the pending Stripe write. While Stripe keeps its key, `write`
        (sent under that key: a repeat is answered as the first one was). After Stripe may
        have forgotten it, what `find` finds by our metadata first; `write` only if
        nothing is found."""
        found = find() if self.key_may_have_expired() else None
        return found if found is not None else write()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A short read-only transaction for a phase's `call` (closed before Stripe is)."""
        with self.engine.connect() as conn:
            yield conn


def _nothing_to_call(_run: Any) -> None:
    return None


@dataclass(frozen=True)
class Phase(Generic[M, P, T]):
    """The work at one recovery point: `call` (Stripe, no transaction), then `commit`."""

    commit: Callable[[Run[M, P], Connection, T], Step]
    call: Callable[[Run[M, P]], T] = _nothing_to_call  # type: ignore[assignment]


def _no_records(_run: Any, _conn: Connection, _error: PermanentError) -> dict[str, Any] | None:
    return None


@dataclass(frozen=True)
class Regeneration:
    """Where a new generation of a failed event starts (`payworker replay --force`), and
    what the earlier generation left that the replay history keeps."""

    point: str
    progress: Progress
    record: dict[str, Any] = field(default_factory=dict)


def _start_over(_conn: Connection, _event: EventRow) -> Regeneration | str:
    return Regeneration(STARTED, Progress())


@dataclass(frozen=True)
class Workflow(Generic[M, P]):
    """One message type's workflow."""

    message_type: str
    progress: type[P]
    phases: Mapping[str, Phase[M, P, Any]]
    # The workflow's own records of a failure, in the failing transaction; returns what
    # goes into the event's result.
    on_failure: Callable[[Run[M, P], Connection, PermanentError], dict[str, Any] | None] = (
        _no_records
    )
    # Recovery points at which resuming still needs the sealed card token.
    token_needed_at: frozenset[str] = field(default_factory=frozenset)
    # A new generation of a failed event: where it starts, or why it cannot (a refusal).
    regenerate: Callable[[Connection, EventRow], Regeneration | str] = _start_over
    # Asked before a new generation, outside any transaction: does Stripe already hold what
    # the new generation would make a second time (a succeeded charge)? A refusal, or None.
    check_stripe: Callable[[StripeGateway, Engine, EventRow], str | None] | None = None
    # The workflow's own metrics of a step that ends a run (final, waiting or watched),
    # told once the step is written.
    count_outcome: Callable[[Telemetry, Run[M, P], Step], None] | None = None

    def progress_of(self, claim: Claim) -> P:
        return self.progress.model_validate(claim.progress)
