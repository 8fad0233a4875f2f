"""An exclusive lock on an output, held for a whole ``distill`` or ``pack``.

Without it, two processes writing one run directory could both finish "successfully" and leave a
mix of both runs. The lock is ``fcntl.flock`` on a lock file, taken without waiting: a second
process fails at once and names the holder's pid. The kernel drops a flock when its holder exits,
``kill -9`` included, so a lock file left behind never blocks anyone.

The holder deletes the file before it unlocks, and a new holder checks after locking that the
file it locked is still the one at the path (else it retries): a process that opened the old file
just before it was deleted cannot believe it holds the lock.

``fcntl`` is POSIX-only. Where it is missing (Windows) there is no lock: :func:`lock` returns a
lock that holds nothing, and not running two commands on one output is left to the user.
This module imports only the standard library (besides edgedd.core.errors).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (see the module docstring)
    fcntl = None

from .errors import EdgeddError

LOCK_FILE = ".edgedd.lock"  # inside a run directory; prepare_run_dir ignores it


class Lock:
    """A held lock on ``path`` (or nothing, without fcntl); a context manager that releases it."""

    def __init__(self, path: Path, fd: int | None, remove_dir: Path | None = None):
        self.path, self.fd, self.remove_dir = path, fd, remove_dir

    def release(self) -> None:
        if self.fd is None:
            return
        try:  # delete while still holding it (see the module docstring)
            if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = None
        if self.remove_dir is not None:  # created for this command and left empty (it failed early)
            try:
                self.remove_dir.rmdir()
            except OSError:
                pass

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock(path: Path, what: str, remove_dir: Path | None = None) -> Lock:
    """Take the lock file ``path`` (its directory must exist) for the output named ``what``
    (e.g. "--out runs/x"), or raise one line naming the process that holds it."""
    if fcntl is None:
        return Lock(path, None)
    for _ in range(10):  # retried only when the holder deleted the file between our open and lock
        try:  # O_NOFOLLOW: a lock "file" that is a symlink must not let us truncate its target
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as e:
            raise EdgeddError(
                f"cannot create the lock file {path} for {what} ({e.strerror or type(e).__name__})",
                "check that the directory is writable and that the path is not a link",
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EdgeddError(f"{path} is not a regular file, so {what} cannot be locked", "remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                raise EdgeddError(
                    f"{what} is in use by another edgedd process (pid {pid if pid.isdigit() else 'unknown'})",
                    "wait for it to finish, or choose another --out",
                ) from None
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return Lock(path, fd, remove_dir)
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
    raise EdgeddError(
        f"{what} is in use by other edgedd processes (its lock file keeps changing)", "wait for them to finish"
    )
