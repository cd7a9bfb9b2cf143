"""The in-process Stripe's Refunds (see fake_gateway.py for how it behaves):
a mixin of `FakeGateway`, which keeps its objects and records its calls.

As Stripe: a refund is of a succeeded charge (`FakeGateway.charges`); refunds that are
pending or succeeded count against the charge, and past it Stripe refuses: nothing left is
`charge_already_refunded` (the gateway's `refund_exceeds_charge`), less left than asked is
`amount_too_large`. A card refund succeeds at once, unless the test holds the next ones
`pending` (`hold_refunds`) and settles them later (`settle_refund`). `refund_outside` is a
refund made on the dashboard, behind payworker's back."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import PermanentError, StripeInvalidRequest, StripeNotFound
from tasks.gateway import RefundOutcome

if TYPE_CHECKING:
    from tests.inprocess.fake_gateway import Charge

T = TypeVar("T")
# Refunds in these statuses count against the charge (Stripe's amount_refunded).
_COUNTED = {"pending", "succeeded"}


@dataclass
class Refund:
    id: str
    charge_id: str
    amount: int
    reason: str | None
    metadata: dict[str, str]
    status: str
    failure_reason: str | None = None

    def outcome(self) -> RefundOutcome:
        return RefundOutcome(self.id, self.status, self.amount, self.failure_reason)


class FakeRefunds:
    """Refunds, with the methods of `tasks.gateway.StripeGateway`."""

    if TYPE_CHECKING:
        charges: dict[str, Charge]

        def _call(
            self, method: str, key: str | None, params: dict[str, Any], effect: Callable[[], T]
        ) -> T: ...

    # ---- the test's controls (not recorded as calls) ----------------------------------

    @property
    def refunds(self) -> dict[str, Refund]:
        """Every refund, oldest first (kept beside FakeGateway's own dicts)."""
        return self.__dict__.setdefault("_refunds", {})  # type: ignore[no-any-return]

    def hold_refunds(self, held: bool = True) -> None:
        """Refunds created from now on stay `pending` until `settle_refund`."""
        self.__dict__["_hold_refunds"] = held

    def settle_refund(self, refund_id: str, status: str, failure_reason: str | None = None) -> None:
        """Stripe finishes a pending refund: `succeeded`, `failed` or `canceled`."""
        refund = self.refunds[refund_id]
        refund.status, refund.failure_reason = status, failure_reason

    def refund_outside(self, charge_id: str, amount: int) -> str:
        """A refund made on the dashboard, without payworker."""
        return self._refund(charge_id, amount, None, {}).id

    def amount_refunded(self, charge_id: str) -> int:
        """The charge's refunded amount as Stripe shows it (pending refunds included)."""
        refunds = self.refunds.values()
        return sum(r.amount for r in refunds if r.charge_id == charge_id and r.status in _COUNTED)

    # ---- StripeGateway -----------------------------------------------------------------

    def create_refund(
        self,
        key: str,
        *,
        charge_id: str,
        amount: int,
        reason: str | None,
        metadata: dict[str, str],
    ) -> RefundOutcome:
        params = {"charge_id": charge_id, "amount": amount, "reason": reason, "metadata": metadata}
        return self._call(
            "create_refund",
            key,
            params,
            lambda: self._refund(charge_id, amount, reason, metadata).outcome(),
        )

    def find_refund(
        self, *, charge_id: str, event_id: str, generation: int | None = None
    ) -> RefundOutcome | None:
        def find() -> RefundOutcome | None:
            for refund in reversed(self.refunds.values()):  # Stripe: newest first
                made_by_event = _made_by(refund.metadata, event_id, generation)
                if refund.charge_id == charge_id and made_by_event:
                    return refund.outcome()
            return None

        params = {"charge_id": charge_id, "event_id": event_id, "generation": generation}
        return self._call("find_refund", None, params, find)

    def retrieve_refund(self, refund_id: str) -> RefundOutcome:
        def retrieve() -> RefundOutcome:
            if refund_id not in self.refunds:
                raise StripeNotFound(f"No such refund: {refund_id!r}")
            return self.refunds[refund_id].outcome()

        return self._call("retrieve_refund", None, {"refund_id": refund_id}, retrieve)

    # ---- Stripe's side -----------------------------------------------------------------

    def _refund(
        self, charge_id: str, amount: int, reason: str | None, metadata: dict[str, str]
    ) -> Refund:
        charge = self.charges.get(charge_id)
        if charge is None:
            raise StripeNotFound(f"No such charge: {charge_id!r}")
        if charge.status != "succeeded":
            raise StripeInvalidRequest("Cannot refund a failed payment.")
        remaining = charge.amount - self.amount_refunded(charge_id)
        if remaining <= 0:
            # Stripe's charge_already_refunded, as the gateway translates it.
            raise PermanentError(
                f"Charge {charge_id} has already been refunded.", code="refund_exceeds_charge"
            )
        if amount > remaining:
            raise PermanentError(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge"
                f" ({remaining})",
                code="amount_too_large",
            )
        status = "pending" if self.__dict__.get("_hold_refunds") else "succeeded"
        refund_id = f"re_{uuid.uuid4().hex[:16]}"
        refund = Refund(refund_id, charge_id, amount, reason, dict(metadata), status)
        self.refunds[refund.id] = refund
        return refund


def _made_by(metadata: dict[str, str], event_id: str, generation: int | None) -> bool:
    if metadata.get("event_id") != event_id:
        return False
    return generation is None or metadata.get("generation", "0") == str(generation)
