"""`python -m worker.cli`: the `payworker` command without its console script."""

from worker.cli import main

main()
