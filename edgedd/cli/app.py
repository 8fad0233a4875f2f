"""The ``edgedd`` Typer app and what every command shares: streams, exit codes, errors, the host check.

Streams (docs/CLI.md): results go to stdout, as text or, with ``--json``, as one JSON object with a
``"schema": "edgedd.<command>/1"`` key (docs/JSON.md); progress, warnings and errors go to stderr.
``EDGEDD_PROGRESS=0`` silences progress (edgedd.core.progress).

Exit codes: 0 ok; 1 could not run (an :class:`edgedd.core.errors.EdgeddError`: bad input, unreadable
bundle, missing host install), printed as one ``error: ...`` line; 2 usage (bad option values, as
Typer/Click do); 3 ran, but a check failed (deploy-check). ``EDGEDD_TRACEBACK=1`` re-raises with
the traceback.

The commands: :mod:`edgedd.cli.host` (the host commands, and the entry point ``edgedd.cli.host:main``) and
:mod:`edgedd.cli.device` (the device commands). A device install imports this module.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import sys
import warnings

import typer

from edgedd.core.errors import EdgeddError
from edgedd.core.terminal import printable
from edgedd.core.terminal import say as _say

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED = 0, 1, 2, 3
JSON_SCHEMA_VERSION = 1
HOST_INSTALL = "pip install 'edgedd[host]' (from a clone: pip install -e '.[host]')"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Dataset distillation on frozen self-supervised backbones, packaged for edge devices.",
    epilog="[host]: needs the host install (torch, timm): " + HOST_INSTALL + ". The other commands run on a "
    "device install (numpy, onnxruntime). Exit codes: 0 ok, 1 could not run, 2 usage, 3 a check failed.",
)


def _result(msg: str) -> None:
    """Human-readable results: stdout. The report's own newlines and tabs stay; every other control
    character is shown escaped (names in it should also be passed through :func:`printable` where
    they are put in, so a newline inside a class name cannot forge a line)."""
    print(printable(msg, keep="\n\t"), flush=True)


def _print_json(command: str, obj: dict) -> None:
    """One JSON object on stdout, tagged with its documented shape (docs/JSON.md)."""
    # Strict JSON (RFC 8259 has no NaN/Infinity tokens): a number that is not finite is printed as null.
    # json.dump writes chunk by chunk, so a Streamed list is printed without being held in memory.
    out = _finite({"schema": f"edgedd.{command}/{JSON_SCHEMA_VERSION}", **obj})
    json.dump(out, sys.stdout, indent=2, sort_keys=True, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


class Streamed(list):
    """A JSON array whose ``n`` items ``make()`` produces when it is printed, one at a time (the
    answer is computed before printing starts; only its formatting is deferred)."""

    def __init__(self, make, n: int):
        super().__init__()
        self._make, self._n = make, n

    def __iter__(self):
        return (_finite(item) for item in self._make())

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0


def _finite(obj):
    """``obj`` with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Streamed):
        return obj  # walked as it is printed
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


HOST_MODULES = ("torch", "timm")


def _need_host(command: str, modules: tuple[str, ...] = HOST_MODULES) -> None:
    """Import the host stack up front, so a device install gets one line with the fix, not a traceback."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in modules:
                raise
            raise EdgeddError(f"{command} needs the host install ({', '.join(modules)}): {HOST_INSTALL}") from None
        except ImportError as e:  # installed but broken (a missing shared library, a half-removed package)
            raise EdgeddError(
                f"{command} needs the host install ({', '.join(modules)}), and importing {name} failed "
                f"({type(e).__name__}: {e})",
                f"reinstall it: {HOST_INSTALL}",
            ) from None


def handle_errors(fn):
    """Turn an EdgeddError into `error: ...` + exit 1, keeping the signature for Typer."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.formatwarning = lambda message, category, *a, **k: f"warning: {printable(str(message))}\n"
        try:
            return fn(*args, **kwargs)
        except EdgeddError as e:
            if os.environ.get("EDGEDD_TRACEBACK"):
                raise
            # An error every torchrun rank raises together (Dist.on_main) is said once, by rank 0.
            if not getattr(e, "all_ranks", False) or os.environ.get("RANK", "0") == "0":
                _say(f"error: {e.one_line()}")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            _say("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from edgedd import __version__

        print(f"edgedd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Dataset distillation on frozen self-supervised backbones, packaged for edge devices."""
