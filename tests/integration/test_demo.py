"""`payworker demo` end to end, as the README's quick start runs it: its own Stripe fake, its
own worker subprocess, the test database and broker. Its exit code is its verdict; its `ok`
lines are what a reader of the README is promised."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

# The demo takes about 12 s on a quiet machine; the suite's machine is not always quiet.
DEMO_TIMEOUT = 240


def test_the_demo_passes_every_check_of_the_legacy_and_the_modern_path(
    database_url: str, broker_url: str
) -> None:
    # Given the test database and broker, and no Stripe key: the demo starts its own fake
    env = {**os.environ, "DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url,
           "PYTHONPATH": str(ROOT), "COLUMNS": "400"}  # fmt: skip
    for name in ("STRIPE_API_KEY", "STRIPE_API_BASE", "PAYWORKER_CHARGE_API"):
        env.pop(name, None)

    # When it runs
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT,
    )  # fmt: skip

    # Then it exits 0, with no failed or skipped check, and shows the modern path: the
    # PaymentMethods, the 3-D Secure charge waiting then authenticated, both refunds
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    verdicts = [line for line in output.splitlines() if line.startswith(("ok", "FAIL", "skip"))]
    assert verdicts and all(line.startswith("ok ") for line in verdicts), verdicts
    shown = "\n".join(verdicts)
    for promise in (
        "recorded as cards of kind payment_method",
        "PaymentMethod of the Visa it holds as a token: result.duplicate",
        "waited for its customer: action_required (authentication_required)",
        "the customer confirmed on-session and authenticated (requires_action, then succeeded)",
        "the partial refund of 15.00 USD: succeeded; charges.amount_refunded 15.00 USD",
        "failed refund_exceeds_charge; Stripe holds 1 refund of that charge",
        "the charge event published twice made 1 charge on Stripe",
    ):
        assert promise in shown, (promise, verdicts)
