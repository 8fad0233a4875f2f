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
from .infer import classify, softmax, top_indices
from .inputs import as_image_list, edge_canvas, is_image_list, prepare_canvases
from .mobile import available_providers
from .onnx_scan import Malformed, uses_external_data
from .ort_scan import Malformed as OrtMalformed, is_ort_format, uses_external_data as ort_uses_external_data

# A graph's file name must be a bare name inside the bundle: one rule, the schema's (checked on
# every read of the artifact; read_graph checks it again before touching the file system).
from .schema import GRAPH_NAME


ROLES = ("backbone", "projector", "classifier")
# --runtime: where the graphs come from. onnx: the .onnx files; ort: the ORT-format files of pack --ort
# (both through onnxruntime); litert: the .tflite files of pack --litert (edgedd.device.litert)
RUNTIMES = ("onnx", "ort", "litert")
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
    runtime: str = "onnx"  # which of the bundle's graph sets the sessions run (RUNTIMES)
    static_batch: int | None = None  # the batch of sessions["backbone_static"], the fixed-shape backbone, where the bundle has one
    entries: dict = field(default_factory=dict)  # role -> the artifact's entry of the graph set in use (fp32 roles included under --int8)
    graph_sha256: dict[str, str] = field(default_factory=dict)
    graph_files: dict[str, Path] = field(default_factory=dict)  # role -> the file each session was loaded from (for errors)
    # The device-fitted projector (W, b) that Bundle.open found for this variant; None: the packed projector graph.
    projector: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def open(cls, directory: str | Path, int8: bool = False, providers: list[str] | None = None, runtime: str = "onnx") -> Bundle:
        """Verify the bundle, open its sessions (``int8``: the int8 backbone) and load the fitted projector.

        Raises EdgeddError (one line with the fix) for a bundle that does not verify, a missing
        int8 backbone, or a fitted projector that is damaged or was fitted on the other variant.
        """
        b = open_bundle(directory, int8=int8, providers=providers, runtime=runtime)
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
        """Softmax class probabilities, (n, classes) float32, for one image or a list."""
        x = self.inputs(images)
        if not len(x):
            return np.zeros((0, len(self.class_names)), np.float32)
        return softmax(classify(self, x, self.projector))

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


def choose_providers(providers: list[str] | None) -> list[str]:
    """The execution providers to use: ``providers`` (each must be present: one line naming the
    ones that are, otherwise), or every provider this onnxruntime has."""
    available = available_providers()
    missing = [p for p in providers or [] if p not in available]
    if missing:
        raise EdgeddError(f"execution provider {missing[0]} is not in this onnxruntime (it has {', '.join(available)})",
                          "pick one of those with --provider, or install an onnxruntime build that has it")
    return list(providers or available) or ["CPUExecutionProvider"]


def graph_entries(directory: Path, meta: dict, runtime: str, int8: bool) -> dict:
    """role -> the artifact's entry of each graph of the chosen set; with ``int8`` the int8 backbones
    take the backbone roles, and the fp32 ones stay under backbone_fp32 / backbone_fp32_static."""
    if runtime == "onnx":
        graphs = meta.get("onnx")
    else:
        section = meta.get(runtime)
        graphs = section.get("graphs") if isinstance(section, dict) else None
        if graphs is None:
            flag = {"ort": "--ort", "litert": "--litert"}[runtime]
            raise EdgeddError(f"bundle {directory} has no {runtime} graphs", f"re-pack it on the host with edgedd pack {flag}, or use --runtime onnx")
    graphs = dict(graphs) if isinstance(graphs, dict) else {}
    if int8:
        if "backbone_int8" not in graphs:
            raise EdgeddError(f"bundle {directory} has no int8 backbone", "re-pack it on the host with edgedd pack --int8, or run without --int8")
        graphs["backbone_fp32"], graphs["backbone_fp32_static"] = graphs["backbone"], graphs.pop("backbone_static", None)
        graphs["backbone"], graphs["backbone_static"] = graphs["backbone_int8"], graphs.get("backbone_int8_static")
    return {k: v for k, v in graphs.items() if v}


def open_bundle(directory: str | Path, int8: bool = False, providers: list[str] | None = None, runtime: str = "onnx") -> Bundle:
    """Read and verify the artifact, check every graph file's sha256, open the sessions.

    A bundle is a closed world: each graph is read once, hashed, and the *same bytes* go to
    the runtime (never re-opened by path, so swapping a file afterwards changes nothing), and a
    graph whose tensors live in external files is refused (see onnx_scan, ort_scan).
    The fixed-shape backbone, where the bundle has one, opens as ``sessions["backbone_static"]``:
    infer runs batches of exactly its size through it.
    """
    if runtime not in RUNTIMES:
        raise EdgeddError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}", "pick one of those")
    directory = require_dir(directory, "bundle", "pass the --out directory of edgedd pack")
    a = art.read(require_file(directory / art.ARTIFACT_FILE, "artifact", "pass a bundle directory made by edgedd pack"))
    graphs = graph_entries(directory, a.meta, runtime, int8)
    if runtime == "litert":
        from .litert import open_litert

        return open_litert(directory, a, graphs, int8)
    chosen = choose_providers(providers)
    b = Bundle(directory, a, providers=chosen, variant="int8" if int8 else "fp32", runtime=runtime, entries=graphs)
    for role in ROLES + ("backbone_static",):
        g = graphs.get(role)
        if not g:
            if role == "backbone_static":  # bundles of format < 1.4 have none
                continue
            raise EdgeddError(f"artifact in {directory} lists no {role} graph", "re-run edgedd pack")
        b.sessions[role] = load_session(directory, role, g, chosen, runtime)
        # the ONNX graph's sha256 names the network whatever the runtime (an .ort file is a conversion of it):
        # what a fitted projector is bound to (finetune)
        b.graph_sha256[role] = onnx_sha256(a.meta, role, int8) or g["sha256"]
        b.graph_files[role] = directory / g["file"]
    static = a.meta["onnx"].get("backbone_int8_static" if int8 else "backbone_static") or {}
    b.static_batch = static.get("batch") if "backbone_static" in b.sessions else None
    return b


def onnx_sha256(meta: dict, role: str, int8: bool) -> str | None:
    """The sha256 the artifact records for ``role``'s ONNX graph (the int8 one's under ``int8``)."""
    if int8 and role.startswith("backbone"):
        role = role.replace("backbone", "backbone_int8", 1)
    return (meta["onnx"].get(role) or {}).get("sha256")


def load_session(directory: Path, role: str, entry, providers: list[str], runtime: str = "onnx") -> ort.InferenceSession:
    """One verified graph (:func:`read_graph`: the hashed bytes, no external data) as an onnxruntime
    session; ``runtime`` "ort": an ORT-format file, "onnx": an ONNX one (each refused as the other,
    so a file is always checked by the walker of its own format)."""
    data = read_graph(directory, role, entry)
    name = entry["file"]
    kind = "ORT-format" if runtime == "ort" else "ONNX"
    try:
        if is_ort_format(data) != (runtime == "ort"):
            raise Malformed("the other format")
        external = ort_uses_external_data(data) if runtime == "ort" else uses_external_data(data)
    except (Malformed, OrtMalformed):  # refused too: what this walker cannot read, it cannot vouch for
        raise EdgeddError(f"{directory / name} is not a valid {kind} model", "the bundle was altered; re-copy it or re-run edgedd pack") from None
    if external:
        raise EdgeddError(f"{directory / name} keeps tensors in external files, which a bundle never does",
                          "the bundle was altered; re-copy it or re-run edgedd pack")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # an ORT-format file's saved runtime optimisations are replayed only when asked for, which
    # onnxruntime advises for trusted models only: never asked for here (the graph still runs as converted)
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime's own exception types
        raise EdgeddError(f"onnxruntime cannot load {directory / name} ({type(e).__name__})",
                          "check the onnxruntime version (see the bundle's meta)") from None
