"""The Stripe fake's current payments API: PaymentMethods, SetupIntents,
PaymentIntents (off-session, 3-D Secure) and refunds, driven through the real
stripe-python StripeClient as payworker drives it."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from stripe_fake import FakeStripe


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeStripe]:
    with FakeStripe.start() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeStripe) -> None:
    fake.reset()


@pytest.fixture
def client(fake: FakeStripe) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_x", base_addresses={"api": fake.url})


@pytest.fixture
def customer(client: stripe.StripeClient) -> str:
    return client.v1.customers.create({"email": "a@example.com"}).id


def post(
    fake: FakeStripe, path: str, params: dict[str, str], key: str | None = None
) -> tuple[int, dict[str, str], Any]:
    """A raw form POST, to see statuses and headers the SDK hides."""
    headers = {
        "Authorization": "Bearer sk_test_x",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(fake.url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def card_pm(client: stripe.StripeClient, number: str = "4242424242424242") -> stripe.PaymentMethod:
    return client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )


def attached(client: stripe.StripeClient, pm: str, customer: str) -> str:
    return client.v1.payment_methods.attach(pm, {"customer": customer}).id


def pay(
    client: stripe.StripeClient, customer: str, pm: str, **extra: Any
) -> stripe.PaymentIntent:
    params: Any = {
        "amount": 1500,
        "currency": "usd",
        "customer": customer,
        "payment_method": pm,
        "confirm": True,
        "off_session": True,
        **extra,
    }
    return client.v1.payment_intents.create(params)


# ---- PaymentMethods ----------------------------------------------------------


def test_card_payment_method_has_brand_last4_and_the_tokens_fingerprint(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    # Given a PaymentMethod and a legacy token made from the same number
    visa = card_pm(client)
    token = client.v1.tokens.retrieve(fake.create_card_token("4242424242424242"))
    # Then both carry one fingerprint, and the card's details are the number's
    assert visa.object == "payment_method" and visa.type == "card"
    assert visa.id.startswith("pm_") and visa.customer is None
    assert visa.card is not None and token.card is not None
    assert visa.card.fingerprint == token.card.fingerprint
    assert (visa.card.brand, visa.card.last4) == ("visa", "4242")
    assert (visa.card.exp_month, visa.card.exp_year) == (12, 2034)
    mastercard = card_pm(client, "5555555555554444")
    assert mastercard.card is not None and mastercard.card.brand == "mastercard"
    assert mastercard.card.fingerprint != visa.card.fingerprint
    assert card_pm(client).card.fingerprint == visa.card.fingerprint  # type: ignore[union-attr]


def test_invalid_card_details_are_card_errors(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.CardError) as luhn:
        card_pm(client, "4242424242424241")
    assert luhn.value.code == "incorrect_number"
    with pytest.raises(stripe.CardError) as month:
        client.v1.payment_methods.create(
            {"type": "card", "card": {"number": "4242424242424242", "exp_month": 13,
                                      "exp_year": 2034}}
        )
    assert month.value.code == "invalid_expiry_month"


def test_payment_method_from_a_token(fake: FakeStripe, client: stripe.StripeClient) -> None:
    token = fake.create_card_token("4000056655665556")
    pm = client.v1.payment_methods.create({"type": "card", "card": {"token": token}})
    assert pm.card is not None and pm.card.last4 == "5556" and pm.card.funding == "debit"


def test_each_attach_of_a_test_id_makes_a_new_payment_method(
    client: stripe.StripeClient, customer: str
) -> None:
    # When pm_card_visa is attached twice
    first = client.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    second = client.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    # Then there are two PaymentMethods of one card, both the customer's
    assert first.id != second.id and first.id.startswith("pm_") and first.id != "pm_card_visa"
    assert first.card is not None and second.card is not None
    assert first.card.fingerprint == second.card.fingerprint
    listed = client.v1.customers.payment_methods.list(customer, {"type": "card"})
    assert sorted(pm.id for pm in listed.data) == sorted([first.id, second.id])
    assert listed.data[0].id == second.id  # newest first
    by_query = client.v1.payment_methods.list({"customer": customer, "type": "card"})
    assert {pm.id for pm in by_query.data} == {first.id, second.id}
    mastercard = client.v1.payment_methods.retrieve("pm_card_mastercard")
    assert mastercard.card is not None and mastercard.card.brand == "mastercard"


def test_attaching_a_payment_method_that_is_attached_is_refused(
    client: stripe.StripeClient, customer: str
) -> None:
    other = client.v1.customers.create().id
    pm = attached(client, "pm_card_visa", customer)
    for who in (other, customer):
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.v1.payment_methods.attach(pm, {"customer": who})
        assert err.value.http_status == 400
        assert err.value.code == "payment_method_unexpected_state"
        assert "already been attached to a customer" in str(err.value.user_message)
    assert client.v1.payment_methods.retrieve(pm).customer == customer


def test_a_declining_card_fails_the_card_check_on_attach(
    client: stripe.StripeClient, customer: str
) -> None:
    with pytest.raises(stripe.CardError) as err:
        client.v1.payment_methods.attach("pm_card_chargeDeclined", {"customer": customer})
    assert (err.value.code, err.value.error.decline_code) == (  # type: ignore[union-attr]
        "card_declined",
        "generic_decline",
    )
    assert client.v1.customers.payment_methods.list(customer).data == []


def test_detach_removes_the_card_for_good(client: stripe.StripeClient, customer: str) -> None:
    pm = attached(client, "pm_card_visa", customer)
    client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": pm}})
    detached = client.v1.payment_methods.detach(pm)
    assert detached.customer is None
    assert client.v1.customers.payment_methods.list(customer).data == []
    settings = client.v1.customers.retrieve(customer).invoice_settings
    assert settings is not None and settings.default_payment_method is None
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.payment_methods.detach(pm)
    assert again.value.code == "payment_method_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError) as reattach:
        client.v1.payment_methods.attach(pm, {"customer": customer})
    assert "may not be used again" in str(reattach.value.user_message)


def test_default_payment_method_reads_back_and_must_be_the_customers(
    client: stripe.StripeClient, customer: str
) -> None:
    pm = attached(client, "pm_card_visa", customer)
    client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": pm}})
    settings = client.v1.customers.retrieve(customer).invoice_settings
    assert settings is not None and settings.default_payment_method == pm
    loose = card_pm(client).id
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.customers.update(
            customer, {"invoice_settings": {"default_payment_method": loose}}
        )
    assert err.value.code == "resource_missing"


def test_legacy_cards_are_listed_as_payment_methods(
    fake: FakeStripe, client: stripe.StripeClient, customer: str
) -> None:
    # Given a card saved as a legacy source and the same number as a PaymentMethod
    card = client.v1.customers.payment_sources.create(
        customer, {"source": fake.create_card_token("4242424242424242")}
    )
    pm = attached(client, card_pm(client).id, customer)
    # Then the customer's PaymentMethods show both, with one fingerprint
    listed = {p["id"]: p for p in fake.list_payment_methods(customer)}
    assert set(listed) == {card.id, pm}
    assert listed[card.id]["object"] == "payment_method"
    assert listed[card.id]["card"]["fingerprint"] == listed[pm]["card"]["fingerprint"]


# ---- SetupIntents --------------------------------------------------------------


def test_setup_intent_attaches_its_payment_method(
    fake: FakeStripe, client: stripe.StripeClient, customer: str
) -> None:
    si = client.v1.setup_intents.create(
        {"customer": customer, "usage": "off_session", "payment_method_types": ["card"]}
    )
    assert si.object == "setup_intent" and si.status == "requires_payment_method"
    assert re.fullmatch(rf"{si.id}_secret_\w+", si.client_secret or "")
    confirmed = client.v1.setup_intents.confirm(si.id, {"payment_method": "pm_card_visa"})
    assert confirmed.status == "succeeded"
    pm = confirmed.payment_method
    assert isinstance(pm, str) and pm.startswith("pm_") and pm != "pm_card_visa"
    assert client.v1.payment_methods.retrieve(pm).customer == customer
    assert [p["id"] for p in fake.list_payment_methods(customer)] == [pm]
    assert client.v1.setup_intents.retrieve(si.id).status == "succeeded"


def test_setup_intent_with_a_declining_card(client: stripe.StripeClient, customer: str) -> None:
    si = client.v1.setup_intents.create({"customer": customer})
    with pytest.raises(stripe.CardError) as err:
        client.v1.setup_intents.confirm(
            si.id, {"payment_method": "pm_card_chargeDeclinedInsufficientFunds"}
        )
    error = err.value.error
    assert error is not None and error.decline_code == "insufficient_funds"
    assert error.setup_intent is not None and error.setup_intent.id == si.id
    again = client.v1.setup_intents.retrieve(si.id)
    assert again.status == "requires_payment_method" and again.payment_method is None
    assert again.last_setup_error is not None
    assert again.last_setup_error.code == "card_declined"
    assert client.v1.customers.payment_methods.list(customer).data == []


def test_card_set_up_with_3ds_then_pays_off_session(
    fake: FakeStripe, client: stripe.StripeClient, customer: str
) -> None:
    # Given a card that needs 3-D Secure unless set up, attached without a setup
    plain = attached(client, "pm_card_authenticationRequiredOnSetup", customer)
    with pytest.raises(stripe.CardError) as err:
        pay(client, customer, plain)
    assert err.value.code == "authentication_required"
    # When the same card is set up through a SetupIntent, authenticating once
    si = client.v1.setup_intents.create(
        {"customer": customer, "payment_method": "pm_card_authenticationRequiredOnSetup",
         "confirm": True}
    )
    assert si.status == "requires_action" and si.next_action is not None
    assert fake.authenticate_setup_intent(si.id)["status"] == "succeeded"
    # Then off-session payments with it go through
    set_up = client.v1.setup_intents.retrieve(si.id).payment_method
    assert isinstance(set_up, str)
    assert pay(client, customer, set_up).status == "succeeded"


# ---- PaymentIntents --------------------------------------------------------------


def test_off_session_payment_succeeds_with_a_charge(
    fake: FakeStripe, client: stripe.StripeClient, customer: str
) -> None:
    pm = attached(client, "pm_card_visa", customer)
    pi = pay(client, customer, pm, description="order 7", metadata={"event_id": "e1"})
    assert pi.object == "payment_intent" and pi.status == "succeeded"
    assert (pi.amount, pi.amount_received, pi.currency) == (1500, 1500, "usd")
    assert pi.description == "order 7" and pi.metadata.to_dict() == {"event_id": "e1"}
    assert pi.payment_method == pm and isinstance(pi.latest_charge, str)
    assert pi.latest_charge.startswith("ch_")
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.object == "charge" and charge.status == "succeeded" and charge.paid
    assert charge.payment_intent == pi.id and charge.customer == customer
    assert [c.id for c in client.v1.charges.list({"customer": customer}).data] == [charge.id]
    listed = client.v1.charges.list({"payment_intent": pi.id}).data
    assert [c.id for c in listed] == [charge.id]
    assert [p.id for p in client.v1.payment_intents.list({"customer": customer}).data] == [pi.id]
    expanded = client.v1.payment_intents.retrieve(pi.id, {"expand": ["latest_charge"]})
    assert isinstance(expanded.latest_charge, stripe.Charge)


def test_a_legacy_card_pays_as_a_payment_method(
    fake: FakeStripe, client: stripe.StripeClient, customer: str
) -> None:
    card = client.v1.customers.payment_sources.create(
        customer, {"source": fake.create_card_token()}
    )
    pi = pay(client, customer, card.id)
    assert pi.status == "succeeded" and pi.payment_method == card.id
    other = client.v1.customers.create().id
    with pytest.raises(stripe.InvalidRequestError):
        pay(client, other, card.id)


@pytest.mark.parametrize(
    ("pm", "code", "decline_code"),
    [
        ("pm_card_chargeCustomerFail", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ],
)
def test_a_declined_payment_carries_the_payment_intent(
    client: stripe.StripeClient, customer: str, pm: str, code: str, decline_code: str
) -> None:
    # Given a card the issuer declines (attached where the card check lets it)
    if pm == "pm_card_chargeCustomerFail":
        pm = attached(client, pm, customer)
    # When it is charged off-session
    with pytest.raises(stripe.CardError) as err:
        pay(client, customer, pm)
    # Then the 402 says why and carries the PaymentIntent, left for a new card
    error = err.value.error
    assert error is not None and (error.code, error.decline_code) == (code, decline_code)
    assert error.type == "card_error" and error.charge and error.charge.startswith("ch_")
    intent = error.payment_intent
    assert intent is not None and intent.status == "requires_payment_method"
    assert intent.last_payment_error is not None
    assert intent.last_payment_error.decline_code == decline_code
    stored = client.v1.payment_intents.retrieve(intent.id)
    assert stored.status == "requires_payment_method" and stored.payment_method is None
    assert stored.latest_charge == error.charge
    assert client.v1.charges.retrieve(error.charge).status == "failed"


def test_off_session_authentication_required(
    client: stripe.StripeClient, customer: str
) -> None:
    pm = attached(client, "pm_card_authenticationRequired", customer)
    with pytest.raises(stripe.CardError) as err:
        pay(client, customer, pm)
    error = err.value.error
    assert error is not None and error.code == "authentication_required"
    assert error.payment_intent is not None
    assert error.payment_intent.status == "requires_payment_method"
    assert error.payment_method is not None and error.payment_method.id == pm


def test_on_session_3ds_then_the_customer_authenticates(
    fake: FakeStripe, client: stripe.StripeClient, customer: str
) -> None:
    pm = attached(client, "pm_card_authenticationRequired", customer)
    # When confirmed on-session
    pi = client.v1.payment_intents.create(
        {"amount": 900, "currency": "eur", "customer": customer, "payment_method": pm,
         "confirm": True}
    )
    # Then it waits for the customer
    assert pi.status == "requires_action" and pi.next_action is not None
    assert pi.client_secret and pi.client_secret.startswith(pi.id + "_secret_")
    # And once they authenticate, the same card pays
    done = fake.authenticate_payment_intent(pi.id)
    assert done["status"] == "succeeded" and done["payment_method"] == pm
    assert done["latest_charge"].startswith("ch_")
    assert client.v1.charges.retrieve(done["latest_charge"]).payment_intent == pi.id


def test_the_controller_plays_the_customer_after_an_off_session_decline(
    fake: FakeStripe, client: stripe.StripeClient, customer: str
) -> None:
    # Given a 3-D Secure card made as stripe.js makes it, and an off-session payment that
    # Stripe refused with authentication_required
    pm = attached(client, fake.create_payment_method("4000002760003184"), customer)
    with pytest.raises(stripe.CardError) as err:
        pay(client, customer, pm)
    assert err.value.error is not None and err.value.error.payment_intent is not None
    pi_id = err.value.error.payment_intent.id
    # When the customer confirms it on-session and authenticates
    waiting = fake.confirm_payment_intent_on_session(pi_id, pm)
    done = fake.authenticate_payment_intent(pi_id)
    # Then the payment succeeded with that card, and the controller's calls are not logged
    assert waiting["status"] == "requires_action"
    assert done["status"] == "succeeded" and done["payment_method"] == pm
    assert fake.count(method="POST", path=f"/v1/payment_intents/{pi_id}/confirm") == 0


def test_on_session_3ds_failed_then_another_card(
    fake: FakeStripe, client: stripe.StripeClient, customer: str
) -> None:
    pi = client.v1.payment_intents.create(
        {"amount": 900, "currency": "eur", "customer": customer,
         "payment_method": "pm_card_threeDSecure2Required", "confirm": True}
    )
    failed = fake.authenticate_payment_intent(pi.id, success=False)
    assert failed["status"] == "requires_payment_method" and failed["payment_method"] is None
    assert failed["last_payment_error"]["code"] == "payment_intent_authentication_failure"
    retried = client.v1.payment_intents.confirm(pi.id, {"payment_method": "pm_card_visa"})
    assert retried.status == "succeeded"


def test_cancel(client: stripe.StripeClient, customer: str) -> None:
    open_pi = client.v1.payment_intents.create({"amount": 500, "currency": "usd"})
    assert open_pi.status == "requires_payment_method"
    canceled = client.v1.payment_intents.cancel(
        open_pi.id, {"cancellation_reason": "requested_by_customer"}
    )
    assert canceled.status == "canceled" and canceled.canceled_at
    paid = pay(client, customer, attached(client, "pm_card_visa", customer))
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.payment_intents.cancel(paid.id)
    assert err.value.code == "payment_intent_unexpected_state"
    assert "status of succeeded" in str(err.value.user_message)


def test_parameter_checks(fake: FakeStripe, client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.payment_intents.create(
            {"amount": 500, "currency": "usd", "bogus": "1"}  # type: ignore[typeddict-unknown-key]
        )
    assert unknown.value.code == "parameter_unknown"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.create({"currency": "usd"})  # type: ignore[typeddict-item]
    assert missing.value.code == "parameter_missing"
    status, _, body = post(
        fake, "/v1/payment_intents", {"amount": "500", "currency": "usd", "off_session": "true"}
    )
    assert status == 400 and body["error"]["param"] == "off_session"
    assert client.v1.payment_intents.list().data == []  # nothing was created


# ---- Refunds ---------------------------------------------------------------------


def test_partial_refunds_accumulate_up_to_the_charge(
    client: stripe.StripeClient, customer: str
) -> None:
    pi = pay(client, customer, attached(client, "pm_card_visa", customer))
    assert isinstance(pi.latest_charge, str)
    first = client.v1.refunds.create(
        {"payment_intent": pi.id, "amount": 500, "reason": "requested_by_customer",
         "metadata": {"event_id": "r1"}}
    )
    assert first.object == "refund" and first.id.startswith("re_")
    assert (first.status, first.amount, first.currency) == ("succeeded", 500, "usd")
    assert (first.charge, first.payment_intent) == (pi.latest_charge, pi.id)
    assert first.reason == "requested_by_customer" and first.metadata.to_dict() == {
        "event_id": "r1"
    }
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (500, False)
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create({"charge": pi.latest_charge, "amount": 1001})
    assert too_much.value.code == "amount_too_large"
    assert "($10.00)" in str(too_much.value.user_message)
    rest = client.v1.refunds.create({"charge": pi.latest_charge})
    assert rest.amount == 1000 and rest.payment_intent == pi.id
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (1500, True)
    with pytest.raises(stripe.InvalidRequestError) as done:
        client.v1.refunds.create({"payment_intent": pi.id, "amount": 1})
    assert done.value.code == "charge_already_refunded"
    by_pi = client.v1.refunds.list({"payment_intent": pi.id}).data
    assert [r.id for r in by_pi] == [rest.id, first.id]
    by_charge = client.v1.refunds.list({"charge": pi.latest_charge}).data
    assert [r.id for r in by_charge] == [rest.id, first.id]
    assert client.v1.refunds.retrieve(first.id).amount == 500


def test_refund_reason_must_be_one_of_stripes(
    client: stripe.StripeClient, customer: str
) -> None:
    pi = pay(client, customer, attached(client, "pm_card_visa", customer))
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.refunds.create({"payment_intent": pi.id, "reason": "changed_mind"})  # type: ignore[typeddict-item]
    assert err.value.param == "reason"
    open_pi = client.v1.payment_intents.create({"amount": 500, "currency": "usd"})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create({"payment_intent": open_pi.id})
    assert client.v1.refunds.list().data == []


# ---- Idempotency-Key on every new POST ---------------------------------------


def test_every_new_post_replays_by_idempotency_key(fake: FakeStripe, customer: str) -> None:
    keys = iter(range(100))

    def replayed(path: str, params: dict[str, str], other: dict[str, str]) -> Any:
        key = f"k{next(keys)}"
        s1, h1, b1 = post(fake, path, params, key)
        s2, h2, b2 = post(fake, path, params, key)
        assert (s1, b1) == (s2, b2), path
        assert "Idempotent-Replayed" not in h1 and h2["Idempotent-Replayed"] == "true"
        s3, _, b3 = post(fake, path, other, key)
        assert s3 == 400 and b3["error"]["type"] == "idempotency_error", path
        return b1

    card = {"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "12",
            "card[exp_year]": "2034"}
    pm = replayed("/v1/payment_methods", card, {**card, "card[exp_month]": "11"})["id"]
    replayed(f"/v1/payment_methods/{pm}/attach", {"customer": customer}, {"customer": "cus_x"})
    replayed(f"/v1/payment_methods/{pm}/detach", {}, {"expand[0]": "customer"})
    si = replayed("/v1/setup_intents", {"customer": customer}, {})["id"]
    replayed(f"/v1/setup_intents/{si}/confirm", {"payment_method": "pm_card_visa"}, {})
    si2 = post(fake, "/v1/setup_intents", {})[2]["id"]
    replayed(f"/v1/setup_intents/{si2}/cancel", {}, {"cancellation_reason": "duplicate"})
    pay_params = {"amount": "1500", "currency": "usd", "payment_method": "pm_card_visa",
                  "confirm": "true"}
    pi = replayed("/v1/payment_intents", pay_params, {**pay_params, "amount": "1600"})
    assert pi["status"] == "succeeded"
    assert len(fake.list_charges(customer)) == 0  # one charge, with no customer
    declined = {**pay_params, "payment_method": "pm_card_chargeDeclined"}
    error = replayed("/v1/payment_intents", declined, pay_params)  # a 402 replays too
    assert error["error"]["code"] == "card_declined"
    open_pi = post(fake, "/v1/payment_intents", {"amount": "500", "currency": "usd"})[2]["id"]
    replayed(f"/v1/payment_intents/{open_pi}/confirm", {"payment_method": "pm_card_visa"}, {})
    open2 = post(fake, "/v1/payment_intents", {"amount": "500", "currency": "usd"})[2]["id"]
    replayed(f"/v1/payment_intents/{open2}/cancel", {}, {"cancellation_reason": "duplicate"})
    refund = replayed("/v1/refunds", {"payment_intent": pi["id"], "amount": "100"},
                      {"payment_intent": pi["id"], "amount": "200"})
    assert [r["id"] for r in fake.list_refunds(payment_intent=pi["id"])] == [refund["id"]]
