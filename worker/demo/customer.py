"""The demo's customer in the browser, against the local Stripe fake: what the app's stripe.js
does for it. It turns a card number into a PaymentMethod (`createPaymentMethod`), and, back
on-session for a charge that needs 3-D Secure, confirms the PaymentIntent with its card
(`confirmCardPayment`) and passes the authentication (the fake's control call plays the
issuer's page). A real Stripe key has no such page: the demo says so and skips that check.

stripe.js sends these requests with the publishable key and the PaymentIntent's client
secret; the fake models no publishable keys, so the demo sends them with the secret key it
gave the worker. The client secret is never printed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from stripe_fake import FakeStripe

# A browser does not wait long for Stripe either; the fake answers in milliseconds.
TIMEOUT_SECONDS = 10


class CustomerError(RuntimeError):
    """Stripe refused what the customer did (the message says what, never a secret)."""


class OnSession(NamedTuple):
    confirmed: str  # the PaymentIntent's status after the on-session confirmation
    authenticated: str  # and after the customer passed 3-D Secure


class Customer:
    """One customer's browser, talking to the `fake` with `key`."""

    def __init__(self, fake: FakeStripe, key: str) -> None:
        self.fake, self.key = fake, key

    def payment_method(self, number: str) -> str:
        """A new card PaymentMethod of this test number (12/2030, CVC 123); its id."""
        card = {"number": number, "exp_month": "12", "exp_year": "2030", "cvc": "123"}
        form = {"type": "card", **{f"card[{k}]": v for k, v in card.items()}}
        return str(self._post("/v1/payment_methods", form)["id"])

    def authenticate(self, payment_intent_id: str, payment_method: str) -> OnSession:
        """Confirm the PaymentIntent on-session with this card, then pass 3-D Secure.

        Raises:
            CustomerError: the fake refused the confirmation or the authentication.
        """
        path = f"/v1/payment_intents/{urllib.parse.quote(payment_intent_id, safe='')}/confirm"
        confirmed = self._post(path, {"payment_method": payment_method})
        # Imported here: the package is optional, and there is no customer without it.
        from stripe_fake import FakeStripeError

        try:
            authenticated = self.fake.authenticate_payment_intent(payment_intent_id, success=True)
        except FakeStripeError as exc:
            raise CustomerError(f"authentication: HTTP {exc.status} {_message(exc.body)}") from None
        return OnSession(str(confirmed["status"]), str(authenticated["status"]))

    def _post(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (the fake's http URL)
            self.fake.url + path,
            data=urllib.parse.urlencode(form).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
                body: dict[str, Any] = json.loads(response.read())
                return body
        except urllib.error.HTTPError as exc:
            try:
                error: Any = json.loads(exc.read())
            except ValueError:
                error = None
            # Only Stripe's message: a 402 body carries the PaymentIntent and its secret.
            raise CustomerError(f"POST {path}: HTTP {exc.code} {_message(error)}") from None


def _message(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "(no Stripe error)"
    return f"{error.get('code') or error.get('type')}: {error.get('message')}"
