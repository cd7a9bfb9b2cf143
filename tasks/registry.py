"""The Celery tasks of payworker, registered on an app the worker layer builds. Importing
this module registers nothing: `register_tasks` does, and hands every task the process's
resources."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from tasks.base import PaymentTask, deliver
from tasks.maintenance import REDRIVE_TASK, SWEEP_TASK, RedriveTask, SweepTask
from tasks.phases import Workflow
from tasks.resources import ProcessResources
from tasks.workflows import WORKFLOWS


def register_tasks(app: Celery, resources: ProcessResources) -> dict[str, Task]:
    """The payment tasks of the public contract (`payments.<message type>`), the re-drive
    and the sweep, registered on `app`; returns them by name."""
    tasks = {
        f"payments.{name}": _payment_task(app, resources, workflow)
        for name, workflow in WORKFLOWS.items()
    }

    def redrive(self: RedriveTask, /, **kwargs: Any) -> Any:
        return self.redrive(kwargs.get("event_id"))

    def sweep(self: SweepTask) -> Any:
        return self.sweep()

    tasks[REDRIVE_TASK] = app.task(
        name=REDRIVE_TASK, bind=True, base=RedriveTask, resources=resources, shared=False
    )(redrive)
    tasks[SWEEP_TASK] = app.task(
        name=SWEEP_TASK,
        bind=True,
        base=SweepTask,
        resources=resources,
        ignore_result=True,
        shared=False,
    )(sweep)
    return tasks


def _payment_task(app: Celery, resources: ProcessResources, workflow: Workflow[Any, Any]) -> Task:
    task: Task = app.task(
        name=f"payments.{workflow.message_type}",
        bind=True,
        base=PaymentTask,
        workflow=workflow,
        resources=resources,
        # Not shared: Celery would otherwise add these tasks, bound to this app's
        # resources, to every other app built in the process (the benchmark's, a test's).
        shared=False,
    )(deliver)
    return task
