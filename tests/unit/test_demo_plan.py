"""The demo's plan (worker/demo/batch.py): what a phase publishes refers only to events of
earlier phases, and the 3-D Secure charge's expected end depends on whether the demo can play
its customer (the local fake) or not (a Stripe key)."""

from __future__ import annotations

import pytest

from worker.demo.batch import ACTION, OK, CardOf, EventOf, Phase, plan


def _step(phases: list[Phase], tag: str) -> tuple[int, tuple[str, str | None]]:
    """The index of the phase that publishes `tag`, and the outcome it expects."""
    return next((i, s[3]) for i, p in enumerate(phases) for s in p.steps if s[1] == tag)


@pytest.mark.parametrize("customer", [True, False])
def test_every_reference_points_at_an_event_of_an_earlier_phase(customer: bool) -> None:
    # Given the plan for 5 users, with or without a customer to play
    phases = plan(5, customer)
    published: set[str] = set()
    for phase in phases:
        # When a phase refers to cards and events (its kwargs, its customer's authentication)
        refs = {
            v.tag for s in phase.steps for v in s[4].values() if isinstance(v, CardOf | EventOf)
        }
        if phase.authenticate is not None:
            refs |= {phase.authenticate.charge, phase.authenticate.card}
        # Then each one was published by an earlier phase, which the run waited for
        assert refs <= published, (phase.title, refs - published)
        published |= {s[1] for s in phase.steps}


def test_with_a_customer_to_play_the_secure_charge_is_authenticated_and_ends_succeeded() -> None:
    # Given the plan against the local fake, where the demo plays the customer
    phases = plan(5, customer=True)
    # When the 3-D Secure charge is published and its customer comes back
    charge_phase, expected = _step(phases, "charge-secure")
    authenticating = [i for i, p in enumerate(phases) if p.authenticate is not None]
    # Then its phase waits only until it is action_required, the next phase authenticates
    # it with its PaymentMethod, and its event is expected to end succeeded
    assert phases[charge_phase].until == "action"
    assert authenticating == [charge_phase + 1]
    step = phases[charge_phase + 1].authenticate
    assert step is not None and (step.charge, step.card) == ("charge-secure", "pm0-secure")
    assert expected == OK


def test_with_a_stripe_key_the_secure_charge_is_expected_to_wait_for_its_customer() -> None:
    # Given the plan with a Stripe key: no customer can be played
    phases = plan(5, customer=False)
    # When the 3-D Secure charge is published
    _, expected = _step(phases, "charge-secure")
    # Then nothing authenticates it and it is expected to stay action_required
    assert all(p.authenticate is None for p in phases)
    assert expected == ACTION == ("action_required", "authentication_required")
