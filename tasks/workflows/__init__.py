"""Plain workflows, one per message type. They know nothing of Celery: each is a chain of
short transactions and Stripe calls, resuming from the event's recovery point."""
