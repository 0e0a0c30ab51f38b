"""`python -m rsir` is the `rsir` command."""

from rsir.cli import main

main()
