"""Engines and sessions, built per process on first use (never at import)."""

from __future__ import annotations

import os
import select
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError

_engines: dict[tuple[int, str], Engine] = {}
_lock = threading.Lock()  # threads of one worker process share its engines


def get_engine(url: str, *, pool_size: int = 5, max_overflow: int = 5) -> Engine:
    """The engine for `url` in this process; a forked child gets its own pool. The pool
    sizes apply when this process first asks for `url`."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = create_engine(
                    url,
                    # No pool_pre_ping: a round trip per checkout costs more CPU than a
                    # charge's own statements. A connection whose server hung up is caught
                    # at checkout without one (_drop_hung_up); one that dies unannounced
                    # fails its first statement, which the tasks retry like any DB error.
                    pool_size=pool_size,
                    max_overflow=max_overflow,
                    pool_recycle=1800,
                    # Statement parameters (emails, names, tokens' masks) never go into an
                    # exception's text, hence never into `last_error` or a log line.
                    hide_parameters=True,
                )
                event.listen(engine, "checkout", _drop_hung_up)
                _engines[key] = engine
    return engine


def _drop_hung_up(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection that the server has closed: a killed backend or a
    restarted Postgres sends its farewell (or EOF) to an idle connection, so its socket
    is readable, which an idle healthy connection's never is. The pool then opens a fresh
    one. One poll() with no timeout, no round trip.

    Raises:
        DisconnectionError: the connection is closed or its server hung up.
    """
    if getattr(dbapi_connection, "closed", False):
        raise DisconnectionError("connection already closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        raise DisconnectionError("the server closed this pooled connection")


def dispose_all() -> None:
    """Drop every pool of this process (after a fork, or at shutdown)."""
    for key in list(_engines):
        _engines.pop(key).dispose(close=False)
