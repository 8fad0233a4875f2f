"""A bundle, verified and open: the artifact checked, every graph read once and hashed, the
onnxruntime sessions loaded from those same bytes. :class:`Bundle` is the device side's Python API.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import EdgeddError
from ..paths import require_dir, require_file
from . import artifact as art
from .finetune import load_finetuned
from .infer import BATCH, classify, softmax, top_indices
from .inputs import as_image_list, edge_canvas, is_image_list, prepare_canvases
from .onnx_scan import Malformed, uses_external_data

# A graph's file name must be a bare name inside the bundle: one rule, the schema's (checked on
# every read of the artifact; read_graph checks it again before touching the file system).
from .schema import GRAPH_NAME
from .sidecar import MAX_THREADS, read_settings


ROLES = ("backbone", "projector", "classifier")
MAX_GRAPH_BYTES = 2**31  # protobuf's own limit: no valid self-contained graph is larger (a bundle refuses external data)


@dataclass
class Bundle:
    """A verified bundle with its onnxruntime sessions open: the device side's Python API.

    ``Bundle.open(path)`` verifies the bundle once (artifact hash, every graph's sha256, no
    external data; :func:`open_bundle`) and loads the device-fitted projector when deploy-check
    wrote a valid one for this artifact and this backbone variant (:func:`load_finetuned`);
    ``predict`` then reuses the sessions, so a camera loop pays for neither again::

        b = Bundle.open("bundles/mnist")
        b.predict(frame, top_k=3)       # [(label, prob), ...] for one image
        b.predict([a, b2, "x.png"])     # one such list per image

    Images: a file path, a PIL image, an (H, W, 3) uint8 RGB array, or a list of those (an
    (N, H, W, 3) uint8 array is a list too). Preprocessing is ``edgedd predict``'s, byte for byte:
    RGB (alpha over black), shorter side to the canvas, centre crop, normalise.
    """

    directory: Path
    artifact: art.Artifact
    sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    variant: str = "fp32"  # which backbone the sessions run: "fp32" or "int8"
    graph_sha256: dict[str, str] = field(default_factory=dict)
    graph_files: dict[str, Path] = field(default_factory=dict)  # role -> the file each session was loaded from (for errors)
    # The device-fitted projector (W, b) that Bundle.open found for this variant; None: the packed projector graph.
    projector: tuple[np.ndarray, np.ndarray] | None = None
    projector_file: Path | None = None  # the sidecar it came from
    projector_kind: str = "packed"  # "packed", "fit" (deploy-check) or "adapt"
    threads: int | None = None  # onnxruntime intra-op threads of the sessions; None: onnxruntime's default

    @classmethod
    def open(cls, directory: str | Path, int8: bool = False, providers: list[str] | None = None, threads: int | None = None) -> Bundle:
        """Verify the bundle, open its sessions (``int8``: the int8 backbone) and load the fitted projector.

        ``threads``: onnxruntime intra-op threads; None uses the count deploy-check measured for
        this variant (``runtime.<variant>.json``, see edgedd.device.sidecar), else onnxruntime's default.
        Raises EdgeddError (one line with the fix) for a bundle that does not verify, a missing
        int8 backbone, or a sidecar that is damaged or was written for another artifact or variant.
        """
        if threads is not None and not (isinstance(threads, int) and 1 <= threads <= MAX_THREADS):
            raise EdgeddError(f"threads is {threads!r}", f"pass a whole number from 1 to {MAX_THREADS}, or None for the measured setting")
        b = open_bundle(directory, int8=int8, providers=providers, threads=threads, stored_threads=threads is None)
        b.projector = load_finetuned(b)
        return b

    @property
    def meta(self) -> dict:
        return self.artifact.meta

    @property
    def edge_preprocess(self) -> dict:
        return self.meta["edge"]["preprocess"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def classes(self) -> list[str]:
        """Class names in label order (a copy)."""
        return list(self.class_names)

    def inputs(self, images) -> np.ndarray:
        """Images (one or a list, see the class docstring) -> normalised (n, 3, S, S) edge inputs."""
        pp = self.edge_preprocess
        canvases = [edge_canvas(im, pp["resize_size"], pp["interpolation"]) for im in as_image_list(images)]
        if not canvases:
            return np.zeros((0, 3, pp["input_size"], pp["input_size"]), np.float32)
        return prepare_canvases(self, np.stack(canvases).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)

    def probabilities(self, images) -> np.ndarray:
        """Softmax class probabilities, (n, classes) float32, for one image or a list.

        A list is decoded, run and scored :data:`edgedd.device.infer.BATCH` images at a time, so
        memory grows with the batch, not with the list; a graph that answers wrongly for any
        batch raises before anything is returned."""
        items = as_image_list(images)
        prob = np.zeros((len(items), len(self.class_names)), np.float32)
        for s in range(0, len(items), BATCH):
            prob[s : s + BATCH] = softmax(classify(self, self.inputs(items[s : s + BATCH]), self.projector))
        return prob

    def predict(self, images, top_k: int = 5) -> list:
        """The ``top_k`` most probable (label, prob), best first: a list for one image, a list of
        such lists for a list of images."""
        prob = self.probabilities(images)
        rows = [[(self.class_names[i], float(row[i])) for i in top_indices(row, top_k)] for row in prob]
        return rows if is_image_list(images) else rows[0]


def read_graph(directory: Path, role: str, entry) -> bytes:
    """The verified bytes of one graph: bare name checked first, file read once, sha256 on those bytes.

    Every name that is not a bare file name gets the same message, without touching the file
    system, so a crafted artifact learns nothing about what exists outside the bundle. The file
    is opened without following a symlink and must be a regular file (a FIFO would hang).
    """
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not GRAPH_NAME.fullmatch(name):
        raise EdgeddError(f"the artifact in {directory} names its {role} graph by something other than a file name inside the bundle",
                          "the bundle was altered; re-copy it or re-run edgedd pack")
    path = directory / name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise EdgeddError(f"bundle {directory} is missing {name}", "copy the whole bundle directory") from None
    except OSError as e:  # ELOOP: a symlink, which could lead outside the bundle; EACCES; ...
        why = "a symbolic link" if e.errno == errno.ELOOP else os.strerror(e.errno) if e.errno else type(e).__name__
        raise EdgeddError(f"cannot read {path} ({why})", "graph files must be readable regular files inside the bundle; re-copy it") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise EdgeddError(f"{path} is not a regular file", "graph files must be regular files inside the bundle; re-copy it")
        if st.st_size > MAX_GRAPH_BYTES:  # refused from its size, before reading it into memory
            raise EdgeddError(f"{path} is {st.st_size} bytes, more than an ONNX graph can be (2 GiB)",
                              "the bundle was altered; re-copy it or re-run edgedd pack")
        data = f.read()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise EdgeddError(f"{path} does not match the artifact (sha256 mismatch)", "the bundle was altered or mixed up; re-copy it")
    return data


def open_bundle(directory: str | Path, int8: bool = False, providers: list[str] | None = None, threads: int | None = None,
                stored_threads: bool = False) -> Bundle:
    """Read and verify the artifact, check every ONNX file's sha256, open the sessions.

    A bundle is a closed world: each graph is read once, hashed, and the *same bytes* go to
    onnxruntime (never re-opened by path, so swapping a file afterwards changes nothing), and a
    graph whose tensors live in external files is refused (see onnx_scan).
    """
    directory = require_dir(directory, "bundle", "pass the --out directory of edgedd pack")
    a = art.read(require_file(directory / art.ARTIFACT_FILE, "artifact", "pass a bundle directory made by edgedd pack"))
    graphs = a.meta.get("onnx")
    graphs = dict(graphs) if isinstance(graphs, dict) else {}
    if int8:
        if "backbone_int8" not in graphs:
            raise EdgeddError(f"bundle {directory} has no int8 backbone", "re-pack it on the host with edgedd pack --int8, or run without --int8")
        graphs["backbone"] = graphs["backbone_int8"]
    available = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]  # remote-only EP
    chosen = [p for p in (providers or available) if p in available] or ["CPUExecutionProvider"]
    b = Bundle(directory, a, providers=chosen, variant="int8" if int8 else "fp32", threads=threads)
    data = {}
    for role in ROLES:
        g = graphs.get(role)
        if not g:
            raise EdgeddError(f"artifact in {directory} lists no {role} graph", "re-run edgedd pack")
        data[role] = read_graph(directory, role, g)  # every graph verified before any sidecar is read
        b.graph_sha256[role] = g["sha256"]
        b.graph_files[role] = directory / g["file"]
    if stored_threads:  # deploy-check's measured setting for this variant (bound to these graphs' hashes)
        settings = read_settings(b)
        b.threads = settings["intra_op_threads"] if settings else None
    for role in ROLES:
        b.sessions[role] = session_from_bytes(directory / graphs[role]["file"], data.pop(role), chosen, b.threads)
    return b


def open_sessions(b: Bundle, threads: int | None) -> None:
    """(Re)open ``b``'s three sessions from their verified bytes with ``threads`` intra-op threads."""
    graphs = dict(b.meta["onnx"])
    if b.variant == "int8":
        graphs["backbone"] = graphs["backbone_int8"]
    b.sessions = {role: load_session(b.directory, role, graphs[role], b.providers, threads) for role in ROLES}
    b.threads = threads


def load_session(directory: Path, role: str, entry, providers: list[str], threads: int | None = None) -> ort.InferenceSession:
    """One verified graph (:func:`read_graph`: the hashed bytes, no external data) as an onnxruntime session."""
    return session_from_bytes(directory / entry["file"], read_graph(directory, role, entry), providers, threads)


def session_from_bytes(path: Path, data: bytes, providers: list[str], threads: int | None = None) -> ort.InferenceSession:
    """A session on a graph's verified bytes (``path`` names it in errors); ``threads``: intra-op threads (None: default)."""
    try:
        external = uses_external_data(data)
    except Malformed:  # refused too: what this walker cannot read, it cannot vouch for
        raise EdgeddError(f"{path} is not a valid ONNX model", "the bundle was altered; re-copy it or re-run edgedd pack") from None
    if external:
        raise EdgeddError(f"{path} keeps tensors in external files, which a bundle never does",
                          "the bundle was altered; re-copy it or re-run edgedd pack")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime's own exception types
        raise EdgeddError(f"onnxruntime cannot load {path} ({type(e).__name__})",
                          "check the onnxruntime version (see the bundle's meta)") from None
