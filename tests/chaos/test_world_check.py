"""The chaos suite's judge, judged: check_world passes on a world that real workers made
(a PaymentMethod card, a PaymentIntent charge, a partial refund) and names each
disagreement planted afterwards on one side only: a second PaymentIntent for the event, a
second refund, a refunded amount Postgres does not know, a card of the wrong kind. A world
check that saw nothing would let every storm pass."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.chaos.harness.batches import VISA
from tests.chaos.harness.stage import Stage, staged
from tests.chaos.harness.watch import wait_final
from tests.chaos.harness.world import check_world, pg_charge

# The outcome does not depend on the broker: the Redis pass runs it.
pytestmark = [pytest.mark.chaos, pytest.mark.any_broker]


@pytest.fixture(scope="module")
def stage(broker_url: str, tmp_path_factory: Any) -> Iterator[Stage]:
    with staged(broker_url, tmp_path_factory.mktemp("chaos-world"), "payworker_chaos_world") \
            as stage:
        yield stage


def _made_by_workers(stage: Stage) -> tuple[str, str, str]:
    """A user with a PaymentMethod card, a 5000 charge and a 1200 refund of it, all made by a
    real worker; returns (user_id, customer_id, charge event id)."""
    user = f"world-{uuid.uuid4().hex[:8]}"
    steps = [
        ("user_registered", {"email": f"{user}@example.com"}),
        ("payment_method_received", {"payment_method": stage.fake.create_payment_method(VISA)}),
        ("charge_requested", {"amount": 5000, "currency": "usd"}),
        ("refund_requested", {"charge_event_id": f"{user}-2", "amount": 1200}),
    ]
    for n, (message_type, kwargs) in enumerate(steps):
        event = stage.publish(message_type, event_id=f"{user}-{n}", user_id=user, **kwargs)
        rows = wait_final(stage.engine, [event], 30)
        assert rows[event]["status"] == "succeeded", rows
    customer = wait_final(stage.engine, [f"{user}-0"], 1)[f"{user}-0"]["result"]["customer_id"]
    return user, customer, f"{user}-2"


def test_the_world_check_sees_each_planted_disagreement(stage: Stage) -> None:
    # Given a world made by a worker, on which the check agrees
    user, customer, charge_event = _made_by_workers(stage)
    assert check_world(stage.engine, stage.fake, [user]).ok
    row = pg_charge(stage.engine, charge_event)
    assert row is not None and row["payment_intent_id"] and row["amount_refunded"] == 1200

    # When Stripe gets a second PaymentIntent and a second refund for the same events, and
    # Postgres a refunded amount and a card kind that are wrong
    form = {"amount": "5000", "currency": "usd", "customer": customer,
            "payment_method": row["stripe_card_id"], "confirm": "true", "off_session": "true",
            "metadata[event_id]": charge_event}
    stage.fake._stripe("POST", "/v1/payment_intents", form=form)
    stage.fake._stripe("POST", "/v1/refunds", form={
        "charge": row["stripe_charge_id"], "amount": "100", "metadata[event_id]": f"{user}-3"})
    with stage.engine.begin() as conn:
        conn.execute(text("UPDATE charges SET amount_refunded = 0 WHERE event_id = :e"),
                     {"e": charge_event})
        conn.execute(text("UPDATE cards SET kind = 'source' WHERE user_id = :u"), {"u": user})

    # Then the check names every one of them
    world = check_world(stage.engine, stage.fake, [user])
    found = "\n".join(world.duplicates + world.mismatches)
    assert not world.ok
    assert f"event {charge_event}: 2 PaymentIntents" in found, found
    assert f"refund event {user}-3: 2 Stripe refunds" in found, found
    assert f"charge event {charge_event}: amount_refunded 0, Stripe's 1300" in found, found
    assert "row kind source != payment_method" in found, found
