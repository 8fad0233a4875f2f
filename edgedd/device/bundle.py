"""A bundle, verified and open: the artifact checked, every graph read once and hashed, the
onnxruntime sessions loaded from those same bytes. :class:`Bundle` is the device side's Python API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgedd.core.errors import EdgeddError
from edgedd.core.paths import require_dir, require_file

from . import artifact as art
from .finetune import load_finetuned
from .graphs import load_session, read_graph, session_from_bytes
from .infer import BATCH, classify, softmax, top_indices
from .inputs import as_image_list, edge_canvas, is_image_list, prepare_canvases
from .mobile import available_providers
from .sidecar import MAX_THREADS, read_settings

ROLES = ("backbone", "projector", "classifier")
# --runtime: where the graphs come from. onnx: the .onnx files; ort: the ORT-format files of pack --ort
# (both through onnxruntime); litert: the .tflite files of pack --litert (edgedd.device.litert)
RUNTIMES = ("onnx", "ort", "litert")


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
    graph_files: dict[str, Path] = field(
        default_factory=dict
    )  # role -> the file each session was loaded from (for errors)
    # The device-fitted projector (W, b) that Bundle.open found for this variant; None: the packed projector graph.
    projector: tuple[np.ndarray, np.ndarray] | None = None
    projector_file: Path | None = None  # the sidecar it came from
    projector_kind: str = "packed"  # "packed", "fit" (deploy-check) or "adapt"
    threads: int | None = None  # onnxruntime intra-op threads of the sessions; None: onnxruntime's default
    runtime: str = "onnx"  # which of the bundle's graph sets the sessions run (RUNTIMES)
    static_batch: int | None = (
        None  # the batch of sessions["backbone_static"], the fixed-shape backbone, where the bundle has one
    )
    entries: dict = field(
        default_factory=dict
    )  # role -> the artifact's entry of the graph set in use (fp32 roles included under --int8)

    @classmethod
    def open(
        cls,
        directory: str | Path,
        int8: bool = False,
        providers: list[str] | None = None,
        threads: int | None = None,
        runtime: str = "onnx",
    ) -> Bundle:
        """Verify the bundle, open its sessions (``int8``: the int8 backbone) and load the fitted projector.

        ``threads``: onnxruntime intra-op threads; None uses the count deploy-check measured for
        this variant (``runtime.<variant>.json``, see edgedd.device.sidecar), else onnxruntime's default.
        Raises EdgeddError (one line with the fix) for a bundle that does not verify, a missing
        int8 backbone, or a sidecar that is damaged or was written for another artifact or variant.
        """
        if threads is not None and not (isinstance(threads, int) and 1 <= threads <= MAX_THREADS):
            raise EdgeddError(
                f"threads is {threads!r}",
                f"pass a whole number from 1 to {MAX_THREADS}, or None for the measured setting",
            )
        b = open_bundle(
            directory, int8=int8, providers=providers, threads=threads, stored_threads=threads is None, runtime=runtime
        )
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

    def adapt(self, data: str | Path) -> dict:
        """Adapt the projector to this device's labelled ImageFolder ``data`` (``edgedd adapt``: the
        views and the local images, closed form, the views-only fit kept unless adapting wins held
        out); writes the adapt sidecar for this variant, uses it from now on, returns the report."""
        from .adaptation import adapt_and_save

        result = adapt_and_save(self, data)
        self.projector, self.projector_file, self.projector_kind = (
            (result["weight"], result["bias"]),
            result["path"],
            "adapt",
        )
        return result["report"]


def choose_providers(providers: list[str] | None) -> list[str]:
    """The execution providers to use: ``providers`` (each must be present: one line naming the
    ones that are, otherwise), or every provider this onnxruntime has."""
    available = available_providers()
    missing = [p for p in providers or [] if p not in available]
    if missing:
        raise EdgeddError(
            f"execution provider {missing[0]} is not in this onnxruntime (it has {', '.join(available)})",
            "pick one of those with --provider, or install an onnxruntime build that has it",
        )
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
            raise EdgeddError(
                f"bundle {directory} has no {runtime} graphs",
                f"re-pack it on the host with edgedd pack {flag}, or use --runtime onnx",
            )
    graphs = dict(graphs) if isinstance(graphs, dict) else {}
    if int8:
        if "backbone_int8" not in graphs:
            raise EdgeddError(
                f"bundle {directory} has no int8 backbone",
                "re-pack it on the host with edgedd pack --int8, or run without --int8",
            )
        graphs["backbone_fp32"], graphs["backbone_fp32_static"] = (
            graphs["backbone"],
            graphs.pop("backbone_static", None),
        )
        graphs["backbone"], graphs["backbone_static"] = graphs["backbone_int8"], graphs.get("backbone_int8_static")
    return {k: v for k, v in graphs.items() if v}


def onnx_sha256(meta: dict, role: str, int8: bool) -> str | None:
    """The sha256 the artifact records for ``role``'s ONNX graph (the int8 one's under ``int8``): the
    network whatever the runtime (an .ort or .tflite file is a conversion of it), what sidecars bind to."""
    if int8 and role.startswith("backbone"):
        role = role.replace("backbone", "backbone_int8", 1)
    return (meta["onnx"].get(role) or {}).get("sha256")


def open_bundle(
    directory: str | Path,
    int8: bool = False,
    providers: list[str] | None = None,
    threads: int | None = None,
    stored_threads: bool = False,
    runtime: str = "onnx",
) -> Bundle:
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
    chosen = ["LiteRT interpreter"] if runtime == "litert" else choose_providers(providers)
    b = Bundle(
        directory,
        a,
        providers=chosen,
        variant="int8" if int8 else "fp32",
        threads=threads,
        runtime=runtime,
        entries=graphs,
    )
    data = {}
    for role in ROLES + ("backbone_static",):
        g = graphs.get(role)
        if not g:
            if role == "backbone_static":  # bundles of format < 1.4 have none
                continue
            raise EdgeddError(f"artifact in {directory} lists no {role} graph", "re-run edgedd pack")
        data[role] = read_graph(directory, role, g)  # every graph verified before any sidecar is read
        b.graph_sha256[role] = onnx_sha256(a.meta, role, int8) or g["sha256"]
        b.graph_files[role] = directory / g["file"]
    if stored_threads:  # deploy-check's measured setting for this variant (bound to these graphs' hashes)
        settings = read_settings(b)
        b.threads = settings["intra_op_threads"] if settings else None
    for role in list(data):
        b.sessions[role] = session_from_bytes(
            directory / graphs[role]["file"], data.pop(role), chosen, b.threads, runtime
        )
    static = a.meta["onnx"].get("backbone_int8_static" if int8 else "backbone_static") or {}
    b.static_batch = static.get("batch") if "backbone_static" in b.sessions else None
    return b


def open_sessions(b: Bundle, threads: int | None) -> None:
    """(Re)open ``b``'s sessions (the fixed-shape backbone's too) from their verified bytes with ``threads`` intra-op
    threads.
    """
    roles = ROLES + (("backbone_static",) if "backbone_static" in b.sessions else ())
    b.sessions = {
        role: load_session(b.directory, role, b.entries[role], b.providers, threads, b.runtime) for role in roles
    }
    b.threads = threads
