"""A finished ``edgedd distill`` run directory, loaded for the stages that come after it
(evaluation, packing). What the files hold is listed in ``edgedd.distill``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes

from .config import Preprocess, StageIConfig
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
    stage1: dict = field(default_factory=dict)  # stage1.json: how Stage I was made (golden fit, held-out figure); {} if absent

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.backbone["preprocess"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ipc(self) -> int:
        return int(self.config["ipc"])

    def load_backbone(self, device):
        """Backbone A exactly as distilled: (model, BackboneInfo), refused if the weights' sha256
        is not the one the run recorded (evaluate and pack build on A's features)."""
        from .backbones import load_backbone

        a, pp = self.backbone, self.preprocess
        model, info = load_backbone(a["name"], a["weights"], input_size=pp.input_size, resize_size=pp.resize_size, device=device,
                                    seed=int(self.config.get("seed", 0)))  # random weights are reproducible from the run's seed
        if info.weights_sha256 != a["weights_sha256"]:
            raise EdgeddError(f"the weights of {a['name']} ({a['weights']}) are not the ones this run was distilled with",
                              "pass the run's original weights file")
        return model, info

    def stage1_config(self) -> StageIConfig:
        """The Stage I config the golden classifier was made with (summary.json, else stage1.json)."""
        d = dict(self.summary.get("stage1_config") or self.stage1.get("stage1", {}))
        known = {f.name for f in dataclasses.fields(StageIConfig)}
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        d.setdefault("golden_recipe", "reference")  # runs made before the converged recipe existed
        return StageIConfig(**d)

    def train_data(self) -> str:
        """The data the run was distilled on: run.json records only its fingerprint, summary.json
        (or stage1.json) its name. The name is used only if it still has that fingerprint."""
        from .images import open_dataset

        want = self.identity.get("identity", {}).get("dataset")
        name = self.summary.get("dataset", {}).get("name") or self.stage1.get("dataset", {}).get("name")
        fix = "pass train_data (the --train-data of the baselines) explicitly"
        if not name or not want:
            raise EdgeddError(f"{self.directory} does not record which data it was distilled on", fix)
        try:
            source = open_dataset(name)
        except EdgeddError:
            raise EdgeddError(f"the training data of this run, {name}, is not readable here", fix) from None
        if source.fingerprint != want:
            raise EdgeddError(f"the training data at {name} changed since the run was distilled (fingerprint differs)", fix)
        return name


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    need = ["synthetic.safetensors", "synthetic.json", "golden_classifier.safetensors", "summary.json", "run.json"]
    if not run_dir.is_dir():
        raise EdgeddError(f"run directory {run_dir} does not exist", "pass the --out directory of edgedd distill")
    missing = [f for f in need if not (run_dir / f).exists()]  # present but not a regular file: "damaged", below
    if missing:
        raise EdgeddError(f"{run_dir} is not a finished edgedd run (missing {', '.join(missing)})", "finish it with edgedd distill --resume")
    # A damaged or edited run directory is one line, never a traceback or a NaN that evaluate
    # reports and pack ships (issue 13): each file parsed, its tensors checked for what distill writes.
    meta, summary, identity = (_json(run_dir, f) for f in ("synthetic.json", "summary.json", "run.json"))
    golden_bytes = _read(run_dir, "golden_classifier.safetensors")  # read once: checked against stage1.json, then parsed
    syn, golden = _tensors(run_dir, "synthetic.safetensors"), _tensors(run_dir, "golden_classifier.safetensors", golden_bytes)
    names, backbone, config = meta.get("class_names"), meta.get("backbone"), meta.get("config")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise _damaged(run_dir, "synthetic.json has no list of class names")
    if not (isinstance(backbone, dict) and isinstance(config, dict) and all(isinstance(backbone.get(k), str) for k in ("name", "weights", "weights_sha256"))):
        raise _damaged(run_dir, "synthetic.json has no backbone or config")
    try:
        Preprocess.from_dict(backbone["preprocess"]), int(config["ipc"]), int(config["seed"])
    except (KeyError, TypeError, ValueError):
        raise _damaged(run_dir, "synthetic.json has a malformed preprocess or config") from None
    c = len(names)
    images, labels, weight, bias = syn.get("images"), syn.get("labels"), golden.get("weight"), golden.get("bias")
    if images is None or not images.is_floating_point() or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise _damaged(run_dir, "synthetic.safetensors has no (N, 3, R, R) float images")
    if labels is None or labels.is_floating_point() or tuple(labels.shape) != images.shape[:1] or not ((labels >= 0) & (labels < c)).all():
        raise _damaged(run_dir, f"synthetic.safetensors has no labels (N,) in [0, {c})")
    if weight is None or bias is None or weight.dim() != 2 or weight.shape[0] != c or tuple(bias.shape) != (c,):
        raise _damaged(run_dir, f"golden_classifier.safetensors has no weight ({c}, D) and bias ({c},)")
    stage1 = _json(run_dir, "stage1.json") if (run_dir / "stage1.json").exists() else {}
    stats = _stage1_stats(run_dir, golden_bytes, stage1)
    if stats and (stats.get("centres") is None or tuple(stats["centres"].shape) != tuple(weight.shape)):
        raise _damaged(run_dir, f"stats.safetensors has no centres {tuple(weight.shape)}")
    for file, tensors in (("synthetic.safetensors", {"images": images}), ("golden_classifier.safetensors", golden), ("stats.safetensors", stats)):
        for k, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise _damaged(run_dir, f"{file} holds non-finite values in {k!r}", "re-run edgedd distill into a new --out (lower --lr if the loss diverged)")
    return Run(
        directory=run_dir,
        images=images.float(),
        labels=labels.long(),
        class_names=list(names),
        backbone=backbone,
        config=config,
        golden_weight=weight.float(),
        golden_bias=bias.float(),
        summary=summary,
        identity=identity,
        stage1=stage1,
    )


def _damaged(run_dir: Path, what: str, fix: str = "re-run edgedd distill (with --overwrite) to recreate it") -> EdgeddError:
    return EdgeddError(f"run directory {run_dir} is damaged: {what}", fix)


def _read(run_dir: Path, name: str) -> bytes:
    path = run_dir / name
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, a device never end
            raise _damaged(run_dir, f"{name} is not a regular file")
        return path.read_bytes()
    except OSError as e:
        raise _damaged(run_dir, f"cannot read {name} ({e.strerror or type(e).__name__})") from None


def _json(run_dir: Path, name: str) -> dict:
    try:
        obj = json.loads(_read(run_dir, name))
    except (ValueError, RecursionError):  # ValueError: truncated, not JSON, not UTF-8
        raise _damaged(run_dir, f"{name} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _damaged(run_dir, f"{name} is not a JSON object")
    return obj


def _tensors(run_dir: Path, name: str, data: bytes | None = None) -> dict:
    try:
        return load_bytes(_read(run_dir, name) if data is None else data)
    except EdgeddError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or malformed files
        raise _damaged(run_dir, f"{name} is not a valid safetensors file ({type(e).__name__})") from None


def _stage1_stats(run_dir: Path, golden_bytes: bytes, stage1: dict) -> dict:
    """stats.safetensors (used by evaluate's centroid baseline), or {} if absent; where stage1.json
    records checksums (edgedd >= the one that added them) both Stage I tensor files must match."""
    hashes = stage1.get("sha256")
    hashes = hashes if isinstance(hashes, dict) else {}
    if "golden_classifier.safetensors" in hashes and hashlib.sha256(golden_bytes).hexdigest() != hashes["golden_classifier.safetensors"]:
        raise _damaged(run_dir, "golden_classifier.safetensors does not match its checksum in stage1.json")
    if not (run_dir / "stats.safetensors").exists():
        return {}
    data = _read(run_dir, "stats.safetensors")
    if "stats.safetensors" in hashes and hashlib.sha256(data).hexdigest() != hashes["stats.safetensors"]:
        raise _damaged(run_dir, "stats.safetensors does not match its checksum in stage1.json")
    return _tensors(run_dir, "stats.safetensors", data)
