"""`python -m chronos` is the `chronos` command."""

from __future__ import annotations

from chronos.cli import main

main()
