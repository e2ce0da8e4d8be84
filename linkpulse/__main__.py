"""``python -m linkpulse`` runs the command-line tool."""

from __future__ import annotations

from linkpulse.cli import main

main()
