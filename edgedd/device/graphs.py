"""One graph of a bundle, read safely: a bare file name inside the bundle, no symlink, a regular file
no larger than protobuf allows, its sha256 checked on the bytes read, then an onnxruntime session
over those bytes (never the path). :mod:`edgedd.device.bundle` opens every graph this way, and
:mod:`edgedd.device.finetune` the fp32 backbone it fits on."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import onnxruntime as ort

from edgedd.core.errors import EdgeddError

from .onnx_scan import Malformed, uses_external_data
from .ort_scan import Malformed as OrtMalformed
from .ort_scan import is_ort_format
from .ort_scan import uses_external_data as ort_uses_external_data

# A graph's file name must be a bare name inside the bundle: one rule, the schema's (checked on
# every read of the artifact; read_graph checks it again before touching the file system).
from .schema import GRAPH_NAME

MAX_GRAPH_BYTES = (
    2**31
)  # protobuf's own limit: no valid self-contained graph is larger (a bundle refuses external data)


def read_graph(directory: Path, role: str, entry) -> bytes:
    """The verified bytes of one graph: bare name checked first, file read once, sha256 on those bytes.

    Every name that is not a bare file name gets the same message, without touching the file
    system, so a crafted artifact learns nothing about what exists outside the bundle. The file
    is opened without following a symlink and must be a regular file (a FIFO would hang).
    """
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not GRAPH_NAME.fullmatch(name):
        raise EdgeddError(
            f"the artifact in {directory} names its {role} graph by something other than a file name inside the bundle",
            "the bundle was altered; re-copy it or re-run edgedd pack",
        )
    path = directory / name
    try:
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        )
    except FileNotFoundError:
        raise EdgeddError(f"bundle {directory} is missing {name}", "copy the whole bundle directory") from None
    except OSError as e:  # ELOOP: a symlink, which could lead outside the bundle; EACCES; ...
        why = "a symbolic link" if e.errno == errno.ELOOP else os.strerror(e.errno) if e.errno else type(e).__name__
        raise EdgeddError(
            f"cannot read {path} ({why})", "graph files must be readable regular files inside the bundle; re-copy it"
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise EdgeddError(
                f"{path} is not a regular file", "graph files must be regular files inside the bundle; re-copy it"
            )
        if st.st_size > MAX_GRAPH_BYTES:  # refused from its size, before reading it into memory
            raise EdgeddError(
                f"{path} is {st.st_size} bytes, more than an ONNX graph can be (2 GiB)",
                "the bundle was altered; re-copy it or re-run edgedd pack",
            )
        data = f.read()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise EdgeddError(
            f"{path} does not match the artifact (sha256 mismatch)", "the bundle was altered or mixed up; re-copy it"
        )
    return data


def load_session(
    directory: Path, role: str, entry, providers: list[str], threads: int | None = None, runtime: str = "onnx"
):
    """One verified graph (:func:`read_graph`: the hashed bytes, no external data) as a session of ``runtime``."""
    return session_from_bytes(
        directory / entry["file"], read_graph(directory, role, entry), providers, threads, runtime
    )


def session_from_bytes(
    path: Path, data: bytes, providers: list[str], threads: int | None = None, runtime: str = "onnx"
):
    """A session on a graph's verified bytes (``path`` names it in errors); ``threads``: intra-op threads
    (None: default).

    ``runtime`` "ort": an ORT-format file, "onnx": an ONNX one (each refused as the other, so a file is
    always checked by the walker of its own format); "litert": a .tflite file (edgedd.device.litert)."""
    if runtime == "litert":
        from .litert import LiteRTSession

        return LiteRTSession(data, str(path), threads)
    kind = "ORT-format" if runtime == "ort" else "ONNX"
    try:
        if is_ort_format(data) != (runtime == "ort"):
            raise Malformed("the other format")
        external = ort_uses_external_data(data) if runtime == "ort" else uses_external_data(data)
    except (Malformed, OrtMalformed):  # refused too: what this walker cannot read, it cannot vouch for
        raise EdgeddError(
            f"{path} is not a valid {kind} model", "the bundle was altered; re-copy it or re-run edgedd pack"
        ) from None
    if external:
        raise EdgeddError(
            f"{path} keeps tensors in external files, which a bundle never does",
            "the bundle was altered; re-copy it or re-run edgedd pack",
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # an ORT-format file's saved runtime optimisations are replayed only when asked for, which
    # onnxruntime advises for trusted models only: never asked for here (the graph still runs as converted)
    if threads:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime's own exception types
        raise EdgeddError(
            f"onnxruntime cannot load {path} ({type(e).__name__})",
            "check the onnxruntime version (see the bundle's meta)",
        ) from None
    n_in, n_out = len(sess.get_inputs()), len(sess.get_outputs())
    if (n_in, n_out) != (1, 1):  # pack writes one of each; a hidden extra output would be computed on every run
        raise EdgeddError(
            f"{path} has {n_in} input(s) and {n_out} output(s), not one of each as every bundle graph",
            "the bundle was altered; re-copy it or re-run edgedd pack",
        )
    return sess
