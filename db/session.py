"""Engines and sessions, built per process on first use (never at import)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

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
                    pool_pre_ping=True,  # a connection killed by a Postgres restart is replaced
                    pool_size=pool_size,
                    max_overflow=max_overflow,
                    pool_recycle=1800,
                )
                _engines[key] = engine
    return engine


def dispose_all() -> None:
    """Drop every pool of this process (after a fork, or at shutdown)."""
    for key in list(_engines):
        _engines.pop(key).dispose(close=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on any error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as session:
        yield session
