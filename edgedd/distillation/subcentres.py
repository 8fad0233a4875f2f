"""Per-image targets for ``--method sfm_sub``: IPC sub-centres per class in phi_A (METHOD.md).

A first-moment loss (SFM, anchored SFM) constrains only the class mean m_c of the IPC synthetic
features; every arrangement of the IPC images around that mean scores the same, so nothing keeps
them apart and they drift towards one prototype. ``sfm_sub`` gives image i of class c its own
target: one of IPC k-means centres of class c's real centre-crop features,

    s_{c,1..IPC} = k-means(phi_A(centre crop of x), x in class c),   k = IPC            (1)

computed once before Stage II (from the run's one no-grad pass over the training canvases,
edgedd.distillation.trainingset: the same centre crops Stage I's class centres come from), and
matched one-to-one to the class's IPC images by their step-0 features, greedily (the closest free
(image, centre) pair first, repeated), then kept fixed.

K-means is Lloyd's algorithm from a k-means++ start drawn by the run's seed, in float64: the same
features and seed give the same centres. A class with fewer than IPC real images repeats its
images (its surplus centres coincide).
"""

from __future__ import annotations

import numpy as np
import torch

from edgedd.host.rng import numpy_generator

# sfm_probe matches a probe's predictions on at most this many real centre-crop features (a random
# subset past it): its memory and per-step cost grow with them, and a few thousand already pin a
# linear head of a few hundred to a few thousand inputs.
PROBE_MAX_REAL = 10_000


def kmeans(x: np.ndarray, k: int, seed: tuple[int, ...], iters: int = 50) -> np.ndarray:
    """(k, D) Lloyd centres of the rows of ``x`` from a seeded k-means++ start. Fewer rows than k:
    the rows repeat. An emptied cluster keeps its previous centre."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) <= k:
        return x[np.arange(k) % len(x)].copy()
    rng = numpy_generator("kmeans", *seed)
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):  # k-means++: the next centre drawn with probability proportional to d^2
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        centres.append(x[rng.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(iters):
        assign = _sq_dist(x, c).argmin(1)
        new = np.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if np.array_equal(new, c):
            break
        c = new
    return c


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :], 0.0)


def greedy_match(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """perm with ``centres[perm[i]]`` the target of row i of ``z``: one-to-one, the closest free
    (row, centre) pair taken first (ties: lowest row, then lowest centre), until all are taken."""
    d = _sq_dist(np.asarray(z, dtype=np.float64), np.asarray(centres, dtype=np.float64))
    n = d.shape[0]
    perm = np.full(n, -1, dtype=np.int64)
    for flat in np.argsort(d, axis=None, kind="stable"):
        i, j = divmod(int(flat), d.shape[1])
        if perm[i] < 0 and j not in perm:
            perm[i] = j
            if (perm >= 0).all():
                break
    return perm


def coreset_positions(features, num_classes: int, ipc: int, seed: int) -> list[np.ndarray]:
    """``--init coreset``: for each class, the dataset positions of the real images nearest its IPC
    k-means sub-centres (eq. 1, the same centres and seed as ``subcentre_targets``), one distinct
    image per centre (greedy, closest pair first), in centre order. ``features``: a
    edgedd.distillation.trainingset.TrainingFeatures. So the step-0 set is a k-medoids-like
    coreset in phi_A, and each image starts next to the target sfm_sub gives it. A class with at
    most IPC readable images takes all of them (they repeat); one with none gets an empty array."""
    out = []
    for c in range(num_classes):
        rows = np.flatnonzero(features.labels == c)
        if len(rows) <= ipc:
            out.append(features.pos[rows])
            continue
        cent = kmeans(features.feats[rows], ipc, seed=(seed, c))
        out.append(features.pos[rows[greedy_match(cent, features.feats[rows])]])
    return out


def subcentre_targets(
    feats: np.ndarray, labels: np.ndarray, z0: np.ndarray | None, num_classes: int, ipc: int, seed: int
) -> torch.Tensor:
    """(C * IPC, D) float32 targets, class-major like the synthetic set: for class c, IPC k-means
    centres of its real features (eq. 1), image c * IPC + i getting the one matched to its step-0
    feature ``z0[c * IPC + i]`` (``z0`` None: centre i, in k-means order)."""
    out = []
    for c in range(num_classes):
        cent = kmeans(feats[labels == c], ipc, seed=(seed, c))
        out.append(cent if z0 is None else cent[greedy_match(z0[c * ipc : (c + 1) * ipc], cent)])
    return torch.from_numpy(np.concatenate(out)).float()
