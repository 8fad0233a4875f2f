"""Text for a terminal: names from files and bundles shown, never acted on.

Class names, file names and messages that quote them come from data edgedd did not write: a class
folder or a bundle's ``class_names`` may hold ANSI escapes (recolour, move the cursor, retitle the
terminal) or newlines (forge extra output lines), and a file name may not be UTF-8 at all (Python
holds its bytes as lone surrogates, which a strict UTF-8 stdout refuses with a traceback). Every
human-readable line the CLI prints goes through :func:`printable`; ``--json`` output stays exact
(``json.dumps`` escapes the same characters in its own, reversible way).
"""

from __future__ import annotations

import sys


def printable(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character written as a Python-style escape (``\\x1b``,
    ``\\n``, ``\\u2028``), a non-UTF-8 byte of a file name (surrogateescape) as ``\\xNN``, and the
    characters in ``keep`` (e.g. the newlines and tabs of a multi-line report) left alone."""
    if text.isprintable():  # the common case: nothing to do
        return text
    return "".join(ch if ch.isprintable() or ch in keep else _escape(ch) for ch in text)


def say(msg: str) -> None:
    """A warning, status or error line: stderr, so stdout carries only results. One line: whatever
    a name in it holds (a newline, an ANSI escape, a non-UTF-8 byte) is shown escaped."""
    print(printable(msg), file=sys.stderr, flush=True)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00 of a non-UTF-8 name
        return f"\\x{code - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")
