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
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

# The directory this package was imported from: the server subprocess imports the same
# copy (a source checkout, a worktree on PYTHONPATH, or site-packages).
IMPORT_ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = "sk_test_fake"
_START_TIMEOUT = 15.0
# The server's third-party needs: payworker's `fake` extra. localstripe is
# GPL-3.0-or-later, so neither is ever a runtime dependency of payworker; this
# controller itself is stdlib only and imports without them.
SERVER_REQUIREMENTS = ("localstripe", "aiohttp")
INSTALL_HINT = "install payworker[fake] (pip install 'payworker[fake]')"


class FakeStripeError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class FakeStripeUnavailable(RuntimeError):
    """The fake server cannot run here: its requirements are not installed."""


def missing_requirements() -> list[str]:
    """The server's requirements that this interpreter cannot import."""
    return [name for name in SERVER_REQUIREMENTS if importlib.util.find_spec(name) is None]


class FakeStripe:
    """Controller for one fake server; owns the subprocess if it started it."""

    def __init__(self, url: str, process: subprocess.Popen[str] | None = None) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self._process = process

    # ---- lifecycle -------------------------------------------------------

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

    # ---- control plane ---------------------------------------------------

    def reset(self) -> None:
        self._request("POST", "/_fake/reset")

    def requests(
        self, method: str | None = None, path: str | None = None, path_prefix: str | None = None
    ) -> list[dict[str, Any]]:
        query = {
            k: v for k, v in (("method", method), ("path", path), ("path_prefix", path_prefix)) if v
        }
        result: list[dict[str, Any]] = self._request("GET", "/_fake/requests", query=query)
        return result

    def count(
        self, method: str | None = None, path: str | None = None, path_prefix: str | None = None
    ) -> int:
        return len(self.requests(method, path, path_prefix))

    def clear_requests(self) -> None:
        self._request("DELETE", "/_fake/requests")

    def inject(
        self,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        delay: float = 0.0,
        when: str = "before",
        times: int | None = None,
        probability: float = 1.0,
        headers: dict[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        """Add a fault rule; `path` is a regex (re.search). Returns its id."""
        spec = {
            "method": method,
            "path": path,
            "status": status,
            "delay": delay,
            "when": when,
            "times": times,
            "probability": probability,
            "headers": headers or {},
            "name": name,
        }
        return str(self._request("POST", "/_fake/faults", json_body=spec)["id"])

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/_fake/faults")
        return result

    def clear_faults(self) -> None:
        self._request("DELETE", "/_fake/faults")

    def authenticate_payment_intent(self, pi_id: str, success: bool = True) -> dict[str, Any]:
        """Play the customer completing (or failing) 3-D Secure for a
        PaymentIntent in requires_action; returns the PaymentIntent."""
        path = f"/_fake/payment_intents/{_q(pi_id)}/authenticate"
        result: dict[str, Any] = self._request("POST", path, json_body={"success": success})
        return result

    def authenticate_setup_intent(self, si_id: str, success: bool = True) -> dict[str, Any]:
        """Likewise for a SetupIntent in requires_action."""
        path = f"/_fake/setup_intents/{_q(si_id)}/authenticate"
        result: dict[str, Any] = self._request("POST", path, json_body={"success": success})
        return result

    # ---- direct Stripe reads (not logged, no faults) ---------------------

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        customer: dict[str, Any] = self._stripe("GET", f"/v1/customers/{_q(customer_id)}")
        return customer

    def list_customers(self) -> list[dict[str, Any]]:
        return self._list_all("/v1/customers", {})

    def list_charges(self, customer_id: str) -> list[dict[str, Any]]:
        return self._list_all("/v1/charges", {"customer": customer_id})

    def get_payment_intent(self, pi_id: str) -> dict[str, Any]:
        intent: dict[str, Any] = self._stripe("GET", f"/v1/payment_intents/{_q(pi_id)}")
        return intent

    def list_payment_intents(self, customer_id: str) -> list[dict[str, Any]]:
        return self._list_all("/v1/payment_intents", {"customer": customer_id})

    def list_payment_methods(self, customer_id: str) -> list[dict[str, Any]]:
        """The customer's card PaymentMethods (legacy card sources included)."""
        return self._list_all(f"/v1/customers/{_q(customer_id)}/payment_methods", {"type": "card"})

    def list_refunds(
        self, payment_intent: str | None = None, charge: str | None = None
    ) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("payment_intent", payment_intent), ("charge", charge)) if v}
        return self._list_all("/v1/refunds", query)

    def get_payment_method(self, pm_id: str) -> dict[str, Any]:
        method: dict[str, Any] = self._stripe("GET", f"/v1/payment_methods/{_q(pm_id)}")
        return method

    def create_payment_method(self, number: str = "4242424242424242") -> str:
        """A card PaymentMethod, as stripe.js's createPaymentMethod makes one."""
        form = {"type": "card", "card[number]": number, "card[exp_month]": "12",
                "card[exp_year]": "2034", "card[cvc]": "123"}  # fmt: skip
        return str(self._stripe("POST", "/v1/payment_methods", form=form)["id"])

    def confirm_setup_intent(self, si_id: str, payment_method: str) -> dict[str, Any]:
        """The customer confirms a SetupIntent with a card, as stripe.js's
        confirmCardSetup does; returns the SetupIntent (its `payment_method`
        attached to the customer on success)."""
        path = f"/v1/setup_intents/{_q(si_id)}/confirm"
        intent: dict[str, Any] = self._stripe("POST", path, form={"payment_method": payment_method})
        return intent

    def list_cards(self, customer_id: str) -> list[dict[str, Any]]:
        return self._list_all(f"/v1/customers/{_q(customer_id)}/sources", {"object": "card"})

    def create_card_token(
        self,
        number: str = "4242424242424242",
        exp_month: int = 12,
        exp_year: int = 2030,
        cvc: str = "123",
    ) -> str:
        token = self._stripe(
            "POST",
            "/v1/tokens",
            form={
                "card[number]": number,
                "card[exp_month]": str(exp_month),
                "card[exp_year]": str(exp_year),
                "card[cvc]": cvc,
            },
        )
        return str(token["id"])

    def confirm_payment_intent_on_session(self, pi_id: str, payment_method: str) -> dict[str, Any]:
        """The customer back in the app (stripe.js confirmCardPayment): confirm on-session
        with `payment_method`; a 3-D Secure card then waits in requires_action for
        `authenticate_payment_intent`. Returns the PaymentIntent."""
        path = f"/v1/payment_intents/{_q(pi_id)}/confirm"
        intent: dict[str, Any] = self._stripe("POST", path, form={"payment_method": payment_method})
        return intent

    def _list_all(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = dict(params, limit="100")
            if cursor:
                query["starting_after"] = cursor
            page = self._stripe("GET", path, query=query)
            items.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                return items
            cursor = page["data"][-1]["id"]

    def _stripe(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {TEST_KEY}", "X-Fake-Control": "1"}
        return self._request(method, path, query=query, form=form, headers=headers)

    # ---- HTTP ------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        hdrs = dict(headers or {})
        data: bytes | None = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        # The scheme is http(s): checked in __init__.
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            raise FakeStripeError(e.code, body) from None


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


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
