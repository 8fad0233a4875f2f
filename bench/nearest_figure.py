"""Each synthetic image of a run beside its nearest training image in pixels: what the copy ratio says, to look at.

For the first ``--per-class`` images of every class: the starting image (``initial.safetensors``), the
result, and the training canvas nearest to the result by the copy ratio's pixel distance
(edgedd.core.copyratio; the same canvases and scale), with the result's ratio printed on stdout.
One PNG: a row per class, triplets (start | result | nearest real) left to right.

    python bench/nearest_figure.py RUN --data embedded:mnist -o docs/img/nearest.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file

from edgedd.backbones.loader import load_backbone
from edgedd.core.images import open_dataset
from edgedd.distillation.copies import pixel_vectors, training_canvases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", default="embedded:mnist")
    ap.add_argument("--backbone", default="edgedd/efficientnet-lite0", help="A (for its canvas size)")
    ap.add_argument("--crop-res", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--size", type=int, default=56, help="pixels per tile")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    _, info = load_backbone(a.backbone, "hub", input_size=a.crop_res)
    source = open_dataset(a.data)
    syn, start = load_file(a.run / "synthetic.safetensors"), load_file(a.run / "initial.safetensors")
    images, labels = torch.from_numpy(syn["images"]).float(), syn["labels"]
    q = pixel_vectors(images)
    best, arg, canv = np.full(len(q), np.inf), np.zeros(len(q), np.int64), {}
    for c, ids in training_canvases(info, source):
        v = pixel_vectors(c.float() / 255)
        d2 = (q * q).sum(1)[:, None] + (v * v).sum(1)[None] - 2 * q @ v.T
        j = d2.argmin(1)
        better = d2[np.arange(len(q)), j] < best
        best[better], arg[better] = d2[np.arange(len(q)), j][better], ids[j[better]]
        for i in set(ids.tolist()) & set(arg.tolist()):
            canv[i] = c[list(ids).index(i)]
    summary = json.loads((a.run / "summary.json").read_text())
    ratios = summary["copy_ratio"]["spaces"]["pixels"]["ratios"]

    def tile(x: torch.Tensor) -> np.ndarray:
        x = x.float()
        x = x / 255 if x.max() > 1.5 else x
        img = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8))
        return np.asarray(img.resize((a.size, a.size), Image.Resampling.BILINEAR))

    rows = []
    gap = np.full((a.size, a.size // 4, 3), 96, np.uint8)
    for c in np.unique(labels):
        cells = []
        for i in np.flatnonzero(labels == c)[: a.per_class]:
            cells += [tile(torch.from_numpy(start["images"][i])), tile(images[i]), tile(canv[int(arg[i])]), gap]
            print(f"class {c} image {i}: pixel copy ratio {ratios[i]:.2f}, nearest training image #{arg[i]}")
        rows.append(np.concatenate(cells[:-1], 1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
