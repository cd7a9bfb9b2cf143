"""Stripe fake for tests and the demo: localstripe behind our own server.

Run: ``python -m stripe_fake --port 12111`` (127.0.0.1 only, no disk),
or ``FakeStripe.start()`` from :mod:`stripe_fake.control`. The server needs
payworker's ``fake`` extra (localstripe, aiohttp; ``pip install
'payworker[fake]'``); the controller is stdlib only. This package models
Stripe, not payworker: it imports none of payworker's packages (a lint-imports
contract in pyproject.toml).

Added on top of localstripe: Idempotency-Key replay (per API key; 400
``idempotency_error`` on mismatch, 409 ``idempotency_key_in_use`` while in
flight; 400/401/409 answers are not stored), a request log, fault/latency
injection, reset. Control plane under ``/_fake/``; requests with header
``X-Fake-Control: 1`` skip log, faults and idempotency.

Stripe's current payments API, modelled here on Stripe's docs (API version
2026-10-28, stripe-python 16.1's shapes) over localstripe's store; test
cards and ids in cards.py (tests/unit/test_stripe_fake_modern.py):

* PaymentMethods (payment_methods.py; the object payment_method_object.py,
  localstripe's card predicates payment_method_predicates.py): ``POST
  /v1/payment_methods`` (type card; ``card[number|exp_month|exp_year|cvc]``
  or ``card[token]``; Luhn, expiry and CVC checked: 402 ``incorrect_number`` etc.), retrieve, update
  (metadata, billing_details), attach (400 ``payment_method_unexpected_state``
  when attached already, a card check that declines the testing page's
  decline cards: 402 with ``decline_code``), detach (then unusable), ``GET
  /v1/payment_methods?customer=`` and ``GET /v1/customers/{id}/payment_methods``
  (legacy card sources included, as PaymentMethods), ``GET
  /v1/customers/{id}/payment_methods/{pm}``. ``card.brand`` by IIN,
  ``card.fingerprint`` the same as a token of that number gets. Test ids
  (``pm_card_visa``, ``pm_card_chargeDeclined``, ...) make a new ``pm_...``
  copy on every use. ``invoice_settings[default_payment_method]`` must be
  attached to the customer.
* SetupIntents (setup_intents.py): create, retrieve, update, confirm (the
  PaymentMethod is attached to the customer on success; 402 with
  ``error.setup_intent`` on a decline; requires_action for 3-D Secure cards),
  cancel, list.
* PaymentIntents (payment_intents.py; the object payment_intent_object.py,
  its state machine payment_intent_confirm.py): create (``confirm``,
  ``off_session``, ``description``, ``metadata``, ``setup_future_usage``,
  ``error_on_requires_action``, ...), retrieve (``expand[]=latest_charge``),
  update, confirm (with ``payment_method``), cancel, ``GET
  /v1/payment_intents?customer=``. ``payment_method`` may be a legacy
  ``card_...`` of the customer. Success: status succeeded and a charge
  (``latest_charge`` id, the charge's ``payment_intent``). Decline: 402
  card_error with ``decline_code``, ``charge``, ``payment_method`` and the
  PaymentIntent (requires_payment_method, ``last_payment_error``) in
  ``error.payment_intent``. A 3-D Secure card off-session: 402
  ``authentication_required``; on-session: requires_action with
  ``next_action``, then ``POST /_fake/payment_intents/{id}/authenticate
  {"success": bool}`` (``FakeStripe.authenticate_payment_intent``) pays with
  the same card or fails with ``payment_intent_authentication_failure``;
  ``/_fake/setup_intents/{id}/authenticate`` likewise.
* Refunds (refunds.py): ``POST /v1/refunds`` by ``payment_intent`` or
  ``charge``, ``amount``, ``reason`` (duplicate, fraudulent,
  requested_by_customer), ``metadata``; partial refunds add up in the
  charge's ``amount_refunded``/``refunded``; 400 ``amount_too_large`` past the
  unrefunded amount, ``charge_already_refunded`` when none is left; ``GET
  /v1/refunds?payment_intent=|charge=``. ``GET /v1/charges?payment_intent=``.
* Every 402 has type ``card_error``; unknown parameters of these endpoints a
  400 ``parameter_unknown``, as on Stripe.

Where Stripe's docs do not say (messages, some codes and statuses), the
code says so in a comment. Not modelled: capture_method=manual, non-card
payment methods, amount minimums/maximums and currency checks (as for
charges), SetupAttempts, webhooks for these objects. The PaymentIntents
localstripe's invoices make keep localstripe's old shape (``latest_charge``
an object, a ``charges`` list).

localstripe 1.15.10 quirks that remain (checked by
tests/unit/test_stripe_fake.py):

* Tokens: only from raw 16-digit numbers (``tok_visa`` is 404);
  ``card.brand`` is always "Visa", even for 5555555555554444; ``GET
  /v1/tokens/{id}`` has ``card.fingerprint`` = first 16 hex of
  sha1(number): same number -> same fingerprint.
* Declines: 4000000000000002 (and the other "attach" decline numbers) fail
  when *attached* (402 ``card_declined`` with the test card's
  ``decline_code``); 4000000000000341 attaches, then ``POST /v1/charges``
  answers 402 ``card_declined`` (``generic_decline``) with the ``charge`` id,
  and that failed charge is stored (status "failed", listed by ``GET
  /v1/charges``, oldest first).
* Amounts/currencies: any integer >= 0 and any non-empty currency string are
  accepted: no ``amount_too_small`` (amount=1 succeeds), no
  unknown-currency error ("zzz" succeeds), no 8-digit cap. Validate first.
* Auth: any key ``sk_*`` longer than 5 chars passes (``sk_live_bad`` too);
  otherwise (``bad``, ``pk_test_x``, none) 401 with type
  ``invalid_request_error`` (Stripe: ``authentication_error``; the SDK
  still raises AuthenticationError, it maps by status).
* Unknown parameters of localstripe's own endpoints -> 400 "Unexpected ..."
  (Stripe would accept many).
* Charges do not check that the card belongs to the charged customer.
* ``DELETE /v1/customers/{id}/sources/{card}`` returns the *customer*, not
  a deleted-card object; the next card becomes the default.
* Creating a customer with ``source`` that declines leaves the customer.

Fixed here (backend.py), to behave like Stripe:

* ``POST /v1/customers/{id}/sources`` accepts ``metadata``; a token can be
  attached once (then 400 ``token_already_used``; localstripe re-attached
  the same card object, one id listed twice).
* ``GET /v1/customers/{id}/sources`` accepts ``limit``/``starting_after``
  (localstripe: 400, page stuck at 10) and no longer rewrites the customer's
  list when filtering by ``object``.
* ``POST /v1/customers/{id}`` with a ``default_source`` the customer lacks
  -> 400 ``resource_missing`` (localstripe stored it, then every read of
  the customer, charge to it, and customer list crashed with 500).
* ``POST /v1/customers/{id}`` with ``invoice_settings[default_payment_method]``
  not attached to the customer -> 400 ``resource_missing``.
* 402s have type ``card_error`` (localstripe: ``invalid_request_error``).
* Exceptions inside localstripe -> 500 ``api_error`` JSON.
"""

from .control import FakeStripe, FakeStripeError, FakeStripeUnavailable

__all__ = ["FakeStripe", "FakeStripeError", "FakeStripeUnavailable"]
