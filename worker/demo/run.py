"""The demo's run: Stripe (the local fake, or a test key), the migrations, one worker
subprocess on a queue of its own, the batch published phase by phase, and the wait for every
event to be final; then the report decides the exit code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from sqlalchemy.exc import OperationalError

from core.settings import get_settings
from db.migrate import migrate
from db.models import TERMINAL_STATUSES
from db.session import get_engine
from worker.demo.batch import (
    STRIPE_TEST_PAYMENT_METHODS,
    STRIPE_TEST_TOKENS,
    Authenticate,
    Batch,
    Phase,
    plan,
)
from worker.demo.customer import Customer, CustomerError
from worker.demo.report import checks, print_tables

if TYPE_CHECKING:
    from stripe_fake import FakeStripe

# Short waits, so the out-of-order charge and the authenticated one finish within seconds
# instead of minutes.
WORKER_TUNING = {
    "PAYWORKER_RETRY_BACKOFF_BASE": "1",
    "PAYWORKER_RETRY_BACKOFF_MAX": "4",
    "PAYWORKER_PREREQUISITE_WAIT_SECONDS": "60",
    "PAYWORKER_SWEEP_SECONDS": "1",
    # The charge waiting for its customer's 3-D Secure is read again every second.
    "PAYWORKER_ACTION_POLL_SECONDS": "1",
}


def _start_fake(console: Console) -> FakeStripe | None:
    """The local Stripe fake, started; None (said why) if it is not installed or failed."""
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
    console.print(  # escaped: "payworker[fake]" would read as rich markup
        "[red]STRIPE_API_KEY is unset and the local Stripe fake is unavailable:"
        f" {escape(reason)}[/]\nSet a Stripe test key, or run `make demo`, which installs the fake."
    )
    return None


@contextmanager
def _worker(app: Celery, env: dict[str, str], node: str, log: Path) -> Iterator[bool]:
    """One worker subprocess on the run's queue; yields whether it answered a ping in time."""
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", env["PAYWORKER_QUEUE"],
            "--concurrency", "4", "--loglevel", "WARNING", "-E", "--hostname", node,
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


def _upstream_app(broker_url: str, rabbitmq: bool) -> Celery:
    """A plain Celery app, as any upstream app publishes with."""
    app = Celery("upstream-demo", broker=broker_url)
    if rabbitmq:
        # RabbitMQ: declare the queue exactly as the worker does (a quorum queue).
        app.conf.task_create_missing_queue_type = "quorum"
        app.conf.broker_transport_options = {"confirm_publish": True}
    return app


def _wait(batch: Batch, progress: Progress, bar: TaskID, deadline: float, phase: Phase) -> bool:
    """Wait until the phase is settled (`Batch.settled`); False on timeout."""
    while time.monotonic() < deadline:
        done = sum(e["status"] in TERMINAL_STATUSES for e in batch.events().values())
        progress.update(bar, total=len(batch.expected), completed=done)
        if batch.settled(phase):
            return True
        time.sleep(0.2)
    return False


def _customer_returns(
    batch: Batch, customer: Customer, step: Authenticate, console: Console
) -> None:
    """The customer comes back on-session for the charge (what the app's stripe.js does with
    the event's result); what happened is kept in `batch.on_session`."""
    result = batch.event(step.charge).get("result") or {}
    try:
        batch.on_session = customer.authenticate(
            str(result.get("payment_intent_id")), str(batch.card_id(step.card))
        )
    except CustomerError as exc:
        batch.on_session = str(exc)
        return
    console.print(
        f"   the customer confirms {result.get('payment_intent_id')} on-session"
        f" ({batch.on_session.confirmed}), then authenticates ({batch.on_session.authenticated})"
    )


def _publish_and_wait(
    batch: Batch, users: int, customer: Customer | None, console: Console
) -> bool:
    """Publish the plan phase by phase, each once the previous one is settled; False if the
    run's deadline passed first."""
    names = [f"{batch.run}-user{i}" for i in range(users)]
    deadline = time.monotonic() + 90 + users  # a bigger batch gets a little longer
    done = True
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("events final", total=None)
        for number, phase in enumerate(plan(users, customer is not None), start=1):
            progress.console.print(f"{number}. {phase.title}")
            if phase.authenticate and customer is not None:
                _customer_returns(batch, customer, phase.authenticate, progress.console)
            for step in phase.steps:
                batch.send(names, step)
            done = _wait(batch, progress, bar, deadline, phase) and done
    return done


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
    # The demo shows the default path, PaymentIntents, whatever the environment chose.
    env = {**os.environ, **WORKER_TUNING, "PAYWORKER_QUEUE": queue,
           "PAYWORKER_CHARGE_API": "payment_intents"}  # fmt: skip
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
        app = _upstream_app(settings.broker_url, rabbitmq=not settings.is_redis)
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
        customer = Customer(fake, env["STRIPE_API_KEY"]) if fake else None
        batch = Batch(
            run, app, queue, get_engine(settings.database_url),
            tokens=fake.create_card_token if fake else STRIPE_TEST_TOKENS.__getitem__,
            payment_methods=(customer.payment_method if customer
                             else STRIPE_TEST_PAYMENT_METHODS.__getitem__),
        )  # fmt: skip
        done = _publish_and_wait(batch, users, customer, console)
        if not done:
            console.print("[red]timed out: some events are not final[/]")
        results = checks(batch, print_tables(batch, console), fake)
        for label, passed in results:
            mark = "[yellow]skip" if passed is None else "[green]ok  " if passed else "[red]FAIL"
            console.print(f"{mark}[/] {label}")
        ok = done and all(passed is not False for _, passed in results)
        if ok:
            log.unlink()
        else:
            console.print(f"worker log kept at {log}")
        return 0 if ok else 1
