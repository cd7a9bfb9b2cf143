"""The request log (GET/DELETE /_fake/requests), used to count Stripe calls."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LogEntry:
    seq: int
    time: float
    method: str
    path: str
    idempotency_key: str | None
    status: int
    replayed: bool
    fault: str | None


class RequestLog:
    def __init__(self) -> None:
        self._entries: list[LogEntry] = []
        # seq keeps growing across clear() so entries are never ambiguous.
        self._seq = itertools.count(1)

    def record(
        self,
        method: str,
        path: str,
        idempotency_key: str | None,
        status: int,
        replayed: bool,
        fault: str | None,
        started: float | None = None,
    ) -> None:
        self._entries.append(
            LogEntry(
                seq=next(self._seq),
                time=started or time.time(),
                method=method,
                path=path,
                idempotency_key=idempotency_key,
                status=status,
                replayed=replayed,
                fault=fault,
            )
        )

    def query(
        self, method: str | None = None, path: str | None = None, path_prefix: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            asdict(e)
            for e in self._entries
            if (method is None or e.method == method.upper())
            and (path is None or e.path == path)
            and (path_prefix is None or e.path.startswith(path_prefix))
        ]

    def clear(self) -> None:
        self._entries.clear()
