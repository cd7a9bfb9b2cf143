"""Celery tasks of payworker and the plain workflows, gateway and rules they call."""
