"""The rules in force, reloadable without a restart: a bad new file keeps the old rules.

``RuleSetHolder`` reads rule files (or directories of them) once at start
(a bad file there is an error: nothing runs on rules it cannot read), then
``reload()`` on SIGHUP (``install_sighup``) or when ``poll()`` sees a file's
modification time, size or the set of files change. A reload that finds any
problem logs every one (file, line, field) and keeps the rules it had;
``version`` grows with each successful reload, so a consumer (the dataflow's
rule step) knows when to take the new ``RuleSet``.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "r.yaml").write_text("rules:\\n  - {name: a, kind: anomaly, metric: gmv}\\n")
>>> h = RuleSetHolder([d])
>>> [r.name for r in h.current.rules], h.version
(['a'], 1)
>>> _ = (d / "r.yaml").write_text("rules:\\n  - {name: a, kind: anomaly, metric: nope}\\n")
>>> import contextlib, io
>>> with contextlib.redirect_stdout(io.StringIO()):  # the error is logged too
...     problems = h.reload()
>>> [(p.line, p.field) for p in problems]
[(2, 'rules[0](a).metric')]
>>> [r.name for r in h.current.rules], h.version
(['a'], 1)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType

from linkpulse.alerts.rules import Problem, RuleFileError, RuleSet, check_rule_files, rule_files
from linkpulse.logging import get_logger

__all__ = ["RuleSetHolder", "install_sighup"]

log = get_logger(__name__)


class RuleSetHolder:
    """The current ``RuleSet`` of some rule files, and how to reload it safely."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths: tuple[Path, ...] = tuple(Path(p) for p in paths)
        self._lock = threading.Lock()
        self._pending_signal = False
        rules, problems = check_rule_files(self.paths)
        if problems:
            raise RuleFileError(problems)
        self._current = rules
        self._stamp = self._fingerprint()
        self.version = 1
        self.last_problems: list[Problem] = []
        self._looked = time.monotonic()

    @property
    def current(self) -> RuleSet:
        """The rules in force (the last set that loaded without a problem)."""
        if self._pending_signal:
            self._pending_signal = False
            self.reload()
        return self._current

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for f in rule_files(self.paths):
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(f), -1, -1))
        return tuple(out)

    def reload(self) -> list[Problem]:
        """Read the files again; on any problem keep the old rules and return the problems."""
        with self._lock:
            stamp = self._fingerprint()
            rules, problems = check_rule_files(self.paths)
            self._stamp = stamp
            self.last_problems = problems
            if problems:
                log.error(
                    "alert rules not reloaded: the old rules stay in force",
                    problems=[str(p) for p in problems],
                )
                return problems
            self._current = rules
            self.version += 1
            log.info("alert rules reloaded", rules=len(rules.rules), files=list(rules.files))
            return []

    def poll(self) -> bool:
        """Reload if a file changed since the last look; True when new rules are in force."""
        if self._fingerprint() == self._stamp:
            return False
        before = self.version
        self.reload()
        return self.version != before

    def refresh(self, every_s: float) -> RuleSet:
        """``current``, looking for changed files at most once every ``every_s`` seconds.

        The monotonic clock only decides when to look at the files; which
        rules are in force never depends on it otherwise.
        """
        now = time.monotonic()
        if every_s >= 0 and now - self._looked >= every_s:
            self._looked = now
            self.poll()
        return self.current

    def request_reload(self) -> None:
        """Ask for a reload at the next ``current`` (safe from a signal handler)."""
        self._pending_signal = True


def install_sighup(holders: Sequence[RuleSetHolder]) -> bool:
    """Reload ``holders`` on SIGHUP (main thread only; False where signals can't be set)."""

    def on_hup(signum: int, frame: FrameType | None) -> None:
        for h in holders:
            h.request_reload()

    try:
        signal.signal(signal.SIGHUP, on_hup)
    except (ValueError, AttributeError, OSError):
        return False
    return True
