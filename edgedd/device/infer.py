"""Running a bundle's graphs: edge inputs -> backbone features -> logits -> probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgeddError
from .ortrun import run as run_graph

if TYPE_CHECKING:
    from .bundle import Bundle


def _run(b: Bundle, role: str, x: np.ndarray) -> np.ndarray:
    """One batch through one graph, under the time limit (ortrun)."""
    sess = b.sessions[role]
    feeds = {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return run_graph(sess, feeds, f"the {role} graph {b.graph_files.get(role, '')}".rstrip())[0]


def backbone_features(b: Bundle, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """images: normalised (n, 3, S, S) float32 at the edge input size. A batch of exactly the
    fixed-shape backbone's size (batch 1: a single image, as a camera loop sends) runs through that
    graph, the one a phone accelerator takes whole; other batches through the dynamic one."""
    return np.concatenate([_run(b, _backbone_role(b, len(x)), x) for x in (images[s : s + batch] for s in range(0, len(images), batch))])


def _backbone_role(b: Bundle, n: int) -> str:
    return "backbone_static" if n == getattr(b, "static_batch", None) and "backbone_static" in b.sessions else "backbone"


def classify(b: Bundle, images: np.ndarray, projector: tuple[np.ndarray, np.ndarray] | None = None, batch: int = 64) -> np.ndarray:
    """Normalised edge inputs -> logits. ``projector`` None: the packed projector graph."""
    return head(b, backbone_features(b, images, batch), projector, batch)


def head(b: Bundle, feats: np.ndarray, projector: tuple[np.ndarray, np.ndarray] | None = None, batch: int = 64) -> np.ndarray:
    """phi_B features -> logits: the projector (None: the packed graph; else (W, b)), then the
    classifier. Callers that score two projectors on the same images run the backbone once."""
    out = []
    for s in range(0, len(feats), batch):
        f = feats[s : s + batch]
        p = _run(b, "projector", f) if projector is None else f @ projector[0].T + projector[1]
        out.append(_run(b, "classifier", p))
    return np.concatenate(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def top_indices(prob: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of one row, largest first (ties: lower index first)."""
    if k < 1:
        raise EdgeddError(f"top_k is {k}", "ask for at least one label")
    return np.argsort(-prob, kind="stable")[: min(k, len(prob))]
