"""`payworker demo`: one real worker processes a batch of users, cards and charges against the
local Stripe fake (or a Stripe test key); the outcome is then read back from Postgres."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from core.settings import get_settings
from db.migrate import migrate
from db.session import get_engine
from tasks.money import format_amount

if TYPE_CHECKING:
    from stripe_fake import FakeStripe

STATUSES = ("received", "processing", "succeeded", "failed", "dead")
FINAL = STATUSES[2:]
# Card numbers the fake knows. One number always gives one fingerprint (what card dedup keys
# on); 4000000000000341 attaches fine and is declined only when charged.
VISA, MASTERCARD, DEBIT, DECLINES = (
    "4242424242424242", "5555555555554444", "4000056655665556", "4000000000000341",
)  # fmt: skip
# Raw numbers cannot be tokenised with a real key; Stripe's test tokens stand in for them.
STRIPE_TEST_TOKENS = {
    VISA: "tok_visa", MASTERCARD: "tok_mastercard", DEBIT: "tok_visa_debit",
    DECLINES: "tok_chargeCustomerFail",
}  # fmt: skip
# Short waits, so the out-of-order charge finishes within seconds instead of minutes.
WORKER_TUNING = {
    "PAYWORKER_RETRY_BACKOFF_BASE": "1",
    "PAYWORKER_RETRY_BACKOFF_MAX": "4",
    "PAYWORKER_PREREQUISITE_WAIT_SECONDS": "60",
    "PAYWORKER_SWEEP_SECONDS": "1",
}
CHARGES = [(1999, "usd"), (2500, "EUR"), (1000, "jpy"), (4999, "gbp"), (120000, "JPY")]

Expected = tuple[str, str | None]  # final status and error_code
OK: Expected = ("succeeded", None)


class Tok(NamedTuple):
    number: str  # published as a fresh token of this card number


class CardOf(NamedTuple):
    tag: str  # published as the card id in the result of the event with this tag


Step = tuple[str, str, int, Expected, dict[str, Any]]  # type, tag, user index, expected, kwargs


class Phase(NamedTuple):
    title: str
    steps: list[Step]
    until_waiting: bool = False  # wait only until the events wait for a prerequisite


def plan(n: int) -> list[Phase]:
    """The batch for users 0…n-1: user 0 adds a card twice, user 1 switches and removes
    cards, the last user is charged before it is registered, the others are charged."""
    late, charge, card = n - 1, "charge_requested", "card_token_received"
    number = {i: (DECLINES, MASTERCARD)[i % 2] for i in range(2, late)} | {
        0: VISA, 1: VISA, late: DEBIT,
    }  # fmt: skip
    regular: list[Step] = [
        (charge, f"charge{i}-{k}", i, ("failed", "card_declined") if number[i] == DECLINES else OK,
         {"amount": amount, "currency": currency} | ({"card_id": CardOf(f"card{i}")} if k else {}))
        for i in range(2, late)
        for k, (amount, currency) in enumerate([CHARGES[i % 5], CHARGES[(i + 2) % 5]])
    ]  # fmt: skip
    twice: Step = (charge, "charge0", 0, OK, {"amount": 1999, "currency": "usd"})
    return [
        Phase("the last user is charged before it is registered: the charge waits",
              [(charge, "late-charge", late, OK, {"amount": 2500, "currency": "eur"})], True),
        Phase("registrations and first cards; a charge with amount 12.5", [
            *[("user_registered", f"reg{i}", i, OK,
               {"email": f"user{i}@example.com", "name": f"User {i}"}) for i in range(n)],
            *[(card, f"card{i}", i, OK, {"token": Tok(number[i])}) for i in range(n)],
            (charge, "invalid", 0, ("failed", "invalid_message"),
             {"amount": 12.5, "currency": "usd"}),
        ]),
        Phase("user 0 adds the same card again; user 1 adds a second card as default; charges,"
              " one of them published twice, one below the minimum", [
            (card, "card0-again", 0, OK, {"token": Tok(VISA)}),
            (card, "card1-second", 1, OK, {"token": Tok(MASTERCARD), "make_default": True}),
            twice, twice,
            (charge, "too-small", 0, ("failed", "amount_too_small"),
             {"amount": 20, "currency": "usd"}),
            *regular,
        ]),
        Phase("user 1 makes the first card the default again",
              [("default_card_changed", "default1", 1, OK, {"card_id": CardOf("card1")})]),
        Phase("user 1 removes the second card and is charged on the default", [
            ("card_removed", "remove1", 1, OK, {"card_id": CardOf("card1-second")}),
            (charge, "charge1", 1, OK, {"amount": 3000, "currency": "eur"}),
        ]),
    ]  # fmt: skip


def _start_fake(console: Console) -> FakeStripe | None:
    try:
        from stripe_fake import FakeStripe, FakeStripeUnavailable
    except ImportError:  # an install without the package (the Docker image leaves it out)
        reason = "the stripe_fake package is not installed: install payworker[fake]"
    else:
        try:
            return FakeStripe.start()
        except FakeStripeUnavailable as exc:  # the `fake` extra is missing
            reason = str(exc)
        except (RuntimeError, OSError) as exc:  # it did not start
            reason = f"it did not start: {exc}"
    console.print(
        f"[red]STRIPE_API_KEY is unset and the local Stripe fake is unavailable ({reason}).[/]"
        "\nInstall payworker[fake] (`make demo` does), or set a Stripe test key."
    )
    return None


def _rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(sql), params).mappings()]


class Batch:
    """Publishes the plan as any upstream app would, with a plain Celery app."""

    def __init__(
        self, run: str, app: Celery, queue: str, engine: Engine, tokens: Callable[[str], str]
    ) -> None:
        self.run, self.app, self.queue, self.engine, self.tokens = run, app, queue, engine, tokens
        self.expected: dict[str, Expected] = {}
        self.sent = 0

    def send(self, users: list[str], step: Step) -> None:
        type_, tag, user, expect, kwargs = step
        body = {"event_id": self.id(tag), "user_id": users[user]}
        for name, value in kwargs.items():
            if isinstance(value, Tok):
                value = self.tokens(value.number)
            elif isinstance(value, CardOf):
                value = (self.event(value.tag)["result"] or {}).get("card_id")
            body[name] = value
        self.app.send_task(f"payments.{type_}", kwargs=body, queue=self.queue)
        self.expected[self.id(tag)] = expect
        self.sent += 1

    def id(self, tag: str) -> str:
        return f"{self.run}-{tag}"

    def events(self) -> dict[str, dict[str, Any]]:
        sql = "SELECT * FROM payment_events WHERE event_id = ANY(:ids)"
        return {row["event_id"]: row for row in _rows(self.engine, sql, ids=list(self.expected))}

    def event(self, tag: str) -> dict[str, Any]:
        return self.events().get(self.id(tag), {})

    def wait(self, progress: Progress, bar: TaskID, deadline: float, phase: Phase) -> bool:
        """Wait until every event sent is final (or the phase's events wait); False on timeout."""
        while time.monotonic() < deadline:
            events = self.events()
            done = sum(e["status"] in FINAL for e in events.values())
            progress.update(bar, total=len(self.expected), completed=done)
            if phase.until_waiting and all(self.event(s[1]).get("last_error") for s in phase.steps):
                return True
            if done == len(self.expected):
                return True
            time.sleep(0.2)
        return False


@contextmanager
def _worker(app: Celery, env: dict[str, str], node: str, log: Path) -> Iterator[bool]:
    """One worker subprocess on the run's queue; yields whether it answered a ping in time."""
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", env["PAYWORKER_QUEUE"],
            "--concurrency", "4", "--loglevel", "WARNING", "-E", "--beat", "--hostname", node,
            "--without-mingle", "--without-gossip"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, ready = time.monotonic() + 45, False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            ready = bool(app.control.ping(destination=[node], timeout=0.5))
        yield ready
    finally:
        proc.terminate()  # warm shutdown: running tasks finish, unacked messages go back
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drop_queue(app: Celery, queue: str) -> None:
    """Delete the run's queue and its binding: every run leaves Redis as it found it."""
    with app.connection_for_write() as conn:
        bound = app.amqp.queues[queue](conn.default_channel)
        bound.declare()  # kombu deletes only the bindings this channel has declared
        bound.delete()


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column == "amount" else "left")
    for row in rows:
        table.add_row(*row)
    return table


CHARGES_SQL = """
    SELECT e.event_id, e.user_id, e.status, e.payload, c.amount, c.currency,
           c.status AS charge, coalesce(c.decline_code, c.failure_code, e.error_code) AS code
    FROM payment_events e LEFT JOIN charges c USING (event_id)
    WHERE e.type = 'charge_requested' AND e.event_id LIKE :like ORDER BY e.created_at"""


def _charge_row(row: dict[str, Any], short: int) -> list[str]:
    # A message rejected before charging has no charges row: show what its payload said.
    amount = row["amount"] if row["amount"] is not None else row["payload"].get("amount")
    currency = str(row["currency"] or row["payload"].get("currency"))
    # Minor units become a decimal with integer arithmetic (1000 JPY stays 1000, 1999 USD is 19.99).
    shown = format_amount(amount, currency) if type(amount) is int else f"{amount!r} {currency}"
    return [row["event_id"][short:], row["user_id"][short:], shown.upper(),
            row["status"], row["charge"] or "-", row["code"] or ""]  # fmt: skip


def _card_row(card: dict[str, Any], short: int) -> list[str]:
    return [card["user_id"][short:], card["last4"], card["brand"], card["fingerprint"][:8],
            "yes" if card["is_default"] else "", "yes" if card["removed_at"] else ""]  # fmt: skip


def _print_tables(b: Batch, console: Console) -> list[dict[str, Any]]:
    """The three summary tables, read from Postgres; returns the run's cards rows."""
    like, short = f"{b.run}-%", len(b.run) + 1
    counts = Counter((e["type"], e["status"]) for e in b.events().values())
    types = sorted({type_ for type_, _ in counts})
    rows = ([t, *(str(counts[t, s] or "-") for s in STATUSES)] for t in types)
    console.print(_table("payment_events by type and status", ["type", *STATUSES], rows))
    charges = [_charge_row(row, short) for row in _rows(b.engine, CHARGES_SQL, like=like)]
    columns = ["event", "user", "amount", "event", "charge", "error/decline"]
    console.print(_table("charge_requested events and their charges rows", columns, charges))
    sql = "SELECT * FROM cards WHERE user_id LIKE :like ORDER BY user_id, created_at"
    cards = _rows(b.engine, sql, like=like)
    columns = ["user", "last4", "brand", "fingerprint", "default", "removed"]
    console.print(_table("cards", columns, (_card_row(card, short) for card in cards)))
    return cards


def _checks(
    b: Batch, cards: list[dict[str, Any]], fake: FakeStripe | None
) -> list[tuple[str, bool]]:
    """What the batch must show: every expected outcome, and the Stripe side agreeing."""
    events = b.events()
    wrong = []
    for event_id, want in b.expected.items():
        got = events.get(event_id, {})
        if (got.get("status"), got.get("error_code")) != want:
            wrong.append(f"{event_id}: {got.get('status')}/{got.get('error_code')}, not {want}")
    card_id = {tag: (b.event(tag).get("result") or {}).get("card_id") for tag in
               ("card0", "card0-again", "card1", "card1-second")}  # fmt: skip
    dup, late = b.event("card0-again").get("result") or {}, b.event("late-charge")
    user1 = {c["stripe_card_id"]: c for c in cards if c["user_id"] == b.id("user1")}
    checks = [
        (f"{b.sent} messages, {len(events)} events, each with its expected outcome"
         + "".join(f"\n       {line}" for line in wrong), not wrong),
        ("user 0's second token of the same card: result.duplicate and the first card's id",
         dup.get("duplicate") is True and card_id["card0-again"] == card_id["card0"]),
        (f"the charge sent before its user's registration waited ({late.get('attempts')}"
         " attempts), then succeeded", late.get("status") == "succeeded" and late["attempts"] > 1),
        ("user 1: the first card is the default again, the second one is removed",
         user1.get(str(card_id["card1"]), {}).get("is_default") is True
         and user1.get(str(card_id["card1-second"]), {}).get("removed_at") is not None),
    ]  # fmt: skip
    if fake is None:
        return [*checks, ("real Stripe: compare with the dashboard's test-mode payments", True)]
    like = f"{b.run}-%"
    customers = _rows(b.engine, "SELECT * FROM customers WHERE user_id LIKE :like", like=like)
    on_stripe = [c for cu in customers for c in fake.list_charges(cu["stripe_customer_id"])]
    paid = sum(c["status"] == "succeeded" for c in on_stripe)
    sql = "SELECT * FROM charges WHERE status = 'succeeded' AND event_id LIKE :like"
    rows = len(_rows(b.engine, sql, like=like))
    twice = sum(c["metadata"].get("event_id") == b.id("charge0") for c in on_stripe)
    return [
        *checks,
        (f"the Stripe fake holds {paid} succeeded charges, Postgres {rows}", paid == rows),
        (f"the charge event published twice made {twice} charge on Stripe", twice == 1),
    ]


def run_demo(users: int, console: Console) -> int:
    """Run the demo batch through a real worker; 0 when every outcome is the expected one."""
    if users < 4:
        console.print("[red]--users must be at least 4: the demo gives users distinct roles[/]")
        return 2
    settings = get_settings()
    key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    if key is not None and not key.startswith(("sk_test_", "rk_test_")):
        console.print("[red]The demo creates charges: it runs only with a test key (sk_test_…).[/]")
        return 2
    run = f"demo-{uuid.uuid4().hex[:6]}"  # no '_' or '%': it is used in LIKE patterns
    queue = f"payments_{run.replace('-', '_')}"  # a queue of its own: no leftovers mix in
    env = {**os.environ, **WORKER_TUNING, "PAYWORKER_QUEUE": queue}
    with ExitStack() as stack:
        fake = None
        if key is None:
            fake = _start_fake(console)
            if fake is None:
                return 2
            stack.callback(fake.stop)
            env.update(STRIPE_API_KEY="sk_test_demo", STRIPE_API_BASE=fake.url)
            console.print(f"Stripe: the local fake at {fake.url} (STRIPE_API_KEY is unset)")
        else:
            where = settings.stripe_api_base or "api.stripe.com"
            console.print(f"Stripe: STRIPE_API_KEY from the environment, test mode, at {where}")
        try:
            migrate(settings.database_url)
        except OperationalError as exc:
            console.print(f"[red]Postgres unreachable: {exc.orig}[/]\nStart it: `make services`")
            return 1
        app = Celery("upstream-demo", broker=settings.broker_url)
        if not settings.is_redis:
            # RabbitMQ: declare the queue exactly as the worker does (a quorum queue).
            app.conf.task_create_missing_queue_type = "quorum"
            app.conf.broker_transport_options = {"confirm_publish": True}
        stack.callback(app.close)
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=2)
        except KombuOperationalError as exc:
            console.print(f"[red]broker unreachable: {exc}[/]\nStart it: `make services`")
            return 1
        stack.callback(_drop_queue, app, queue)  # runs after the worker stopped and gave back
        node = f"{run}@{socket.gethostname()}"
        log = Path(tempfile.mkstemp(prefix=f"payworker-{run}-", suffix=".log")[1])
        console.print(f"run {run}: worker {node} on queue {queue}, log {log}")
        if not stack.enter_context(_worker(app, env, node, log)):
            console.print(f"[red]the worker did not come up; its log:[/]\n{log.read_text()}")
            return 1
        tokens = fake.create_card_token if fake else STRIPE_TEST_TOKENS.__getitem__
        batch = Batch(run, app, queue, get_engine(settings.database_url), tokens)
        names = [f"{run}-user{i}" for i in range(users)]
        deadline = time.monotonic() + 90 + users  # a bigger batch gets a little longer
        done = True
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("events final", total=None)
            for number, phase in enumerate(plan(users), start=1):
                progress.console.print(f"{number}. {phase.title}")
                for step in phase.steps:
                    batch.send(names, step)
                done = batch.wait(progress, bar, deadline, phase) and done
        if not done:
            console.print("[red]timed out: some events are not final[/]")
        checks = _checks(batch, _print_tables(batch, console), fake)
        for label, passed in checks:
            console.print(f"{'[green]ok  ' if passed else '[red]FAIL'}[/] {label}")
        ok = done and all(passed for _, passed in checks)
        if ok:
            log.unlink()
        else:
            console.print(f"worker log kept at {log}")
        return 0 if ok else 1
