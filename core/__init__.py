"""What every layer of payworker may use: settings, the one error module, redaction.

Nothing here imports `worker`, `tasks` or `db` (the import contracts in pyproject.toml)."""
