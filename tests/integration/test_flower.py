"""`payworker flower` against a real worker: basic auth, our tasks visible through Flower's
HTTP API with card tokens masked (from the worker's task-received event; the arguments of
publishers' task-sent events are dropped), history kept across a restart, and no start
without credentials. tests/integration/test_worker_views.py checks the worker pages and
`celery inspect`."""

from __future__ import annotations

import base64
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from tests.conftest import ROOT, WorkerProcess, upstream_app

VISA = "4242424242424242"
PAYWORKER = os.path.join(os.path.dirname(sys.executable), "payworker")
USER, PASSWORD = "ops", f"pw-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_env(worker_env: dict[str, str], **overrides: str) -> dict[str, str]:
    """The worker's environment without any FLOWER_* of the developer's shell."""
    env = {k: v for k, v in worker_env.items() if not k.startswith("FLOWER_")}
    env.update(overrides)
    return env


class FlowerProcess:
    """`payworker flower` as a subprocess, driven over HTTP."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["PAYWORKER_FLOWER_PORT"])
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen([PAYWORKER, "flower"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.get("/healthcheck", auth=None)[0] == 200, 20,
                   lambda: f"Flower did not answer:\n{self.log()}", self.proc)

    def get(self, path: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except OSError:
            return 0, ""

    def api(self, path: str) -> Any:
        status, body = self.get(path)
        return json.loads(body) if status == 200 else None

    def wait_for_worker(self, worker: WorkerProcess) -> None:
        """Until Flower has seen the worker's heartbeat: its event stream is live."""
        hostname = worker.proc.args[worker.proc.args.index("--hostname") + 1]
        prefix = f'flower_worker_online{{worker="{hostname.split("@")[0]}@'

        def online() -> bool:
            _, metrics = self.get("/metrics", auth=None)
            return any(line.startswith(prefix) and line.endswith(" 1.0")
                       for line in metrics.splitlines())

        wait_until(online, 20, lambda: f"Flower never saw the worker:\n{self.log()}", self.proc)

    def task(self, task_id: str, state: str | None = None, timeout: float = 15) -> dict[str, Any]:
        """The task as Flower's API shows it, once Flower knows it (in `state`)."""
        def known() -> dict[str, Any] | None:
            info = self.api(f"/api/task/info/{task_id}")
            return info if info and (state is None or info.get("state") == state) else None

        found: dict[str, Any] = wait_until(
            known, timeout, lambda: f"Flower never showed task {task_id} in {state}", self.proc)
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM: Flower saves its state and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_until(predicate: Callable[[], Any], timeout: float, why: Callable[[], str],
               proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}); " + why())
        time.sleep(0.2)
    raise AssertionError(why())


@pytest.fixture(scope="module")
def monitored(start_worker, tmp_path_factory) -> Iterator[tuple[WorkerProcess, FlowerProcess]]:
    """A worker of its own and a Flower that has seen it."""
    worker = start_worker(concurrency=2)
    state = tmp_path_factory.mktemp("flower")
    env = flower_env(worker.env, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}",
                     PAYWORKER_FLOWER_PORT=str(free_port()),
                     PAYWORKER_FLOWER_DB=str(state / "flower.db"))
    flower = FlowerProcess(env, state / "flower.log")
    try:
        flower.wait_for_worker(worker)
        yield worker, flower
    finally:
        flower.stop()


def test_flower_api_needs_basic_auth_but_its_healthcheck_does_not(monitored):
    _, flower = monitored
    assert flower.get("/api/tasks", auth=None)[0] == 401
    assert flower.get("/api/tasks", auth=(USER, "wrong"))[0] == 401
    assert flower.get("/api/workers", auth=None)[0] == 401
    assert flower.get("/api/tasks")[0] == 200
    assert flower.get("/healthcheck", auth=None) == (200, "OK")
    # and it is read-only: Flower's API cannot publish a payment task
    request = urllib.request.Request(
        f"http://127.0.0.1:{flower.port}/api/task/send-task/payments.charge_requested",
        data=b"{}", method="POST",
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{USER}:{PASSWORD}".encode()).decode()})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403


def test_our_tasks_show_in_flower_with_the_card_token_masked(
    monitored, upstream, wait_for, stripe_fake, ids
):
    # Given a worker and Flower watching it
    worker, flower = monitored
    user, reg, tok = ids("user"), ids("reg"), ids("tok")
    token = stripe_fake.create_card_token(VISA)
    # When an upstream app publishes a registration and a raw card token
    registration = upstream.send_task(
        "payments.user_registered", queue=worker.queue,
        kwargs={"event_id": reg, "user_id": user, "email": "f@example.com"})
    card = upstream.send_task(
        "payments.card_token_received", queue=worker.queue,
        kwargs={"event_id": tok, "user_id": user, "token": token})
    rows = wait_for(reg, tok)
    assert rows[tok]["status"] == "succeeded", rows[tok]
    # Then Flower lists both tasks as succeeded
    info = flower.task(card.id, state="SUCCESS")
    assert flower.task(registration.id, state="SUCCESS")["name"] == "payments.user_registered"
    listed = flower.api("/api/tasks?taskname=payments.card_token_received&limit=1000")
    assert card.id in listed and listed[card.id]["state"] == "SUCCESS"
    # with the token masked in its arguments, and nowhere in the clear
    assert info["name"] == "payments.card_token_received" and info["worker"]
    assert f"tok_…{token[-4:]}" in info["kwargs"] and tok in info["kwargs"]
    everything = json.dumps(flower.api("/api/tasks?limit=1000"), ensure_ascii=False)
    assert token not in everything and token not in json.dumps(info, ensure_ascii=False)


def test_a_publishers_task_sent_event_shows_in_flower_without_its_arguments(
    monitored, stripe_fake, ids, broker_url
):
    # Given Flower, and a queue no worker consumes, so that Flower only gets the
    # publishers' task-sent events
    worker, flower = monitored
    queue = f"unconsumed_{uuid.uuid4().hex[:8]}"
    token, raw = stripe_fake.create_card_token(VISA), stripe_fake.create_card_token(VISA)
    body = json.dumps({"event_id": ids("tok"), "user_id": ids("user"), "token": token})
    env = {**worker.env, "PAYWORKER_QUEUE": queue}
    careless = upstream_app(broker_url, "careless")
    careless.conf.task_send_sent_event = True  # its task-sent events carry the raw kwargs
    try:
        # When an operator publishes a card token with `payworker publish`
        done = subprocess.run([PAYWORKER, "publish", "card_token_received", "--json", body],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.strip()
        # and an upstream app that sends task-sent events publishes another, unmasked
        sent = careless.send_task("payments.card_token_received", queue=queue, kwargs={
            "event_id": ids("raw"), "user_id": ids("user"), "token": raw})
        # Then Flower knows both sent tasks, without the arguments their publishers gave:
        # only a payworker worker's (masked) task-received event fills them in
        for task in (task_id, sent.id):
            info = flower.task(task)
            assert info["name"] == "payments.card_token_received"
            assert info["kwargs"] is None and info["args"] is None, info
        everything = json.dumps(flower.api("/api/tasks?limit=1000"), ensure_ascii=False)
        assert token not in everything and raw not in everything
        assert raw not in flower.get(f"/task/{sent.id}")[1]
    finally:
        careless.close()
        drop_queue(broker_url, queue)


def test_flower_keeps_its_history_across_a_restart(monitored, upstream, wait_for, ids,
                                                     tmp_path):
    # Given a Flower of its own with a state file, which has seen a task
    worker, _ = monitored
    db = tmp_path / "state" / "flower.db"
    env = flower_env(worker.env, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}",
                     PAYWORKER_FLOWER_PORT=str(free_port()), PAYWORKER_FLOWER_DB=str(db))
    first = FlowerProcess(env, tmp_path / "first.log")
    try:
        first.wait_for_worker(worker)
        reg = ids("reg")
        sent = upstream.send_task("payments.user_registered", queue=worker.queue, kwargs={
            "event_id": reg, "user_id": ids("user"), "email": "h@example.com"})
        wait_for(reg)
        first.task(sent.id, state="SUCCESS")
    finally:
        # When it is stopped (it saves its state) and started again
        first.stop()
    assert glob.glob(f"{db}*"), "no state file written"
    second = FlowerProcess(env, tmp_path / "second.log")
    try:
        # Then the task is still there, without any new event about it
        info = second.api(f"/api/task/info/{sent.id}")
        assert info and info["state"] == "SUCCESS", second.log()
    finally:
        second.stop()


@pytest.mark.parametrize("auth", [None, "justauser", "ops:"])
def test_flower_refuses_to_start_without_usable_basic_auth(database_url, broker_url, auth):
    # Given no FLOWER_BASIC_AUTH (or a malformed one)
    env = flower_env({**os.environ, "DATABASE_URL": database_url,
                      "CELERY_BROKER_URL": broker_url, "PYTHONPATH": str(ROOT),
                      "PAYWORKER_FLOWER_PORT": str(free_port())})
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    # When `payworker flower` is started
    done = subprocess.run([PAYWORKER, "flower"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    # Then it exits non-zero at once and says why, without echoing the value
    assert done.returncode == 2, done.stdout + done.stderr
    assert "FLOWER_BASIC_AUTH" in done.stderr
    if auth is None:
        assert "--unauthenticated" in done.stderr
    else:
        assert auth not in done.stderr.replace("FLOWER_BASIC_AUTH", "")


def drop_queue(broker_url: str, name: str) -> None:
    """Delete a queue `payworker publish` declared (quorum on RabbitMQ, a list on Redis)."""
    rabbit = broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))
    queue = (Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True,
                   queue_arguments={"x-queue-type": "quorum"}) if rabbit else Queue(name))
    with Connection(broker_url, connect_timeout=5) as conn:
        bound = queue(conn.default_channel)
        bound.declare()
        bound.delete()
        if rabbit:
            with suppress(Exception):
                bound.exchange.delete()
