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

localstripe 1.15.10 quirks that remain (checked by
tests/unit/test_stripe_fake.py):

* Tokens: only from raw 16-digit numbers (``tok_visa`` is 404);
  ``card.brand`` is always "Visa", even for 5555555555554444; ``GET
  /v1/tokens/{id}`` has ``card.fingerprint`` = first 16 hex of
  sha1(number): same number -> same fingerprint.
* Declines: 4000000000000002 (and the other "attach" decline numbers) fail
  when *attached* (402 ``card_declined``, no ``decline_code``);
  4000000000000341 attaches, then ``POST /v1/charges`` answers 402
  ``card_declined`` with the ``charge`` id, and that failed charge is
  stored (status "failed", listed by ``GET /v1/charges``).
* Amounts/currencies: any integer >= 0 and any non-empty currency string are
  accepted: no ``amount_too_small`` (amount=1 succeeds), no
  unknown-currency error ("zzz" succeeds), no 8-digit cap. Validate first.
* Auth: any key ``sk_*`` longer than 5 chars passes (``sk_live_bad`` too);
  otherwise (``bad``, ``pk_test_x``, none) 401 with type
  ``invalid_request_error`` (Stripe: ``authentication_error``; the SDK
  still raises AuthenticationError, it maps by status).
* Errors carry type ``invalid_request_error`` even for 402 (SDK: CardError).
* Unknown parameters -> 400 "Unexpected ..." (Stripe would accept many).
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
* Exceptions inside localstripe -> 500 ``api_error`` JSON.
"""

from .control import FakeStripe, FakeStripeError, FakeStripeUnavailable

__all__ = ["FakeStripe", "FakeStripeError", "FakeStripeUnavailable"]
