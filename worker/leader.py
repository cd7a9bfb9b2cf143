"""Every worker takes part in its queue's periodic duties; one of them at a time leads.

A thread of the worker's main process keeps one database session of its own and tries, every
sweep period, to take the queue's leadership lock (db/duties.py). The worker that holds it
runs each duty when due (tasks/maintenance.py), each run in one transaction on that session
that also records it in `payworker_duties`. When the leader dies, its session ends, Postgres
releases the lock, and another worker's next try takes it over: within one sweep period of a
kill, within about a lease when the leader's host or network vanished (TCP keepalives).

A leader that loses its session stops leading at once. One whose duties keep failing (the
broker unreachable from it, say) steps down for a few periods, so that another worker can
try. Running a duty twice at once would be harmless (a sweep skips the rows another one
holds): the lock saves the work, it does not guard correctness."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from core.redact import redact
from core.settings import Settings
from db import duties as records
from tasks.maintenance import Duty

logger = logging.getLogger("payworker")

# A leader whose duties failed this many runs in a row steps down for as many sweep
# periods: a leader cut off from the broker would otherwise hold the lock and publish
# nothing for as long as its database session lives.
MAX_FAILED_RUNS = 3
# How long a stopping worker waits for a duty run in progress before it exits anyway
# (the lock goes with the process).
STOP_TIMEOUT = 10.0


class Leader:
    """One worker's part in its queue's duties: tries to lead, and leads while it can."""

    def __init__(self, settings: Settings, identity: str, duties: list[Duty]) -> None:
        self.queue = settings.queue
        self.identity = identity  # "nodename:pid", as `payworker status` shows it
        self._url = settings.database_url
        self._dead_after = settings.lease_seconds
        self._interval = settings.sweep_seconds
        self._duties = duties
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="payworker-leader", daemon=True)
        # Our own session, never pooled, never shared. A pool process forked later inherits
        # these objects but not the thread, and never closes them: psycopg closes a
        # connection only in the process that opened it, so the child cannot end our session.
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self.leading = False
        self._due: dict[str, float] = {}
        self._failed_runs = 0
        self._sit_out_until = 0.0
        self._unreachable = False  # logged once per outage

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop trying; a leader records that it left and releases the lock."""
        self._stopping.set()
        self._thread.join(STOP_TIMEOUT)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except SQLAlchemyError as exc:  # the session is gone or unusable: so is the lock
                self._drop(exc)
            except Exception as exc:  # a bug: never let it end the thread, start afresh
                logger.exception("periodic duties of queue %s: unexpected error", self.queue)
                self._drop(exc)
            self._stopping.wait(self._interval)
        self._resign()

    def _tick(self) -> None:
        if not self.leading and not self._try_to_lead():
            return
        conn = self._session()
        for duty in self._duties:
            if self._stopping.is_set() or not self.leading:
                return
            if time.monotonic() >= self._due.get(duty.name, 0.0):
                self._due[duty.name] = time.monotonic() + duty.period
                self._run(conn, duty)

    def _try_to_lead(self) -> bool:
        if time.monotonic() < self._sit_out_until:
            return False
        conn = self._session()
        with conn.begin():
            if not records.try_lead(conn, self.queue):
                return False
            periods = {duty.name: duty.period for duty in self._duties}
            records.take_leadership(conn, self.queue, periods, self.identity)
        self.leading, self._due, self._failed_runs = True, {}, 0
        logger.info("leading the periodic duties of queue %s as %s", self.queue, self.identity)
        return True

    def _run(self, conn: Connection, duty: Duty) -> None:
        try:
            with conn.begin():
                result = duty.run(conn)
                records.record_run(conn, self.queue, duty.name, result)
        except SQLAlchemyError:
            raise
        except Exception as exc:  # the broker, most likely: the transaction rolled back
            error = redact(f"{type(exc).__name__}: {exc}")[:500]
            logger.warning("periodic duty %s of queue %s failed: %s", duty.name, self.queue, error)
            with conn.begin():
                records.record_failure(conn, self.queue, duty.name, error)
            self._failed_runs += 1
            if self._failed_runs >= MAX_FAILED_RUNS:
                self._step_down()
        else:
            self._failed_runs = 0

    def _session(self) -> Connection:
        if self._conn is None:
            if self._engine is None:
                self._engine = records.leadership_engine(
                    self._url, queue=self.queue, dead_after=self._dead_after
                )
            self._conn = self._engine.connect()
            if self._unreachable:
                logger.info("database reachable again for the duties of queue %s", self.queue)
            self._unreachable = False
        return self._conn

    def _step_down(self) -> None:
        """Let another worker lead for a while: our duties keep failing."""
        logger.warning(
            "stepping down as leader of queue %s after %d failed runs",
            self.queue, self._failed_runs,
        )  # fmt: skip
        self._release()
        self._sit_out_until = time.monotonic() + MAX_FAILED_RUNS * self._interval

    def _drop(self, exc: Exception) -> None:
        """The session failed: close it. Its lock is released (or already was)."""
        error = redact(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])[:300]
        if self.leading:
            logger.warning("lost the leadership of queue %s: %s", self.queue, error)
        elif not self._unreachable:
            logger.warning("cannot take part in the duties of queue %s: %s", self.queue, error)
        self._unreachable = True
        self.leading = False
        self._close()

    def _release(self) -> None:
        """Leave cleanly: clear our name, unlock, close the session."""
        conn, was_leading = self._conn, self.leading
        self.leading = False
        if conn is not None and was_leading:
            # If this fails, closing the session below releases the lock all the same.
            with suppress(SQLAlchemyError), conn.begin():
                records.leave(conn, self.queue, self.identity)
                records.step_down(conn, self.queue)
        self._close()

    def _resign(self) -> None:
        if self.leading:
            logger.info("leaving the lead of queue %s", self.queue)
        self._release()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(SQLAlchemyError):
                conn.close()
