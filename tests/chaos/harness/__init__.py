"""The chaos suite's one harness, on top of tests/conftest.py's workers, brokers and
databases:

- `workers`: the chaos settings, workers that lead their own process group (one SIGKILL
  takes a whole worker), and a pool of them on one queue that restarts exited workers as
  a supervisor would;
- `broker`: the upstream publisher, a Redis server of the test's own, a TCP proxy that
  freezes a worker's broker connection, and what a Redis broker still holds;
- `watch`: polling, the ledger's rows and counts, the workers' logs, the printed figures;
- `batches`: batches of mixed events and what each event must end as;
- `world`: what Stripe and Postgres hold per event, and the check that they agree object
  by object.
"""
