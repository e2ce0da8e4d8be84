"""Rich consoles for the CLI that stay readable when the output is piped or redirected.

On a terminal, rich fits tables to its width. Without one (``| tee``, ``> file``,
CI logs) rich would assume 80 columns and fold every long cell (URLs, errors)
across lines; there is no width to fit there, so these consoles use a very wide
one and a table row stays one line. ``COLUMNS``, when set, still wins.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Wide enough that no table row folds; rich pads nothing to it (tables take
# their natural width, text is not justified).
PIPE_WIDTH = 10_000


def make_console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr): terminal width on a terminal, unbounded otherwise.

    >>> make_console().width >= 80
    True
    """
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPE_WIDTH if wide else None)
