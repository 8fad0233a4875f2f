"""A finished ``edgedd distill`` run directory, loaded for the stages that come after it
(evaluation, packing). What the files hold is listed in ``edgedd.distill``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import Preprocess
from .errors import EdgeddError



@dataclass
class Run:
    directory: Path
    images: torch.Tensor  # (N, 3, R, R) float32 in [0, 1], class-major
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]
    backbone: dict  # synthetic.json "backbone": name, weights, weights_sha256, num_features, preprocess
    config: dict  # the distill config (seed, ipc, method, ...)
    golden_weight: torch.Tensor  # (C, D_A)
    golden_bias: torch.Tensor  # (C,)
    summary: dict
    identity: dict  # run.json: fingerprint and what the run is

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.backbone["preprocess"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ipc(self) -> int:
        return int(self.config["ipc"])


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    need = ["synthetic.safetensors", "synthetic.json", "golden_classifier.safetensors", "summary.json", "run.json"]
    if not run_dir.is_dir():
        raise EdgeddError(f"run directory {run_dir} does not exist", "pass the --out directory of edgedd distill")
    missing = [f for f in need if not (run_dir / f).is_file()]
    if missing:
        raise EdgeddError(f"{run_dir} is not a finished edgedd run (missing {', '.join(missing)})", "finish it with edgedd distill --resume")
    syn = load_file(run_dir / "synthetic.safetensors")
    golden = load_file(run_dir / "golden_classifier.safetensors")
    meta = json.loads((run_dir / "synthetic.json").read_text())
    return Run(
        directory=run_dir,
        images=syn["images"].float(),
        labels=syn["labels"].long(),
        class_names=list(meta["class_names"]),
        backbone=meta["backbone"],
        config=meta["config"],
        golden_weight=golden["weight"].float(),
        golden_bias=golden["bias"].float(),
        summary=json.loads((run_dir / "summary.json").read_text()),
        identity=json.loads((run_dir / "run.json").read_text()),
    )
