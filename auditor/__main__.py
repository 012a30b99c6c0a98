"""`python -m auditor` is the `audit` command."""

from auditor.cli import main

main()
