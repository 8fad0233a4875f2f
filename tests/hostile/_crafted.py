"""Helpers for the crafted-input suite: re-signing an edited artifact (so only the check under
test can stop it), the one-line-error assertion, and a recorder of the paths a command opens."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgedd.device import artifact as art


def resign(bundle: Path, edit) -> None:
    """Apply ``edit(meta)`` to the artifact's metadata and write it back with a correct hash."""
    a = art.load(bundle / art.ARTIFACT_FILE)  # verified, not schema-checked: it may hold an earlier crafted edit
    edit(a.meta)
    art.write(bundle / art.ARTIFACT_FILE, a.tensors, a.meta)


def one_line_error(result, *words) -> str:
    """Exit 1, no answer on stdout, exactly one `error: ...` line, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.stdout[-300:], result.stderr[-500:])
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    assert result.stdout == ""
    for w in words:
        assert w in err, (w, err)
    return err


def _drop_dac() -> tuple[str, ...] | None:
    """A prefix under which permission bits hold: () for a normal user; for root, setpriv without the
    capabilities that let root ignore them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH); None when root
    has no setpriv, and permission tests must skip (nothing can be denied to root)."""
    import shutil

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search") if setpriv else None


DROP_DAC = _drop_dac()


class OpenedPaths:
    """Every path the interpreter opens while active (audit events: builtin open, os.open, ...)."""

    def __init__(self):
        self.paths: list[str] | None = None
        sys.addaudithook(self._hook)  # hooks cannot be removed; inactive ones cost a comparison

    def _hook(self, event, args):
        if self.paths is None or event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        p = os.fspath(args[0]) if isinstance(args[0], os.PathLike) else args[0]
        if isinstance(p, (str, bytes)):
            self.paths.append(os.fsdecode(p))

    def __enter__(self):
        self.paths = []
        return self

    def __exit__(self, *exc):
        self.seen, self.paths = self.paths, None


def run_cli(args, limits=(), env=None, timeout=60, wrap=()):
    """``python -m edgedd ARGS`` in a subprocess (real stdout/stderr encodings, resource limits):
    ``limits`` are (resource.RLIMIT_*, value) pairs set in the child; ``env`` adds variables;
    ``wrap`` is a command prefix (e.g. :data:`DROP_DAC`)."""
    import resource
    import subprocess

    def cap():
        for what, value in limits:
            resource.setrlimit(what, (value, value))

    full = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "EDGEDD_PROGRESS": "0",
        "PYTHONPATH": os.pathsep.join(sys.path),
        **(env or {}),
    }
    return subprocess.run(
        [*wrap, sys.executable, "-m", "edgedd", *map(str, args)],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        env=full,
        preexec_fn=cap,
        timeout=timeout,
    )


def one_line_error_proc(p, *words) -> str:
    """:func:`one_line_error` for a :func:`run_cli` result."""
    err = p.stderr.strip()
    assert p.returncode == 1, (p.returncode, err[-800:])
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert p.stdout == ""
    for w in words:
        assert w in err, (w, err)
    return err
