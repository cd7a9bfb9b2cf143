"""localstripe's card predicates, from Stripe's test cards (cards.py).

localstripe's Charge, Customer, PaymentIntent and SetupIntent code ask a
PaymentMethod whether it needs authentication or declines; Card (legacy
sources) and Source delegate to PaymentMethod's, so tokens behave as the same
numbers do here. Non-card types keep localstripe's answers.
"""

from __future__ import annotations

from typing import Any

from . import cards
from .localstripe_ext import res

PaymentMethod = res.PaymentMethod

_localstripe_predicates = {
    name: getattr(PaymentMethod, name)
    for name in ("_requires_authentication", "_attaching_is_declined", "_charging_is_declined")
}


def _requires_authentication(self: Any) -> bool:
    if getattr(self, "type", None) != "card":
        return bool(_localstripe_predicates["_requires_authentication"](self))
    auth = cards.card_for(self._card_number).authentication
    if auth == "unless_set_up" and getattr(self, "_set_up_off_session", False):
        return False
    return auth is not None


def _attaching_is_declined(self: Any) -> bool:
    if getattr(self, "type", None) != "card":
        return bool(_localstripe_predicates["_attaching_is_declined"](self))
    profile = cards.card_for(self._card_number)
    return profile.decline is not None and profile.checked_on_attach


def _charging_is_declined(self: Any) -> bool:
    if getattr(self, "type", None) != "card":
        return bool(_localstripe_predicates["_charging_is_declined"](self))
    return cards.card_for(self._card_number).decline is not None


def install() -> None:
    """Put these predicates on localstripe's PaymentMethod (once, at import
    of the backend)."""
    PaymentMethod._requires_authentication = _requires_authentication
    PaymentMethod._attaching_is_declined = _attaching_is_declined
    PaymentMethod._charging_is_declined = _charging_is_declined
