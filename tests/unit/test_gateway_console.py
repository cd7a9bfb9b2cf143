"""STRIPE_LOG=debug must not make the Stripe SDK print requests (card tokens included)
to stderr past our log filter (tasks.gateway). Pure: no services, no request sent."""

from __future__ import annotations

import logging

import stripe
import stripe._util

from tasks.gateway import StripeGateway

TOKEN = "tok_1Nv0SECRETabcd9876"


def test_building_a_gateway_silences_the_sdk_console(monkeypatch, capsys, caplog):
    # Given the SDK told to print its debug log, by the environment and by its global
    monkeypatch.setattr(stripe._util, "STRIPE_LOG", "debug")
    monkeypatch.setattr(stripe, "log", "debug")
    # When a gateway is built
    StripeGateway.build("sk_test_x", api_base=None, timeout=1.0, network_retries=0)
    # Then a request log line goes to the `stripe` logger (our handlers, redacted) only
    with caplog.at_level(logging.DEBUG, logger="stripe"):
        stripe._util.log_debug("Post details", post_data=f"source={TOKEN}")
    assert TOKEN not in capsys.readouterr().err
    assert any("Post details" in r.getMessage() for r in caplog.records)
