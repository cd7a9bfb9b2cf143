"""`payworker demo`: one real worker processes a batch of users, cards and charges against the
local Stripe fake (or a Stripe test key); the outcome is then read back from Postgres.

- `batch`: what is published, phase by phase, and what each event is expected to end as;
- `run`: the Stripe choice, migrations, the worker subprocess, publishing and waiting;
- `report`: the tables read from Postgres and the checks behind the exit code.
"""

from worker.demo.run import run_demo

__all__ = ["run_demo"]
