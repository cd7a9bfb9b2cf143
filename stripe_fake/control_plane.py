"""The controller's calls to the fake's own control plane under ``/_fake/``.

Reset, the request log, fault injection, and playing the customer through
3-D Secure. A mixin of :class:`stripe_fake.control.FakeStripe`.
"""

from __future__ import annotations

from typing import Any

from .control_http import FakeStripeHttp, _q


class ControlPlane(FakeStripeHttp):
    """Reset, request log, faults and 3-D Secure of the fake server."""

    def reset(self) -> None:
        self._request("POST", "/_fake/reset")

    def requests(
        self, method: str | None = None, path: str | None = None, path_prefix: str | None = None
    ) -> list[dict[str, Any]]:
        query = {
            k: v for k, v in (("method", method), ("path", path), ("path_prefix", path_prefix)) if v
        }
        result: list[dict[str, Any]] = self._request("GET", "/_fake/requests", query=query)
        return result

    def count(
        self, method: str | None = None, path: str | None = None, path_prefix: str | None = None
    ) -> int:
        return len(self.requests(method, path, path_prefix))

    def clear_requests(self) -> None:
        self._request("DELETE", "/_fake/requests")

    def inject(
        self,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        delay: float = 0.0,
        when: str = "before",
        times: int | None = None,
        probability: float = 1.0,
        headers: dict[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        """Add a fault rule; `path` is a regex (re.search). Returns its id."""
        spec = {
            "method": method,
            "path": path,
            "status": status,
            "delay": delay,
            "when": when,
            "times": times,
            "probability": probability,
            "headers": headers or {},
            "name": name,
        }
        return str(self._request("POST", "/_fake/faults", json_body=spec)["id"])

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/_fake/faults")
        return result

    def clear_faults(self) -> None:
        self._request("DELETE", "/_fake/faults")

    def authenticate_payment_intent(self, pi_id: str, success: bool = True) -> dict[str, Any]:
        """Play the customer completing (or failing) 3-D Secure for a
        PaymentIntent in requires_action; returns the PaymentIntent."""
        path = f"/_fake/payment_intents/{_q(pi_id)}/authenticate"
        result: dict[str, Any] = self._request("POST", path, json_body={"success": success})
        return result

    def authenticate_setup_intent(self, si_id: str, success: bool = True) -> dict[str, Any]:
        """Likewise for a SetupIntent in requires_action."""
        path = f"/_fake/setup_intents/{_q(si_id)}/authenticate"
        result: dict[str, Any] = self._request("POST", path, json_body={"success": success})
        return result
