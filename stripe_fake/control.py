"""Start/drive the Stripe fake from tests or the demo. Stdlib only.

with FakeStripe.start() as fake:
    client = stripe.StripeClient("sk_test_x",
                                 base_addresses={"api": fake.url})
    fake.inject(method="POST", path="^/v1/charges$", status=500,
                when="after", times=1)
    ...
    assert fake.count(method="POST", path="/v1/charges") == 2
"""

from __future__ import annotations

import importlib.util
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from .control_http import TEST_KEY, FakeStripeError
from .control_plane import ControlPlane
from .control_stripe import StripeObjects

__all__ = [
    "IMPORT_ROOT",
    "INSTALL_HINT",
    "SERVER_REQUIREMENTS",
    "TEST_KEY",
    "FakeStripe",
    "FakeStripeError",
    "FakeStripeUnavailable",
    "missing_requirements",
]

# The directory this package was imported from: the server subprocess imports the same
# copy (a source checkout, a worktree on PYTHONPATH, or site-packages).
IMPORT_ROOT = Path(__file__).resolve().parents[1]
_START_TIMEOUT = 15.0
# The server's third-party needs: payworker's `fake` extra. localstripe is
# GPL-3.0-or-later, so neither is ever a runtime dependency of payworker; this
# controller itself is stdlib only and imports without them.
SERVER_REQUIREMENTS = ("localstripe", "aiohttp")
INSTALL_HINT = "install payworker[fake] (pip install 'payworker[fake]')"


class FakeStripeUnavailable(RuntimeError):
    """The fake server cannot run here: its requirements are not installed."""


def missing_requirements() -> list[str]:
    """The server's requirements that this interpreter cannot import."""
    return [name for name in SERVER_REQUIREMENTS if importlib.util.find_spec(name) is None]


class FakeStripe(ControlPlane, StripeObjects):
    """Controller for one fake server; owns the subprocess if it started it.

    The process lifecycle lives here; the ``/_fake/`` calls in
    :class:`~stripe_fake.control_plane.ControlPlane`, the Stripe-object helpers in
    :class:`~stripe_fake.control_stripe.StripeObjects`, HTTP in
    :mod:`stripe_fake.control_http`.
    """

    def __init__(self, url: str, process: subprocess.Popen[str] | None = None) -> None:
        super().__init__(url)
        self._process = process

    @classmethod
    def start(
        cls, port: int = 0, host: str = "127.0.0.1", timeout: float = _START_TIMEOUT
    ) -> FakeStripe:
        """Start a server subprocess (port 0: a free one) and wait until it answers.

        Raises:
            FakeStripeUnavailable: localstripe or aiohttp is not installed.
        """
        missing = missing_requirements()
        if missing:
            raise FakeStripeUnavailable(
                f"the Stripe fake needs {' and '.join(missing)}: {INSTALL_HINT}"
            )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(IMPORT_ROOT), env.get("PYTHONPATH")) if p
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "stripe_fake", "--port", str(port), "--host", host],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()

        def drain() -> None:  # keep reading so the pipe can never fill up
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        try:
            url = cls._await_banner(proc, lines, deadline)
            fake = cls(url, proc)
            fake._await_ready(deadline)
        except BaseException:
            _terminate(proc)
            raise
        return fake

    @staticmethod
    def _await_banner(proc: subprocess.Popen[str], lines: queue.Queue[str], deadline: float) -> str:
        prefix = "stripe fake listening on "
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"stripe fake exited with code {proc.returncode}")
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        raise TimeoutError("stripe fake did not start in time")

    def _await_ready(self, deadline: float) -> None:
        while True:
            try:
                self._request("GET", "/_fake/health")
                return
            except (OSError, FakeStripeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @classmethod
    def attach(cls, url: str) -> FakeStripe:
        """A controller for a server someone else runs (never stopped by us)."""
        return cls(url)

    def stop(self) -> None:
        if self._process is not None:
            _terminate(self._process)
            self._process = None

    def __enter__(self) -> FakeStripe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
