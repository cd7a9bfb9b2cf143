"""The chaos suite's one harness, on top of tests/conftest.py's workers, brokers and
databases:

- `workers`: the chaos settings, workers that lead their own process group (one SIGKILL
  takes a whole worker), and a pool of them on one queue that restarts exited workers as
  a supervisor would;
- `broker`: the upstream publisher, a Redis server of the test's own, a TCP proxy that
  freezes a worker's broker connection, and what a Redis broker still holds;
- `watch`: polling, the ledger's rows and counts, the workers' logs, the printed figures;
- `batches`, `batches_modern`: batches of mixed events (legacy only; legacy with
  PaymentMethods, PaymentIntents and refunds on two queues) and what each event must end as;
- `stage`: one killable worker and the asserts of the recovery-point tests;
- `storm`: the four Stripe faults of the storm scenarios;
- `world` (with `world_cards`, `world_charges`, `world_refunds`): what Stripe and Postgres
  hold per event, and the check that they agree object by object.
"""
