"""onnxruntime runs under a time limit, with one-line errors.

A bundle's graphs are verified by hash, but a hash says who made a graph, not what it costs: a
graph with a 10^12-iteration Loop would run for days, one that expands a tensor to 8 GiB fails
to allocate. Every ``session.run`` of the device code goes through :func:`run`, which passes an
``onnxruntime.RunOptions`` whose ``terminate`` flag a watchdog thread sets when the run passes the
time limit (onnxruntime checks it between nodes and between Loop iterations), and turns
termination and onnxruntime's own errors into an EdgeddError naming the graph and the fix.

The limit is per run (one batch of one graph): ``EDGEDD_RUN_TIMEOUT`` seconds, default
:data:`DEFAULT_LIMIT_S`, generous because a bundle's graphs take milliseconds per batch.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time

import onnxruntime as ort

from edgedd.core.errors import EdgeddError

DEFAULT_LIMIT_S = 60.0
LIMIT_ENV = "EDGEDD_RUN_TIMEOUT"


def time_limit() -> float:
    """Seconds one run may take: ``$EDGEDD_RUN_TIMEOUT`` (a positive number) or the default."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_LIMIT_S
    try:
        limit = float(raw)
    except ValueError:
        limit = math.nan
    if not (limit > 0 and math.isfinite(limit)):
        raise EdgeddError(
            f"{LIMIT_ENV}={raw!r} is not a number of seconds",
            f"set it to a positive number (default {DEFAULT_LIMIT_S:g}) or unset it",
        )
    return limit


class _Watchdog:
    """One daemon thread for the process that sets ``terminate`` on runs past their deadline.

    Arming costs a lock and a dict insert (no thread per run: the latency check times batch-1
    runs of a fraction of a millisecond); the thread is woken only when a new deadline comes
    before the one it already sleeps until, so a busy loop of runs does not wake it each time.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, ort.RunOptions]] = {}
        self._ids = itertools.count()
        self._wake = math.inf  # when the thread next looks (inf: it waits for a notify)
        self._thread: threading.Thread | None = None

    def arm(self, opts: ort.RunOptions, limit: float) -> int:
        deadline = time.monotonic() + limit
        with self._cond:
            token = next(self._ids)
            self._armed[token] = (deadline, opts)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="edgedd-ort-watchdog", daemon=True)
                self._thread.start()
            elif deadline < self._wake:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, opts) in list(self._armed.items()):
                    if deadline <= now:
                        opts.terminate = True
                        del self._armed[token]
                self._wake = min((d for d, _ in self._armed.values()), default=math.inf)
                self._cond.wait(None if self._wake == math.inf else self._wake - now)


_WATCHDOG = _Watchdog()


def run(sess: ort.InferenceSession, feeds: dict, graph: str) -> list:
    """``sess.run(None, feeds)`` under the time limit; ``graph`` names the graph in errors.

    Raises EdgeddError (one line) when the run is stopped at the limit, cannot allocate memory,
    or onnxruntime fails otherwise; the bundle's graphs are what fails, so the fix says so.
    """
    limit = time_limit()
    opts = ort.RunOptions()
    opts.log_severity_level = 4  # the error becomes our one line; onnxruntime would log it too
    token = _WATCHDOG.arm(opts, limit)
    try:
        return sess.run(None, feeds, opts)
    except MemoryError:
        raise _out_of_memory(graph) from None
    except Exception as e:  # onnxruntime's own exception types (Fail, RuntimeException, InvalidArgument, ...)
        if opts.terminate:
            raise EdgeddError(
                f"onnxruntime stopped {graph} after the time limit of {limit:g} s per batch",
                "a bundle's graphs take milliseconds per batch, so this one may be altered (re-copy the bundle "
                f"or re-run edgedd pack); on a slow device raise the limit with {LIMIT_ENV}=SECONDS",
            ) from None
        if (
            "allocate" in str(e).lower()
        ):  # onnxruntime's arena: "Failed to allocate memory for requested buffer of size N"
            raise _out_of_memory(graph) from None
        raise EdgeddError(
            f"onnxruntime failed running {graph} ({type(e).__name__}: {_status(e)})",
            "the bundle may be altered or made for another onnxruntime; re-copy it or re-run edgedd pack",
        ) from None
    finally:
        _WATCHDOG.disarm(token)


def _out_of_memory(graph: str) -> EdgeddError:
    return EdgeddError(
        f"onnxruntime ran out of memory running {graph}",
        "free memory or use a smaller batch; a bundle's graphs need little, so an altered one may ask for far more "
        "(re-copy the bundle or re-run edgedd pack)",
    )


def _status(e: Exception, limit: int = 160) -> str:
    """The part of onnxruntime's message that says what went wrong, shortened: it can quote node names from the
    graph.
    """
    text = str(e).split("Status Message:", 1)[-1].strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
