"""Chaos scenarios: real processes killed and services restarted mid-run (issue 3)."""
