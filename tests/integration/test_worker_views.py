"""What a worker shows of the tasks it holds, while it holds them: `celery inspect
active|reserved|scheduled` and Flower's worker page and API (built from the same inspect
replies) show card tokens masked, never in full, even when the upstream app sends
task-sent events with the raw kwargs. A Stripe fake that answers slowly keeps tasks active,
a countdown keeps one scheduled, and on Redis one whose countdown ran out while every thread
is busy waits reserved (a RabbitMQ quorum queue never lets a worker hold that many)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.conftest import ROOT, WorkerProcess, upstream_app
from tests.integration.test_flower import (
    PASSWORD,
    USER,
    VISA,
    FlowerProcess,
    flower_env,
    free_port,
    wait_until,
)

SLOW = 30.0  # seconds the fake takes to show the slow tokens: how long they stay active

pytestmark = pytest.mark.usefixtures("no_faults")


def hostname(worker: WorkerProcess) -> str:
    """The worker's node name (`%h` is this machine's hostname)."""
    given = worker.proc.args[worker.proc.args.index("--hostname") + 1]
    return given.replace("%h", socket.gethostname())


def celery_inspect(worker: WorkerProcess, what: str) -> list[dict[str, Any]]:
    """`celery -A worker inspect WHAT` as an operator runs it, for this worker only."""
    node = hostname(worker)
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "inspect", what, "--json",
         "--destination", node, "--timeout", "5"],
        cwd=ROOT, env=worker.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    replies: dict[str, list[dict[str, Any]]] = json.loads(done.stdout)
    return replies[node]


@pytest.fixture(scope="module")
def watched(start_worker, tmp_path_factory) -> Iterator[tuple[WorkerProcess, FlowerProcess]]:
    """Two task threads whose Stripe calls may take SLOW seconds, and a Flower on them."""
    worker = start_worker(concurrency=2, PAYWORKER_STRIPE_TIMEOUT="40",
                          PAYWORKER_LEASE_SECONDS="60")
    state = tmp_path_factory.mktemp("flower-views")
    env = flower_env(worker.env, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}",
                     PAYWORKER_FLOWER_PORT=str(free_port()),
                     PAYWORKER_FLOWER_DB=str(state / "flower.db"))
    flower = FlowerProcess(env, state / "flower.log")
    try:
        flower.wait_for_worker(worker)
        yield worker, flower
    finally:
        flower.stop()


@pytest.fixture
def careless(broker_url: str) -> Iterator[Celery]:
    """An upstream app that sends task-sent events, with the raw kwargs in them."""
    app = upstream_app(broker_url, "careless")
    app.conf.task_send_sent_event = True
    yield app
    app.close()


def test_inspect_and_flower_show_held_tasks_with_tokens_masked(
    watched, careless, wait_for, stripe_fake, ids, broker_name
):
    # Given a worker with two task threads, Flower watching it, and a registered user
    worker, flower = watched
    q, user, reg = worker.queue, ids("user"), ids("reg")
    careless.send_task("payments.user_registered", queue=q,
                       kwargs={"event_id": reg, "user_id": user, "email": "v@example.com"})
    assert wait_for(reg)[reg]["status"] == "succeeded"
    names = ("scheduled", "due_soon", "slow1", "slow2")
    tokens = {name: stripe_fake.create_card_token(VISA) for name in names}
    slow = "|".join(tokens[name] for name in names if name != "scheduled")
    stripe_fake.inject(method="GET", path=f"^/v1/tokens/({slow})$", delay=SLOW, name="slow")

    def send(name: str, countdown: float | None = None) -> str:
        kwargs = {"event_id": ids(name), "user_id": user, "token": tokens[name]}
        return str(careless.send_task("payments.card_token_received", queue=q, kwargs=kwargs,
                                      countdown=countdown).id)

    # When the upstream app publishes one card due in a minute, one due in 4 s, then two
    # whose token the fake shows only after SLOW seconds
    task_ids = {"scheduled": send("scheduled", countdown=60),
                "due_soon": send("due_soon", countdown=4)}
    time.sleep(1)
    task_ids.update(slow1=send("slow1"), slow2=send("slow2"))
    if broker_name == "redis":
        # both threads busy when the 4 s card falls due: it waits in the pool, reserved
        expected = {"active": {"slow1", "slow2"}, "reserved": {"due_soon"},
                    "scheduled": {"scheduled"}}
    else:
        # A quorum queue's per-consumer prefetch cannot grow for messages with an ETA, so
        # the two countdown cards hold both slots and no card ever waits reserved: the 4 s
        # one runs when due, and the other two stay on the broker.
        expected = {"active": {"due_soon"}, "reserved": set(), "scheduled": {"scheduled"}}
    node = hostname(worker)
    inspect = careless.control.inspect(destination=[node], timeout=3)

    def held() -> bool:
        now = {
            "active": {t["id"] for t in (inspect.active() or {}).get(node, [])},
            "reserved": {t["id"] for t in (inspect.reserved() or {}).get(node, [])},
            "scheduled": {t["request"]["id"] for t in (inspect.scheduled() or {}).get(node, [])},
        }
        return all({task_ids[n] for n in wanted} <= now[what] for what, wanted in expected.items())

    # Then, while the worker holds them
    wait_until(held, 20, lambda: f"tasks never all held:\n{worker.log()[-3000:]}")
    views: dict[str, str] = {}
    for what in expected:
        views[f"celery inspect {what}"] = json.dumps(celery_inspect(worker, what),
                                                     ensure_ascii=False)
    status, api = flower.get(f"/api/workers?refresh=1&workername={node}")
    assert status == 200, api
    views["flower /api/workers"] = json.dumps(json.loads(api), ensure_ascii=False)
    status, page = flower.get(f"/worker/{node}")
    assert status == 200, page
    views["flower worker page"] = page
    views["flower /api/tasks"] = json.dumps(flower.api("/api/tasks?limit=1000"),
                                            ensure_ascii=False)
    for name, task_id in task_ids.items():
        info = flower.task(task_id)
        views[f"flower /api/task/info ({name})"] = json.dumps(info, ensure_ascii=False)
        views[f"flower task page ({name})"] = flower.get(f"/task/{task_id}")[1]
    assert held(), "a task left its state while the views were read: make SLOW longer"

    # no view has a token in full
    for view, text in views.items():
        for token in tokens.values():
            assert token not in text, f"{view} shows {token}"
    # and every view of a held task shows its token masked
    held_names = set().union(*expected.values())
    for what, wanted in expected.items():
        for name in wanted:
            masked = f"tok_…{tokens[name][-4:]}"
            for view in (f"celery inspect {what}", "flower /api/workers",
                         "flower worker page", f"flower /api/task/info ({name})"):
                assert masked in views[view], f"{view}: {name} not shown masked"
    assert held_names
    api_workers = json.loads(views["flower /api/workers"])[node]
    for what, wanted in expected.items():
        listed = {t["request"]["id"] if what == "scheduled" else t["id"]
                  for t in api_workers[what]}
        assert {task_ids[n] for n in wanted} <= listed, (what, api_workers[what])
