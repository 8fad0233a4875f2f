"""A bundle, verified and open: the artifact checked, every graph read once and hashed, the
onnxruntime sessions loaded from those same bytes. :class:`Bundle` is the device side's Python API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import EdgeddError
from ..paths import require_dir, require_file
from . import artifact as art
from .finetune import load_finetuned
from .graphs import load_session
from .infer import classify, softmax, top_indices
from .inputs import as_image_list, edge_canvas, is_image_list, prepare_canvases



ROLES = ("backbone", "projector", "classifier")


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

    @classmethod
    def open(cls, directory: str | Path, int8: bool = False, providers: list[str] | None = None) -> Bundle:
        """Verify the bundle, open its sessions (``int8``: the int8 backbone) and load the fitted projector.

        Raises EdgeddError (one line with the fix) for a bundle that does not verify, a missing
        int8 backbone, or a fitted projector that is damaged or was fitted on the other variant.
        """
        b = open_bundle(directory, int8=int8, providers=providers)
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


def open_bundle(directory: str | Path, int8: bool = False, providers: list[str] | None = None) -> Bundle:
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
    b = Bundle(directory, a, providers=chosen, variant="int8" if int8 else "fp32")
    for role in ROLES:
        g = graphs.get(role)
        if not g:
            raise EdgeddError(f"artifact in {directory} lists no {role} graph", "re-run edgedd pack")
        b.sessions[role] = load_session(directory, role, g, chosen)
        b.graph_sha256[role] = g["sha256"]
        b.graph_files[role] = directory / g["file"]
    return b
