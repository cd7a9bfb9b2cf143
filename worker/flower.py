"""`payworker flower`: the command line Flower is started with, and the checks before it.

Flower shows every payment task, so it runs with basic auth unless the operator opts out
explicitly, listens on loopback unless told otherwise, and keeps its task history in a file
so a restart does not wipe what operators were looking at. It starts read-only: its API can
publish any task (a charge, too) and shut workers down, and payworker's own commands
(`payworker replay`) are the way to act on an event.

It shows task arguments only as a payworker worker masked them: the arguments of a
publisher's `task-sent` event are dropped before Flower keeps the event."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.redact import redact, safe_repr
from core.settings import Settings

# The fields of a task event that carry the task's arguments (as reprs).
_ARGUMENTS = ("args", "kwargs")
_filter_installed = False


class FlowerRefused(RuntimeError):
    """Flower must not start with this configuration; the message says what to do."""


def check_basic_auth(value: str) -> None:
    """Check `user:password[,user2:password2]` without ever echoing the value.

    Raises:
        FlowerRefused: an entry lacks a user or a password.
    """
    for entry in value.split(","):
        user, colon, password = entry.partition(":")
        if not (user.strip() and colon and password):
            raise FlowerRefused(
                "FLOWER_BASIC_AUTH must be user:password (several: user1:pw1,user2:pw2;"
                " a password cannot contain a comma)"
            )


def state_file(settings: Settings) -> Path:
    """Where Flower keeps its history (dbm may add .dat/.dir/.bak to the name)."""
    return Path(settings.flower_db).expanduser()


def flower_argv(
    settings: Settings,
    *,
    unauthenticated: bool = False,
    allow_control: bool = False,
    extra: list[str] | None = None,
) -> list[str]:
    """The `celery flower` arguments; `extra` options come last and override ours.

    Raises:
        FlowerRefused: no FLOWER_BASIC_AUTH and no explicit `unauthenticated`, or a
            malformed FLOWER_BASIC_AUTH.
    """
    secret = settings.flower_basic_auth
    auth = secret.get_secret_value() if secret is not None else ""
    if auth:
        check_basic_auth(auth)
    elif not unauthenticated:
        raise FlowerRefused(
            "refusing to start Flower without authentication: set FLOWER_BASIC_AUTH=user:password"
            " (or pass --unauthenticated to run it open, e.g. behind an authenticating proxy)"
        )
    argv = [
        "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
        # Workers send task events (-E); Flower re-enables them on workers started later.
        "--enable_events=True",
        "--persistent=True",
        f"--db={state_file(settings)}",
        f"--state_save_interval={int(settings.flower_save_seconds * 1000)}",
        f"--read_only={not allow_control}",
    ]
    if auth:
        # An argument of this process, never of a child: it does not show in `ps`.
        argv.append(f"--basic_auth={auth}")
    return [*argv, *(extra or [])]


def masked_event(event: dict[str, Any]) -> dict[str, Any]:
    """A task event as Flower may keep it. A `task-sent` event comes from a publisher, and
    an upstream app's holds the raw kwargs (card token included): its arguments are
    dropped, also because a sent event that arrives after the worker's `task-received`
    would otherwise overwrite the worker's masked arguments in Flower's state. Every other
    event's arguments are masked once more, whoever sent them."""
    if event.get("type") == "task-sent":
        return {k: v for k, v in event.items() if k not in _ARGUMENTS}
    present = [k for k in _ARGUMENTS if event.get(k) is not None]
    if not present:
        return event
    masked = dict(event)
    for name in present:
        value = event[name]
        masked[name] = redact(value) if isinstance(value, str) else safe_repr(value)
    return masked


def install_event_filter() -> None:
    """Make the Flower of this process keep only `masked_event`s. Flower has no hook for
    it, so its event state's `event` method is wrapped (once per process)."""
    global _filter_installed
    if _filter_installed:
        return
    from flower.events import EventsState

    keep: Callable[[Any, dict[str, Any]], Any] = EventsState.event

    def event(state: Any, received: dict[str, Any]) -> Any:
        return keep(state, masked_event(received))

    EventsState.event = event
    _filter_installed = True
