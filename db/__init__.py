"""Postgres schema, sessions and migrations of payworker."""
