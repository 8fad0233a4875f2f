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
from edgedd.core.copyratio import Nearest
from edgedd.core.images import open_dataset
from edgedd.distillation.copies import pixel_vectors
from edgedd.distillation.trainingset import training_canvases
from edgedd.host.data import CanvasDataset


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
    near = Nearest(pixel_vectors(images))
    for c, ids in training_canvases(info, source):
        near.update(pixel_vectors(c.float() / 255), ids)
    pp = info.preprocess
    data = CanvasDataset(source, pp.resize_size, pp.interpolation)  # the nearest canvases, read again
    summary = json.loads((a.run / "summary.json").read_text())
    ratios = summary["copy_ratio"]["spaces"]["pixels"]["ratios"]

    def tile(x: torch.Tensor) -> np.ndarray:  # (3, R, R) in [0, 1]
        img = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8))
        return np.asarray(img.resize((a.size, a.size), Image.Resampling.BILINEAR))

    rows = []
    gap = np.full((a.size, a.size // 4, 3), 96, np.uint8)
    for c in np.unique(labels):
        cells = []
        for i in np.flatnonzero(labels == c)[: a.per_class]:
            nearest = torch.from_numpy(data[int(near.arg[i])][0]).permute(2, 0, 1).float() / 255
            cells += [tile(torch.from_numpy(start["images"][i])), tile(images[i]), tile(nearest), gap]
            print(f"class {c} image {i}: pixel copy ratio {ratios[i]:.2f}, nearest training image #{near.arg[i]}")
        rows.append(np.concatenate(cells[:-1], 1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
