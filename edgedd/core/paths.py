"""What is at a path the user gave, said right: missing, a directory, a FIFO, unreadable.

``Path.is_file()`` is False for all of these alike, so "does not exist" used to be the message for
a directory, a FIFO or a folder without read permission too. Standard library only: the device
side uses it (inputs to predict, inspect, deploy-check) as well as the host.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import EdgeddError

CACHE_ENV = "EDGEDD_CACHE_DIR"


def cache_root() -> Path:
    """``$EDGEDD_CACHE_DIR``, else ``~/.cache/edgedd`` (Stage I entries and converted zoo weights)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgedd")


# The longest class name the ImageFolder scan accepts and a bundle's artifact may hold (its schema
# checks the same constant): a name is shown in every answer, so a megabyte-long one is refused.
MAX_CLASS_NAME_CHARS = 256

PERMISSION_FIX = "make it readable (chmod/chown) or run as a user who can read it"
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFile(OSError):
    """Something other than a regular file where one is expected (an OSError: image loaders count it as unreadable)."""

    def __init__(self, path, kind: str):
        super().__init__(f"{path} is {kind}, not a file")
        self.kind = kind


def kind_of(mode: int) -> str:
    """'a file', 'a directory', 'a FIFO (named pipe)', ... for a stat mode."""
    return next((name for test, name in _KINDS if test(mode)), "a file" if stat.S_ISREG(mode) else "not a regular file")


def _stat(path: Path, what: str, fix: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise EdgeddError(f"{what} {path} does not exist", fix) from None
    except PermissionError:  # a parent directory without search (x) permission
        raise EdgeddError(f"cannot reach {what} {path} (permission denied)", PERMISSION_FIX) from None
    except OSError as e:  # ENOTDIR (a file in the middle of the path), ELOOP, ENAMETOOLONG, ...
        raise EdgeddError(
            f"cannot reach {what} {path} ({os.strerror(e.errno) if e.errno else type(e).__name__})", fix
        ) from None


def require_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    """``path`` as a Path if it is a readable regular file; otherwise EdgeddError saying which of missing,
    not a file (and what it is) or permission denied it is."""
    path = Path(path)
    mode = _stat(path, what, fix).st_mode
    if not stat.S_ISREG(mode):
        raise EdgeddError(f"{what} {path} is {kind_of(mode)}, not a file", fix)
    if not os.access(path, os.R_OK):
        raise EdgeddError(f"cannot read {what} {path} (permission denied)", PERMISSION_FIX)
    return path


def require_dir(path: str | os.PathLike, what: str, fix: str) -> Path:
    """``path`` as a Path if it is a directory this process can list; otherwise EdgeddError saying why not."""
    path = Path(path)
    mode = _stat(path, what, fix).st_mode
    if not stat.S_ISDIR(mode):
        raise EdgeddError(f"{what} {path} is {kind_of(mode)}, not a directory", fix)
    if not os.access(path, os.R_OK | os.X_OK):
        raise EdgeddError(f"cannot read {what} {path} (permission denied)", PERMISSION_FIX)
    return path


def open_regular(path: str | os.PathLike):
    """Open ``path`` for binary reading only if it is a regular file.

    Opened non-blocking and checked on the open descriptor: a FIFO named ``x.png`` would block
    ``open()`` until a writer came (forever), and a check by path before opening could be raced.
    Raises NotRegularFile (an OSError) for anything else, FileNotFoundError/PermissionError as open does.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, kind_of(mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def refuse_overlap(out: str | os.PathLike, out_what: str, data: str | os.PathLike, data_what: str) -> None:
    """Refuse an output directory that is the data directory, lies inside it or holds it.

    Inside: the next scan of the data would take the output for a class (or count its images twice);
    holding it: replacing the output (--overwrite) would delete the data. Compared as real paths,
    symlinks resolved, so a link to the data is caught; ``data`` that is no directory (an
    ``embedded:`` name, a missing path: its own check reports it) is not compared.
    """
    if not os.path.isdir(data):
        return
    o, d = Path(os.path.realpath(out)), Path(os.path.realpath(data))
    if o == d or o.is_relative_to(d):
        raise EdgeddError(
            f"{out_what} {out} is inside {data_what} {data}",
            f"write it outside {data}: a scan of the data would take it for a class",
        )
    if d.is_relative_to(o):
        raise EdgeddError(
            f"{data_what} {data} is inside {out_what} {out}", f"write {out_what} somewhere that does not hold the data"
        )
