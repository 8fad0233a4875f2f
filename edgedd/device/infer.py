"""Running a bundle's graphs: edge inputs -> backbone features -> logits -> probabilities.

Every graph call of the device goes through :func:`run_checked`: a verified hash says who made a
graph, not that it answers as its artifact says. Each batch's output must have one row per input
row, the width the artifact promises (the backbone: ``edge.features``; the projector: D_A; the
classifier: the class count), dtype float32 and only finite values; anything else is one
EdgeddError naming the graph file and what it returned, before any answer is given.

Images are run :data:`BATCH` at a time, so memory is bounded by the batch, not the input count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgedd.core.errors import EdgeddError

from .ortrun import run as run_graph

if TYPE_CHECKING:
    from .bundle import Bundle

BATCH = 64  # images decoded, run and scored at once by predict, Bundle.predict and deploy-check --data
ALTERED = "the bundle was altered or mis-packed; re-copy it or re-run edgedd pack"


def expected_width(b: Bundle, role: str) -> int:
    """The output width the artifact promises for ``role``'s graph."""
    if role.startswith("backbone"):  # the dynamic and the fixed-shape one
        return int(b.meta["edge"]["features"])
    if role == "projector":
        return int(b.artifact["projector.weight"].shape[0])
    return len(b.class_names)


def output_problem(out, rows: int, width: int) -> str | None:
    """What is wrong with one graph output for ``rows`` inputs of promised ``width``, or None."""
    if not isinstance(out, np.ndarray):
        return f"a {type(out).__name__}, not an array"
    if out.ndim != 2 or out.shape[0] != rows or out.shape[1] != width:
        return f"shape {tuple(out.shape)} for {rows} input row(s), not ({rows}, {width})"
    if out.dtype != np.float32:
        return f"dtype {out.dtype}, not float32"
    if not np.isfinite(out).all():
        return "NaN or infinite values"
    return None


def graph_name(b: Bundle, role: str) -> str:
    return f"the {role} graph {b.graph_files.get(role, '')}".rstrip()


def run_checked(b: Bundle, role: str, x: np.ndarray) -> np.ndarray:
    """One batch through one graph, under the time limit (ortrun), its output checked (module docstring)."""
    sess = b.sessions[role]
    x = np.ascontiguousarray(x, dtype=np.float32)
    feeds = {sess.get_inputs()[0].name: x}
    outs = run_graph(sess, feeds, graph_name(b, role))
    problem = output_problem(outs[0] if outs else None, len(x), expected_width(b, role))
    if problem:
        if (
            problem.startswith("NaN") and role != "backbone" and x.size
        ):  # finite inputs can overflow float32 (a backbone answering 1e38)
            problem += f" on inputs up to |{float(np.abs(x).max()):.3g}|"
        raise EdgeddError(f"{graph_name(b, role)} returned {problem}", ALTERED)
    return outs[0]


def backbone_features(b: Bundle, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """images: normalised (n, 3, S, S) float32 at the edge input size. A batch of exactly the
    fixed-shape backbone's size (batch 1: a single image, as a camera loop sends) runs through that
    graph, the one a phone accelerator takes whole; other batches through the dynamic one."""
    if not len(images):
        return np.zeros((0, expected_width(b, "backbone")), np.float32)
    return np.concatenate(
        [
            run_checked(b, _backbone_role(b, len(x)), x)
            for x in (images[s : s + batch] for s in range(0, len(images), batch))
        ]
    )


def _backbone_role(b: Bundle, n: int) -> str:
    return (
        "backbone_static" if n == getattr(b, "static_batch", None) and "backbone_static" in b.sessions else "backbone"
    )


def classify(
    b: Bundle, images: np.ndarray, projector: tuple[np.ndarray, np.ndarray] | None = None, batch: int = BATCH
) -> np.ndarray:
    """Normalised edge inputs -> logits. ``projector`` None: the packed projector graph."""
    return head(b, backbone_features(b, images, batch), projector, batch)


def project(b: Bundle, feats: np.ndarray, projector: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """P(f) = W f + b with a device-fitted (W, b), checked as a graph output is: finite
    features can still overflow float32 (a backbone answering 1e38), which is refused, not warned."""
    with np.errstate(all="ignore"):
        p = (feats @ projector[0].T + projector[1]).astype(np.float32, copy=False)
    if not np.isfinite(p).all():
        big = float(np.abs(feats).max()) if feats.size else 0.0
        raise EdgeddError(
            f"the device-fitted projector overflowed on the features of {graph_name(b, 'backbone')} "
            f"(largest |value| {big:.3g})",
            ALTERED,
        )
    return p


def head(
    b: Bundle, feats: np.ndarray, projector: tuple[np.ndarray, np.ndarray] | None = None, batch: int = BATCH
) -> np.ndarray:
    """phi_B features -> logits: the projector (None: the packed graph; else (W, b)), then the
    classifier. Callers that score two projectors on the same images run the backbone once."""
    if not len(feats):
        return np.zeros((0, len(b.class_names)), np.float32)
    out = []
    for s in range(0, len(feats), batch):
        f = feats[s : s + batch]
        p = run_checked(b, "projector", f) if projector is None else project(b, f, projector)
        out.append(run_checked(b, "classifier", p))
    return np.concatenate(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of finite logits; the shift by the row maximum keeps exp from overflowing,
    and very negative differences underflow to 0 (silently: that is the right answer)."""
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        z = logits - logits.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)


def top_indices(prob: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of one row, largest first (ties: lower index first)."""
    if k < 1:
        raise EdgeddError(f"top_k is {k}", "ask for at least one label")
    return np.argsort(-prob, kind="stable")[: min(k, len(prob))]
