"""An ``edgedd distill`` run directory: the name of every file in it (the constants below), the
loading of a finished run for the stages that come after it (evaluation, packing), and, in the
last section, its writing: the lock and identity check a distill starts with, the previews, the
result and the summary that marks it finished. What the files hold is listed in ``edgedd.distill``;
the Stage I files' format is ``edgedd.distillation.stage1_files``, the checkpoint's ``edgedd.distillation.checkpoint``,
metrics.jsonl's ``edgedd.distillation.metrics``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_bytes

from edgedd.core import atomic
from edgedd.core.config import Preprocess, StageIConfig
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages, open_dataset
from edgedd.core.lock import LOCK_FILE, lock
from edgedd.core.stio import torch_serialize as save

from .metrics import METRICS_FILE, MetricsLog
from .preview import write_grid

# ----------------------------------------------------------------------------- file names

RUN_FORMAT = 1  # run.json, synthetic.*, checkpoint.safetensors
RUN_JSON = "run.json"  # what this run is: its identity (written first)
STATS_FILE = "stats.safetensors"  # Stage I: class sums / counts / centres and the real flow
GOLDEN_FILE = "golden_classifier.safetensors"  # Stage I: the full-data linear probe
STAGE1_JSON = "stage1.json"  # Stage I: how it was made, with the two files' sha256 (written last)
CHECKPOINT = "checkpoint.safetensors"  # while running: Stage II's whole state
PREVIEWS = "previews"  # a folder: step_XXXXXX.png every preview_every steps
SYNTHETIC = "synthetic.safetensors"  # the result: images and labels
INITIAL = "initial.safetensors"  # the starting set: Stage II's step-0 images and labels (evaluate scores it)
SYNTHETIC_JSON = "synthetic.json"  # class names, preprocessing and config of the result
PREVIEW = "preview.png"  # the final grid
SUMMARY = "summary.json"  # figures of the run; written last, marks it finished
# and, named by the modules that write them: LOCK_FILE (edgedd.core.lock), METRICS_FILE (edgedd.distillation.metrics)


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
    stage1: dict = field(
        default_factory=dict
    )  # stage1.json: how Stage I was made (golden fit, held-out figure); {} if absent
    centres: torch.Tensor | None = None  # stats.safetensors "centres" (C, D_A): Stage I's class centres; None if absent

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
        from edgedd.backbones.loader import load_backbone

        a, pp = self.backbone, self.preprocess
        model, info = load_backbone(
            a["name"],
            a["weights"],
            input_size=pp.input_size,
            resize_size=pp.resize_size,
            device=device,
            seed=int(self.config.get("seed", 0)),
        )  # random weights are reproducible from the run's seed
        if info.weights_sha256 != a["weights_sha256"]:
            raise EdgeddError(
                f"the weights of {a['name']} ({a['weights']}) are not the ones this run was distilled with",
                "pass the run's original weights file",
            )
        return model, info

    def stage1_config(self) -> StageIConfig:
        """The Stage I config the golden classifier was made with (summary.json, else stage1.json)."""
        d = dict(self.summary.get("stage1_config") or self.stage1.get("stage1", {}))
        known = {f.name for f in dataclasses.fields(StageIConfig)}
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        d.setdefault("golden_recipe", "reference")  # runs made before the converged recipe existed
        return StageIConfig(**d)

    def train_data(self) -> LabelledImages:
        """The data the run was distilled on, opened: run.json records only its fingerprint,
        summary.json (or stage1.json) its name. Refused unless it still has that fingerprint."""
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
            raise EdgeddError(
                f"the training data at {name} changed since the run was distilled (fingerprint differs)", fix
            )
        return source


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    need = [SYNTHETIC, SYNTHETIC_JSON, GOLDEN_FILE, SUMMARY, RUN_JSON]
    if not run_dir.is_dir():
        raise EdgeddError(f"run directory {run_dir} does not exist", "pass the --out directory of edgedd distill")
    missing = [f for f in need if not (run_dir / f).exists()]  # present but not a regular file: "damaged", below
    if missing:
        raise EdgeddError(
            f"{run_dir} is not a finished edgedd run (missing {', '.join(missing)})",
            "finish it with edgedd distill --resume",
        )
    # A damaged or edited run directory is one line, never a traceback or a NaN that evaluate
    # reports and pack ships: each file parsed, its tensors checked for what distill writes.
    meta, summary, identity = (_json(run_dir, f) for f in (SYNTHETIC_JSON, SUMMARY, RUN_JSON))
    golden_bytes = _read(run_dir, GOLDEN_FILE)  # read once: checked against stage1.json, then parsed
    syn, golden = _tensors(run_dir, SYNTHETIC), _tensors(run_dir, GOLDEN_FILE, golden_bytes)
    names, backbone, config = meta.get("class_names"), meta.get("backbone"), meta.get("config")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise _damaged(run_dir, "synthetic.json has no list of class names")
    if not (
        isinstance(backbone, dict)
        and isinstance(config, dict)
        and all(isinstance(backbone.get(k), str) for k in ("name", "weights", "weights_sha256"))
    ):
        raise _damaged(run_dir, "synthetic.json has no backbone or config")
    try:
        Preprocess.from_dict(backbone["preprocess"]), int(config["ipc"]), int(config["seed"])
    except (KeyError, TypeError, ValueError):
        raise _damaged(run_dir, "synthetic.json has a malformed preprocess or config") from None
    c = len(names)
    images, labels, weight, bias = syn.get("images"), syn.get("labels"), golden.get("weight"), golden.get("bias")
    if (
        images is None
        or not images.is_floating_point()
        or images.dim() != 4
        or images.shape[1] != 3
        or images.shape[0] < 1
    ):
        raise _damaged(run_dir, "synthetic.safetensors has no (N, 3, R, R) float images")
    if (
        labels is None
        or labels.is_floating_point()
        or tuple(labels.shape) != images.shape[:1]
        or not ((labels >= 0) & (labels < c)).all()
    ):
        raise _damaged(run_dir, f"synthetic.safetensors has no labels (N,) in [0, {c})")
    if weight is None or bias is None or weight.dim() != 2 or weight.shape[0] != c or tuple(bias.shape) != (c,):
        raise _damaged(run_dir, f"golden_classifier.safetensors has no weight ({c}, D) and bias ({c},)")
    stage1 = _json(run_dir, STAGE1_JSON) if (run_dir / STAGE1_JSON).exists() else {}
    stats = _stage1_stats(run_dir, golden_bytes, stage1)
    if stats and (stats.get("centres") is None or tuple(stats["centres"].shape) != tuple(weight.shape)):
        raise _damaged(run_dir, f"stats.safetensors has no centres {tuple(weight.shape)}")
    for file, tensors in ((SYNTHETIC, {"images": images}), (GOLDEN_FILE, golden), (STATS_FILE, stats)):
        for k, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise _damaged(
                    run_dir,
                    f"{file} holds non-finite values in {k!r}",
                    "re-run edgedd distill into a new --out (lower --lr if the loss diverged)",
                )
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
        centres=stats["centres"].float() if stats else None,
    )


def _damaged(
    run_dir: Path, what: str, fix: str = "re-run edgedd distill (with --overwrite) to recreate it"
) -> EdgeddError:
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
    if GOLDEN_FILE in hashes and hashlib.sha256(golden_bytes).hexdigest() != hashes[GOLDEN_FILE]:
        raise _damaged(run_dir, "golden_classifier.safetensors does not match its checksum in stage1.json")
    if not (run_dir / STATS_FILE).exists():
        return {}
    data = _read(run_dir, STATS_FILE)
    if STATS_FILE in hashes and hashlib.sha256(data).hexdigest() != hashes[STATS_FILE]:
        raise _damaged(run_dir, "stats.safetensors does not match its checksum in stage1.json")
    return _tensors(run_dir, STATS_FILE, data)


# ----------------------------------------------------------------------------- writing (edgedd distill)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _refuse_foreign_out(out: Path) -> bool:
    """Refuse a file or a directory holding something other than an edgedd run (the lock file
    does not count: it is ours). True if ``out`` holds a run."""
    if out.exists() and not out.is_dir():
        raise EdgeddError(f"--out {out} is a file", "pass a directory path")
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        if not (out / RUN_JSON).exists():
            raise EdgeddError(
                f"--out {out} is not empty and is not an edgedd run directory", "choose a new or empty directory"
            )
        return True
    return False


def lock_run_dir(out: Path):
    """The lock on ``out`` held for the whole distill (edgedd.core.lock): a second distill on the same
    --out fails at once instead of mixing its files with this one's. Taken before the model loads,
    after the checks that refuse a directory that is not ours (so nothing is written into one)."""
    _refuse_foreign_out(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeddError(
            f"cannot create --out {out} ({e.strerror or type(e).__name__})", "choose a writable location"
        ) from None
    return lock(out / LOCK_FILE, f"--out {out}", remove_dir=out if created else None)


def prepare_run_dir(out: Path, identity: dict, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory (say which fields differ), then write run.json."""
    run_json = out / RUN_JSON
    if _refuse_foreign_out(out):
        try:
            old = json.loads(run_json.read_text())
        except (OSError, ValueError):  # a damaged run.json (also not UTF-8) reads as a different run
            old = {}
        if not isinstance(old, dict):
            old = {}
        if overwrite:
            for (
                p
            ) in out.iterdir():  # all but the lock file, held by this run: deleting it would let a second distill in
                if p.name != LOCK_FILE:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        elif old.get("fingerprint") != identity["fingerprint"]:
            a, b = (
                _flatten(old["identity"] if isinstance(old.get("identity"), dict) else {}),
                _flatten(identity["identity"]),
            )
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise EdgeddError(
                f"--out {out} already holds a different run (differs in {', '.join(diff[:6]) or 'format'})",
                "choose another --out, or pass --overwrite to replace it",
            )
        elif (out / SUMMARY).exists():
            raise EdgeddError(
                f"--out {out} already holds this finished run", "use it as it is, or pass --overwrite to redo it"
            )
        elif not resume:
            raise EdgeddError(
                f"--out {out} holds an unfinished run of the same config",
                "pass --resume to continue it, or --overwrite to start over",
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(out)
    atomic.write_json(run_json, identity)


def stage2_log(out: Path, *, keep_through: int) -> MetricsLog:
    """What Stage II writes as it goes: the previews folder (made now) and metrics.jsonl (a
    MetricsLog to enter; on resume the lines past ``keep_through``, the checkpoint, go first)."""
    (out / PREVIEWS).mkdir(exist_ok=True)
    return MetricsLog(out / METRICS_FILE, keep_through=keep_through)


def write_preview(out: Path, *, step: int, images: np.ndarray, num_classes: int) -> None:
    """previews/step_XXXXXX.png: the grid of the synthetic images after ``step`` steps."""
    write_grid(out / PREVIEWS / f"step_{step:06d}.png", images, num_classes)


def write_result(out: Path, *, images: torch.Tensor, labels: torch.Tensor, meta: dict) -> None:
    """synthetic.safetensors (images, labels and ``meta`` as JSON in its metadata), synthetic.json
    (``meta``) and preview.png."""
    atomic.write_bytes(
        out / SYNTHETIC,
        save(
            {"images": images, "labels": labels},
            metadata={"format": str(RUN_FORMAT), "json": json.dumps(meta, sort_keys=True)},
        ),
    )
    atomic.write_json(out / SYNTHETIC_JSON, meta)
    write_grid(out / PREVIEW, images.numpy(), len(meta["class_names"]))


def write_initial(out: Path, *, images: torch.Tensor, labels: torch.Tensor) -> None:
    """initial.safetensors: the decoded step-0 images (the real images --init real / coreset / mix took, or the
    decoded noise), written once when a fresh Stage II starts (a resumed run keeps it)."""
    atomic.write_bytes(
        out / INITIAL, save({"images": images.contiguous(), "labels": labels}, metadata={"format": str(RUN_FORMAT)})
    )


def read_tensors(run_dir: Path, name: str) -> dict:
    """The tensors of one safetensors file of the run directory (damaged: one line)."""
    return _tensors(Path(run_dir), name)


def load_initial(run: Run) -> torch.Tensor | None:
    """The run's starting set (N, 3, R, R), or None for a run made before it was stored; refused
    when damaged or not the shape and labels of the result."""
    if not (run.directory / INITIAL).exists():
        return None
    t = _tensors(run.directory, INITIAL)
    images, labels = t.get("images"), t.get("labels")
    if (
        images is None
        or not images.is_floating_point()
        or tuple(images.shape) != tuple(run.images.shape)
        or not torch.isfinite(images).all()
    ):
        raise _damaged(run.directory, f"{INITIAL} has no finite images of the result's shape {tuple(run.images.shape)}")
    if labels is None or not torch.equal(labels.long(), run.labels):
        raise _damaged(run.directory, f"{INITIAL} has not the result's labels")
    return images.float()


def write_summary(out: Path, summary: dict) -> None:
    """summary.json, which marks the run finished; the checkpoint it supersedes goes first."""
    (out / CHECKPOINT).unlink(missing_ok=True)
    atomic.write_json(out / SUMMARY, summary)
