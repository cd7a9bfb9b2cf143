"""Stripe's test cards: what each number does, and the test PaymentMethod ids.

Stdlib only. The numbers, ids and outcomes are those of Stripe's testing page
(https://docs.stripe.com/testing: "Cards by brand", "Declined payments",
"Authentication and setup"); the decline codes are those of
https://docs.stripe.com/declines/codes. The messages are the ones Stripe's API
answers with for those codes (as recorded in public integrations; the docs do
not list them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Authentication = Literal["always", "unless_set_up"]


@dataclass(frozen=True)
class Decline:
    """How the issuer refuses: the error's code, decline_code and message."""

    code: str
    decline_code: str
    message: str


@dataclass(frozen=True)
class CardProfile:
    """What Stripe's test environment does with one card number.

    `decline`: every charge is refused so. `checked_on_attach`: saving the
    card to a customer (attach, a SetupIntent, a legacy source) runs a card
    check that is refused the same way; Stripe's "decline after attaching"
    card (4000000000000341, ``pm_card_chargeCustomerFail``) exists because the
    other decline cards already fail there.
    `authentication`: "always" needs 3-D Secure on every payment (and setup),
    "unless_set_up" needs it on-session always and off-session unless the card
    was set up for off-session use (a SetupIntent) after authenticating.
    """

    funding: str = "credit"
    decline: Decline | None = None
    checked_on_attach: bool = True
    authentication: Authentication | None = None


def _declined(decline_code: str, message: str = "Your card was declined.") -> Decline:
    return Decline("card_declined", decline_code, message)


GENERIC_DECLINE = _declined("generic_decline")
INSUFFICIENT_FUNDS = _declined("insufficient_funds", "Your card has insufficient funds.")
AUTHENTICATION_REQUIRED = Decline(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)
INCORRECT_NUMBER = Decline("incorrect_number", "incorrect_number", "Your card number is incorrect.")

CARDS: dict[str, CardProfile] = {
    "4000056655665556": CardProfile(funding="debit"),
    "5200828282828210": CardProfile(funding="debit"),
    "5105105105105100": CardProfile(funding="prepaid"),
    "4000000000000002": CardProfile(decline=GENERIC_DECLINE),
    "4000000000009995": CardProfile(decline=INSUFFICIENT_FUNDS),
    "4000000000009987": CardProfile(decline=_declined("lost_card")),
    "4000000000009979": CardProfile(decline=_declined("stolen_card")),
    "4000000000000069": CardProfile(
        decline=Decline("expired_card", "expired_card", "Your card has expired.")
    ),
    "4000000000000127": CardProfile(
        decline=Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.")
    ),
    "4000000000000119": CardProfile(
        decline=Decline(
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
        )
    ),
    # Fails the Luhn check: a PaymentMethod cannot even be created from it
    # (payment_methods.py); localstripe's tokens accept it, so attaching it
    # as a legacy source is where it fails.
    "4242424242424241": CardProfile(decline=INCORRECT_NUMBER),
    "4000000000000341": CardProfile(decline=GENERIC_DECLINE, checked_on_attach=False),
    "4000002500003155": CardProfile(authentication="unless_set_up"),
    "4000002760003184": CardProfile(authentication="always"),
    "4000008260003178": CardProfile(
        authentication="always", decline=INSUFFICIENT_FUNDS, checked_on_attach=False
    ),
    "4000000000003220": CardProfile(authentication="always"),
    "4000000000003063": CardProfile(authentication="always"),
    # localstripe's list has it as "3-D Secure, then declined"; not on Stripe's
    # current testing page, kept for the legacy behaviour.
    "4000008400001629": CardProfile(
        authentication="always", decline=GENERIC_DECLINE, checked_on_attach=False
    ),
}

# Stripe's test PaymentMethod ids (testing page), each standing for a number.
# Both the `pm_card_chargeDeclined…` and `pm_card_visa_chargeDeclined…`
# spellings appear in Stripe's docs over time; both are accepted.
TEST_PAYMENT_METHODS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_visa_debit": "4000056655665556",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_mastercard_debit": "5200828282828210",
    "pm_card_mastercard_prepaid": "5105105105105100",
    "pm_card_amex": "378282246310005",
    "pm_card_discover": "6011111111111117",
    "pm_card_diners": "3056930009020004",
    "pm_card_jcb": "3566002020360505",
    "pm_card_unionpay": "6200000000000005",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_visa_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_visa_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_visa_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_chargeDeclinedIncorrectCvc": "4000000000000127",
    "pm_card_chargeDeclinedProcessingError": "4000000000000119",
    "pm_card_chargeCustomerFail": "4000000000000341",
    "pm_card_authenticationRequiredOnSetup": "4000002500003155",
    "pm_card_authenticationRequired": "4000002760003184",
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": "4000008260003178",
    "pm_card_threeDSecure2Required": "4000000000003220",
    "pm_card_threeDSecureRequired": "4000000000003063",
}

_ORDINARY = CardProfile()


def card_for(number: str) -> CardProfile:
    """The test behaviour of `number`; any other number simply succeeds."""
    return CARDS.get(number, _ORDINARY)


def brand_of(number: str) -> str:
    """Card brand by IIN range, spelled as PaymentMethod `card.brand` is."""
    two, four = int(number[:2] or 0), int(number[:4] or 0)
    if number.startswith("4"):
        return "visa"
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return "mastercard"
    if two in (34, 37):
        return "amex"
    if number.startswith(("6011", "65")) or 644 <= int(number[:3] or 0) <= 649:
        return "discover"
    if two in (30, 36, 38, 39):
        return "diners"
    if two == 35:
        return "jcb"
    if two == 62:
        return "unionpay"
    return "unknown"


def luhn_ok(number: str) -> bool:
    """The check digit test every card number passes."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0
