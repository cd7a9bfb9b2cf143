"""`payworker flower`: the command line Flower is started with, and the checks before it.

Flower shows every payment task, so it runs with basic auth unless the operator opts out
explicitly, listens on loopback unless told otherwise, and keeps its task history in a file
so a restart does not wipe what operators were looking at. It starts read-only: its API can
publish any task (a charge, too) and shut workers down, and payworker's own commands
(`payworker replay`) are the way to act on an event."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings


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
