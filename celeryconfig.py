"""Plain Celery settings for payworker. Values that depend on the environment come from
core.settings; everything here is a broker-safety default explained where it is set."""

from kombu import Exchange, Queue

from core.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
# No result backend: outcomes live in the payment_events ledger, not in Celery results.
result_backend = None
task_ignore_result = True

task_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# The tasks are registered by worker.app (tasks/registry.py), not imported by name here.
task_default_queue = _settings.queue
if _settings.is_redis:
    task_queues = (Queue(_settings.queue),)
else:
    # RabbitMQ: a replicated quorum queue that survives a broker node; publishers must
    # declare it the same way (see README, "RabbitMQ").
    task_queues = (
        Queue(
            _settings.queue,
            Exchange(_settings.queue, type="direct"),
            routing_key=_settings.queue,
            queue_arguments={"x-queue-type": "quorum"},
            durable=True,
        ),
    )
task_routes = {
    "payments.*": {"queue": _settings.queue},
    "payworker.*": {"queue": _settings.queue},
}
task_create_missing_queues = False

# Ack only after the task returned, and give the message back when a worker process dies
# mid-task: a SIGKILL must never turn into a silently acked (lost) payment.
task_acks_late = True
task_reject_on_worker_lost = True
# One message at a time per process: a prefetched message is held hostage by a busy
# (or dying) process.
worker_prefetch_multiplier = 1
# A connection loss cancels running acks_late tasks instead of letting them run while
# the broker redelivers them (the ledger absorbs it either way). Only prefork can cancel
# a running task; the thread pool would log NotImplementedError on every connection loss.
worker_cancel_long_running_tasks_on_connection_loss = _settings.pool == "prefork"

# Stripe-bound tasks mostly wait on the network: one process runs PAYWORKER_CONCURRENCY of
# them in threads (measured against prefork in docs/performance.md). Set PAYWORKER_POOL
# rather than `-P`: Celery ignores `-P prefork` when worker_pool is configured.
worker_pool = _settings.pool
worker_concurrency = _settings.concurrency

# Enforced by prefork only. The thread pool cannot interrupt a task: there the run is
# bounded by its Stripe timeouts, the rate-limit wait cap and a per-run deadline checked
# before every Stripe request (worker/bootstrap.py, tasks/stripe_http.py).
task_time_limit = _settings.task_time_limit
task_soft_time_limit = _settings.task_soft_time_limit

# Redis redelivers an unacked message after visibility_timeout; it must exceed the
# longest a message is held (checked at worker start). No message carries a countdown:
# retries are scheduled in the ledger and published by the sweeper when due.
broker_transport_options = {"visibility_timeout": _settings.visibility_timeout}
if _settings.broker_url.startswith(("redis://", "rediss://")):
    # kombu's Redis transport pops a message before recording it as unacked, so a Redis
    # restart between the two loses it; ours moves it atomically (worker/redis_transport.py).
    broker_transport = "worker.redis_transport:Transport"
if _settings.is_redis:
    # kombu looks for expired unacked messages only every interval x throttle seconds
    # (100 s by default), and a worker killed mid-scan blocks scans for the mutex's life:
    # scan often enough that a killed worker's message returns soon after the timeout.
    _scan = max(1, min(10, _settings.visibility_timeout // 4))
    broker_transport_options.update(
        unacked_restore_interval=_scan,
        unacked_restore_throttle=1,
        unacked_mutex_expire=max(_scan * 3, 10),
    )
if not _settings.is_redis:
    # Publisher confirms: a publish returns only once RabbitMQ has the message.
    broker_transport_options["confirm_publish"] = True
broker_connection_retry_on_startup = True

# Task events for Flower and the sent event for publishers that want it.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

# Nothing is scheduled: the periodic duties (the sweep, the token expiry) run in a thread of
# every worker, one leader per queue at a time (worker/leader.py), not as tasks that would
# fill Flower. A beat started anyway (`--beat`, `celery -A worker beat`) publishes nothing.
beat_scheduler = "celery.beat:Scheduler"
beat_schedule = {}

worker_hijack_root_logger = False
