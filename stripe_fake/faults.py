"""Fault and latency injection rules (POST /_fake/faults)."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal, cast

When = Literal["before", "after"]


class FaultSpecError(ValueError):
    """The JSON given to POST /_fake/faults is not a valid rule."""


@dataclass
class Fault:
    id: str
    name: str
    method: str | None
    path: str | None
    status: int | None
    delay: float
    when: When
    times: int | None  # remaining firings; None = unlimited
    probability: float
    headers: dict[str, str] = field(default_factory=dict)
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method != method.upper():
            return False
        return self.path is None or re.search(self.path, path) is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "delay": self.delay,
            "when": self.when,
            "times": self.times,
            "remaining": self.times,
            "probability": self.probability,
            "headers": self.headers,
            "fired": self.fired,
        }


def error_body(status: int, fault_name: str) -> dict[str, Any]:
    """A Stripe-shaped error body, so the SDK raises the matching class."""
    message = f"Injected fault {fault_name!r}: HTTP {status}"
    if status == 429:
        return {"error": {"type": "rate_limit_error", "code": "rate_limit", "message": message}}
    return {"error": {"type": "api_error", "message": message}}


class FaultRegistry:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, spec: dict[str, Any]) -> Fault:
        try:
            fault = self._parse(spec)
        except (TypeError, ValueError, re.error) as e:
            raise FaultSpecError(str(e)) from e
        self._faults.append(fault)
        return fault

    def _parse(self, spec: dict[str, Any]) -> Fault:
        known = {
            "method",
            "path",
            "status",
            "delay",
            "when",
            "times",
            "probability",
            "headers",
            "name",
        }
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)}")
        when = spec.get("when") or "before"
        if when not in ("before", "after"):
            raise ValueError("when must be 'before' or 'after'")
        path = spec.get("path")
        if path is not None:
            re.compile(path)  # fail now, not on the next request
        status = spec.get("status")
        delay = float(spec.get("delay") or 0.0)
        times = spec.get("times")
        probability = float(spec.get("probability", 1.0))
        if status is None and delay <= 0:
            raise ValueError("a fault needs a status or a delay")
        if delay < 0 or not 0.0 <= probability <= 1.0:
            raise ValueError("delay must be >= 0, probability in 0..1")
        if times is not None and int(times) < 0:
            raise ValueError("times must be >= 0 or null")
        fid = f"fault_{next(self._ids)}"
        method = spec.get("method")
        return Fault(
            id=fid,
            name=str(spec.get("name") or fid),
            method=str(method).upper() if method else None,
            path=path,
            status=int(status) if status is not None else None,
            delay=delay,
            when=cast(When, when),
            times=int(times) if times is not None else None,
            probability=probability,
            headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
        )

    def pick(self, when: When, method: str, path: str) -> Fault | None:
        """First matching rule of phase `when` that fires; consumes one use.

        A rule that loses its probability roll is not consumed, and the
        next matching rule gets its chance.
        """
        for fault in self._faults:
            if fault.when != when or not fault.matches(method, path):
                continue
            if fault.probability < 1.0 and random.random() >= fault.probability:
                continue
            if fault.times is not None:
                fault.times -= 1
            fault.fired += 1
            return fault
        return None

    def list(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self._faults]

    def clear(self) -> None:
        self._faults.clear()
