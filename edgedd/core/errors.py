"""Errors a user can act on.

An :class:`EdgeddError` is an *expected* failure (bad input, a missing file, a run directory that
holds another run). The CLI prints it as one line, ``error: <problem>. <fix>``, and exits 1 without
a traceback; set ``EDGEDD_TRACEBACK=1`` to see where it came from. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class EdgeddError(Exception):
    """A failure with a message that names the problem and, where there is one, the fix."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.problem + "."
        if self.fix:
            text += " " + self.fix.rstrip(".") + "."
        return " ".join(text.split())  # one line, whatever the parts held
