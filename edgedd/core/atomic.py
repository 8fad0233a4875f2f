"""Atomic file output: a reader sees the old file or the new one, never half of one.

Every file edgedd writes goes through :func:`write_bytes`: write to a temporary file in the same
directory, flush and fsync it, then ``os.replace`` it over the target (atomic on POSIX and Windows
within one filesystem) and fsync the directory so the rename itself survives a power cut.
This module imports only the standard library (and edgedd.core.errors) so the device side can use it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import EdgeddError


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` by a temporary sibling and a rename: ``path`` is the old file or the
    new one, never half written. Raises EdgeddError naming the path and the fix when the host
    refuses (read-only, a file where a directory should be, disk full or a file-size limit)."""
    path = Path(path)
    try:
        _write_bytes(path, data)
    except OSError as e:
        raise os_error(e, path, "write") from None


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX; elsewhere the platform's default permissions stand
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask like open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


# What to do about an OSError the host gave, by errno; the default covers the rest.
_FULL = "free space on that disk (or raise the quota or file-size limit, ulimit -f) and run again"
_FIXES = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EFBIG: _FULL,
    errno.EROFS: "that file system is read-only; choose a location on a writable one",
    errno.EACCES: "make it writable (chmod/chown) or choose another location",
    errno.EPERM: "make it writable (chmod/chown) or choose another location",
    errno.ENOTDIR: "a file stands where a directory is needed; move it or choose another location",
    errno.EEXIST: "a file stands where a directory is needed; move it or choose another location",
}


def os_error(e: OSError, path: str | os.PathLike, doing: str = "write") -> EdgeddError:
    """One line for an OSError met while doing ``doing`` to ``path``: what the host said, and the fix."""
    why = e.strerror or os.strerror(e.errno) if e.errno else type(e).__name__
    return EdgeddError(f"cannot {doing} {path} ({why})", _FIXES.get(e.errno, "choose a writable location"))


def check_writable_dir(directory: str | os.PathLike, what: str, fix: str | None = None) -> Path:
    """Create ``directory`` if needed and prove a file can be made in it, before any long work: a
    read-only or misplaced output then costs one line at the start, not a traceback at the end.
    ``what`` names it in the message ("the cache directory ..."); ``fix`` replaces the errno's fix."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edgedd-probe.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        err = os_error(e, f"{what} {directory}" if what else directory, "write in")
        raise (EdgeddError(err.problem, fix) if fix else err) from None
    return directory


def check_replaceable(
    out: Path,
    overwrite: bool,
    label: str,
    file_fix: str,
    elsewhere: str,
    not_ours: Callable[[Path], tuple[str, str] | None],
) -> None:
    """The rule for a directory edgedd writes whole (a bundle, an exported ImageFolder): ``out`` may
    be missing or empty; a non-empty one is refused unless ``overwrite``, and even then when
    ``not_ours(out)`` names a reason, as (problem, fix): edgedd replaces only what it wrote itself,
    never a user's own directory. ``label`` names ``out`` in messages ("--out X"), ``file_fix`` is
    the fix when ``out`` is a file, ``elsewhere`` what to choose instead ("--out", "directory")."""
    if out.exists() and not out.is_dir():
        raise EdgeddError(f"{label} is a file", file_fix)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise EdgeddError(
            f"{label} already exists and is not empty", f"choose another {elsewhere}, or pass --overwrite"
        )
    reason = not_ours(out)
    if reason is not None:
        raise EdgeddError(*reason)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline, so equal objects give equal bytes."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(parent: Path, name: str) -> Path:
    """A temporary sibling directory for building an output that appears by rename.

    Named ``.{name}.{pid}.tmp-XXXX`` so :func:`remove_stale_temp_dirs` can tell a directory left
    by a killed writer (its process is gone) from one a live writer is still filling.
    """
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.tmp-", dir=parent))
    except OSError as e:
        raise os_error(e, parent, "write in") from None
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def real_out(out: str | os.PathLike) -> Path:
    """``out``, or the path it points to when it is a symbolic link. An output directory that
    appears by rename (:func:`replace_dir`) must be built and renamed where it really is: renaming
    the link would replace the link, not the bundle it points to, and leave the link behind."""
    out = Path(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished directory ``tmp`` (from :func:`make_temp_dir`) at ``out`` by rename,
    replacing what ``out`` holds. The old directory is renamed to ``tmp`` + ".old" first (the
    temporary's own naming), so a kill between the two renames leaves nothing that the next
    :func:`remove_stale_temp_dirs` does not clean up."""
    if out.exists():
        old = Path(str(tmp) + ".old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stale_temp_dirs(parent: str | os.PathLike, name: str) -> int:
    """Delete the :func:`make_temp_dir` directories for ``name`` whose writer process is gone.

    Only real directories (not symlinks) matching our own naming are touched, so nothing a user
    made can be removed; a live writer's directory (same host) is left alone.
    """
    n = 0
    prefix = f".{name}."
    for p in Path(parent).glob(f".{glob.escape(name)}.*.tmp-*"):
        pid = p.name[len(prefix) :].split(".tmp-", 1)[0]
        if not pid.isdigit() or p.is_symlink() or not p.is_dir() or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    return n


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete ``.*.tmp`` files a killed writer left behind; they are never read."""
    n = 0
    for p in Path(directory).glob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n
