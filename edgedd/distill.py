"""``edgedd distill``: Stage I (statistics + golden classifier), then Stage II (SFM).

A plain library function, :func:`distill`, that the CLI wraps. Everything it writes lands in one
run directory:

    run.json                       what this run is (config, backbone, dataset): its identity
    stats.safetensors              class sums/counts/centres and the real flow (Stage I)
    golden_classifier.safetensors  the full-data linear probe (Stage I)
    stage1.json                    how Stage I was made
    checkpoint.safetensors         while running: pyramid, Adam state, RNG state, step
    previews/step_XXXXXX.png       the synthetic images every ``preview_every`` steps
    metrics.jsonl                  one line per Stage II step: loss, resolution, time, flow cosine every N (edgedd.metrics)
    synthetic.safetensors          the result: images in [0, 1] (N, 3, R, R) and labels
    synthetic.json                 class names, preprocessing and config of the result
    preview.png                    the final grid
    summary.json                   figures of the run; written last, marks it finished
    .edgedd.lock                   while a distill runs: its lock (edgedd.lock), removed at the end

Each file is written atomically. Resuming needs only ``checkpoint.safetensors``: it holds every
piece of state the loop has (including the one generator all randomness comes from), so a resumed
CPU run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from .stio import torch_serialize as save

from . import __version__, atomic
from .augment import StepDraws, apply_augment, augment, center_crop, normalize
from .backbones import backbone_autocast as _autocast, BackboneInfo, check_model_name, distill_resolution, encode, load_backbone, resolve_device
from .config import CROP_SAMPLERS, INITS, MAX_RESOLUTION, METHODS, FLOW_DENOMINATORS, DistillConfig, RunOptions, StageIConfig, fingerprint, to_dict
from .data import CanvasDataset, default_num_workers
from .images import LabelledImages, open_dataset
from .distributed import SINGLE, Dist, on_all_ranks, setup, shard, teardown
from .errors import EdgeddError
from .fidelity import synthetic_landing
from .lock import LOCK_FILE, lock
from .chunked import auto_chunk_size, chunked_step
from .lgm import StepBatches, lgm_loss, random_head
from .losses import anchor_loss, decouple_loss, flow, sfm_loss, synthetic_flow
from .memory import PhaseMemory
from .metrics import METRICS_FILE, MetricsLog, flow_every
from .preview import write_grid
from .progress import Progress, progress_allowed
from .statistics import CACHE_ENV, cache_root, save_stage1, stage1_cached
from .synthetic import Pyramid, extension_steps, level_resolutions
from .terminal import say

RUN_FORMAT = 1
CHECKPOINT = "checkpoint.safetensors"
MAX_LR = 1e3  # the pyramid's logits saturate the sigmoid long before: no useful lr comes near it


# ----------------------------------------------------------------------------- run directory


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
        if not (out / "run.json").exists():
            raise EdgeddError(f"--out {out} is not empty and is not an edgedd run directory", "choose a new or empty directory")
        return True
    return False


def lock_run_dir(out: Path):
    """The lock on ``out`` held for the whole distill (edgedd.lock): a second distill on the same
    --out fails at once instead of mixing its files with this one's. Taken before the model loads,
    after the checks that refuse a directory that is not ours (so nothing is written into one)."""
    _refuse_foreign_out(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeddError(f"cannot create --out {out} ({e.strerror or type(e).__name__})", "choose a writable location") from None
    return lock(out / LOCK_FILE, f"--out {out}", remove_dir=out if created else None)


def prepare_run_dir(out: Path, identity: dict, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory; say which fields differ."""
    run_json = out / "run.json"
    if _refuse_foreign_out(out):
        try:
            old = json.loads(run_json.read_text())
        except (OSError, ValueError):  # a damaged run.json (also not UTF-8) reads as a different run
            old = {}
        if not isinstance(old, dict):
            old = {}
        if overwrite:
            for p in out.iterdir():  # all but the lock file, held by this run: deleting it would let a second distill in
                if p.name != LOCK_FILE:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        elif old.get("fingerprint") != identity["fingerprint"]:
            a, b = _flatten(old["identity"] if isinstance(old.get("identity"), dict) else {}), _flatten(identity["identity"])
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise EdgeddError(
                f"--out {out} already holds a different run (differs in {', '.join(diff[:6]) or 'format'})",
                "choose another --out, or pass --overwrite to replace it",
            )
        elif (out / "summary.json").exists():
            raise EdgeddError(f"--out {out} already holds this finished run", "use it as it is, or pass --overwrite to redo it")
        elif not resume:
            raise EdgeddError(f"--out {out} holds an unfinished run of the same config", "pass --resume to continue it, or --overwrite to start over")
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(out)
    atomic.write_json(run_json, identity)


# ----------------------------------------------------------------------------- checkpoints


def _adam(levels, lr):
    # foreach=False: the plain per-tensor path, the same arithmetic on every device and resume.
    return torch.optim.Adam(levels, lr=lr, foreach=False)


def save_checkpoint(path: Path, step: int, pyr: Pyramid, opt: torch.optim.Optimizer, gen: torch.Generator, run_fp: str, loss: float,
                    group: Dist = SINGLE) -> None:
    """Full tensors (every rank's rows, streamed to rank 0), written by rank 0 alone: a checkpoint
    does not know how many ranks made it, so any number can resume it."""
    tensors = {}
    for i, lv in enumerate(pyr.levels):
        tensors[f"level.{i}"] = group.rows_to_main(lv.detach(), pyr.total)
        st = opt.state.get(lv, {})
        if st:  # Adam's state is per element: sharded like the level it belongs to
            tensors[f"adam.{i}.exp_avg"] = group.rows_to_main(st["exp_avg"], pyr.total)
            tensors[f"adam.{i}.exp_avg_sq"] = group.rows_to_main(st["exp_avg_sq"], pyr.total)
            tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    if not group.main:
        return
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    tensors["rng"] = gen.get_state().cpu()  # the same on every rank: all draw the same sequence
    meta = {"format": str(RUN_FORMAT), "step": str(step), "run_fingerprint": run_fp, "levels": str(len(pyr.levels)), "loss": repr(loss),
            "ranks": str(group.world)}
    atomic.write_bytes(path, save(tensors, metadata=meta))


def _checkpoint_problem(meta: dict, tensors: dict, syn_res: int, total: int | None, gen: torch.Generator) -> str | None:
    """What is wrong with a checkpoint of the right run, or None: what save_checkpoint writes, in
    names, dtypes, shapes and finite values, so load_checkpoint can use it without another check."""
    try:
        step, n_levels, _ = int(meta["step"]), int(meta["levels"]), float(meta["loss"])
    except (KeyError, TypeError, ValueError):
        return "metadata step / levels / loss missing or not numbers"
    res = level_resolutions(syn_res)
    if step < 0 or not 1 <= n_levels <= len(res):
        return f"step {step} / {n_levels} levels out of range"
    rng = tensors.get("rng")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != gen.get_state().shape:
        return "rng state missing, or from another kind of device"
    level0 = tensors.get("level.0")
    rows = total if total is not None else (level0.shape[0] if level0 is not None and level0.dim() else -1)
    adam = "adam.0.step" in tensors
    for i in range(n_levels):
        want = {f"level.{i}": (rows, 3, res[i], res[i])}
        if adam:
            want |= {f"adam.{i}.exp_avg": want[f"level.{i}"], f"adam.{i}.exp_avg_sq": want[f"level.{i}"], f"adam.{i}.step": (1,)}
        for k, shape in want.items():
            t = tensors.get(k)
            if t is None or t.dtype != torch.float32 or tuple(t.shape) != shape:
                return f"{k} missing or not float32 {shape}"
    for k, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            return f"non-finite values in {k}"
    return None


def load_checkpoint(path: Path, run_fp: str, syn_res: int, lr: float, gen: torch.Generator, device, group: Dist = SINGLE,
                    rows: tuple[int, int] | None = None, total: int | None = None):
    """Rank 0 reads the file; every rank gets its own rows of each tensor, re-sharded for the
    current number of ranks."""

    def read():
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise EdgeddError(f"checkpoint {path} is unreadable ({type(e).__name__})", "delete it to restart the run, or pass --overwrite") from None
        if meta.get("run_fingerprint") != run_fp:
            raise EdgeddError(f"checkpoint {path} belongs to another run", "pass --overwrite to start over")
        problem = _checkpoint_problem(meta, tensors, syn_res, total, gen)
        if problem:  # a damaged or edited checkpoint: one line, never NaN images or a traceback later
            raise EdgeddError(f"checkpoint {path} is damaged ({problem})", "delete it to restart the run, or pass --overwrite")
        return meta, tensors

    meta, tensors = group.on_main(read) or ({}, {})
    header = json.loads(group.broadcast_text(json.dumps(
        {"meta": meta, "shapes": {k: list(v.shape) for k, v in tensors.items()}, "dtypes": {k: str(v.dtype) for k, v in tensors.items()}}
    )))
    meta, shapes = header["meta"], header["shapes"]
    dtypes = {k: getattr(torch, v.removeprefix("torch.")) for k, v in header["dtypes"].items()}
    total = total if total is not None else shapes["level.0"][0]
    rows = rows or (0, total)

    def rows_of(key):
        return group.rows_from_main(tensors.get(key), total, tuple(shapes[key][1:]), dtypes[key], device)

    n_levels = int(meta["levels"])
    pyr = Pyramid([rows_of(f"level.{i}") for i in range(n_levels)], syn_res, rows, total)
    opt = _adam(pyr.levels, lr)
    if "adam.0.step" in shapes:
        opt.load_state_dict(
            {
                "state": {
                    i: {
                        "step": torch.tensor(float(tensors[f"adam.{i}.step"].item()) if group.main else 0.0),
                        "exp_avg": rows_of(f"adam.{i}.exp_avg"),
                        "exp_avg_sq": rows_of(f"adam.{i}.exp_avg_sq"),
                    }
                    for i in range(n_levels)
                },
                "param_groups": opt.state_dict()["param_groups"],
            }
        )
        for st in opt.state.values():  # the step count is rank 0's (the same for every level)
            group.broadcast_(st["step"])
    state = tensors["rng"] if group.main else gen.get_state()
    gen.set_state(group.broadcast_(state.clone()).cpu() if group.enabled else state)
    return int(meta["step"]), pyr, opt, float(meta["loss"])


# ----------------------------------------------------------------------------- the loop


def real_init_images(source: LabelledImages, ipc: int, size: int, interpolation: str, seed: int) -> torch.Tensor:
    """``--init real``: per class ``ipc`` readable images drawn at random (seeded), as (C * ipc, 3,
    size, size) canvases in [0, 1], class-major like the synthetic labels. Unreadable images are
    passed over; a class with fewer readable images than ``ipc`` repeats them (with a warning: the
    copies start equal and part only through their augmentations); a class with none is refused."""
    rng = np.random.default_rng([seed, 0x1A17])  # its own stream: the run's generator draws stay as with noise init
    data = CanvasDataset(source, size, interpolation)
    out, short = [], []
    for c in range(source.num_classes):
        found = []
        for i in rng.permutation(np.flatnonzero(source.labels == c)):
            canvas, _, _ = data[int(i)]
            if canvas is not None:
                found.append(canvas)
            if len(found) == ipc:
                break
        if not found:
            raise EdgeddError(f"class {source.class_names[c]!r} has no readable image to start --init real from", "use --init noise")
        if len(found) < ipc:
            short.append(source.class_names[c])
        out.extend(found[j % len(found)] for j in range(ipc))
    if short:
        warnings.warn(f"--init real: {len(short)} class(es) have fewer than {ipc} readable images (e.g. {short[0]!r}); their images repeat")
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255)  # np.stack copies: canvases may be read-only


def view_features(model, images: torch.Tensor, cfg: DistillConfig, info: BackboneInfo, gen: torch.Generator) -> torch.Tensor:
    """A = augs_per_batch independent augmented views of every image: (A, N, D) features."""
    n, a = images.shape[0], cfg.augs_per_batch
    draws = StepDraws.draw(gen, n * a, cfg.augment, cfg.crop_res, images.dtype)
    # pass by pass over the same images (views pass-major: v = pass * n + row), so autograd keeps
    # one copy of the images for all A resamplings instead of an A-times tiled one
    passes = [apply_augment(images, draws.params(p * n, (p + 1) * n), cfg.crop_res) for p in range(a)]
    views = passes[0] if a == 1 else torch.cat(passes)
    with _autocast(images.device, cfg.amp):
        z = model(normalize(views, info.preprocess.mean, info.preprocess.std))
    return z.float().view(a, n, -1)


def feature_loss(z: torch.Tensor, cfg: DistillConfig, flow_real: torch.Tensor, centres_real: torch.Tensor) -> torch.Tensor:
    """SFM / sfm_anchor / sfm_decouple loss of the (N, D) per-image features."""
    if cfg.method == "sfm":
        return sfm_loss(z, flow_real, cfg.flow_denominator)
    if cfg.method == "sfm_anchor":
        return anchor_loss(z, flow_real, centres_real, cfg.beta, cfg.flow_denominator)
    return decouple_loss(z, centres_real, cfg.alpha)


def sfm_step_loss(model, images, cfg, info, gen, flow_real, centres_real) -> torch.Tensor:
    """One pass: features of the A views averaged per image, then the loss (graph kept). The plain
    reference the tests and benchmarks hold the chunked / sharded step (``edgedd.chunked``) to."""
    return feature_loss(view_features(model, images, cfg, info, gen).mean(0), cfg, flow_real, centres_real)


def lgm_step_loss(model, images, labels, num_classes, real_batch, cfg, info, gen) -> torch.Tensor:
    """LGM: a fresh random head; the real batch (one augmentation pass each, no graph) against
    the synthetic set tiled A times with independent augmentations (with a graph)."""
    x_real, y_real = real_batch
    pp = info.preprocess
    with torch.no_grad(), _autocast(images.device, cfg.amp):
        z_real = model(normalize(augment(x_real, cfg.augment, cfg.crop_res, gen), pp.mean, pp.std)).float()
    z_syn = view_features(model, images, cfg, info, gen).flatten(0, 1)
    w, b = random_head(num_classes, z_syn.shape[1], gen)
    return lgm_loss(z_syn, labels.repeat(cfg.augs_per_batch), z_real, y_real, w, b)


def real_batches(source: LabelledImages, cfg: DistillConfig, interpolation: str, start: int, device, num_workers: int):
    """LGM's real images: IPC * A * C canvases per step, resumable (see StepBatches)."""
    from torch.utils.data import DataLoader

    from .data import CanvasDataset, collate_canvases

    batch = cfg.ipc * cfg.augs_per_batch * source.num_classes
    loader = DataLoader(
        CanvasDataset(source, cfg.syn_res, interpolation),  # the same canvases as Stage I
        batch_sampler=StepBatches(len(source), batch, cfg.seed, start, cfg.iterations),
        num_workers=num_workers, collate_fn=collate_canvases, pin_memory=device.type == "cuda",
    )
    for images, labels, _errors in loader:  # unreadable images were counted in Stage I; skip them
        yield images.to(device, non_blocking=True).float().div_(255), labels.to(device)


@torch.no_grad()
def flow_cosine(model, images: torch.Tensor, info: BackboneInfo, flow_real: torch.Tensor, num_classes: int, amp: bool = True) -> float:
    """The paper's fidelity metric: cos(F_syn, F_real) on centre-cropped synthetic images."""
    z = encode(model, center_crop(images, info.preprocess.input_size), info.preprocess, amp=amp)
    f_syn = synthetic_flow(z.double(), num_classes)
    return float(torch.nn.functional.cosine_similarity(f_syn.flatten(), flow_real.double().flatten().to(f_syn.device), dim=0))


def validate(cfg: DistillConfig) -> None:
    if cfg.method not in METHODS:
        raise EdgeddError(f"unknown method {cfg.method!r}", f"choose one of {', '.join(METHODS)}")
    if cfg.init not in INITS:
        raise EdgeddError(f"unknown init {cfg.init!r}", f"choose one of {', '.join(INITS)}")
    if cfg.flow_denominator not in FLOW_DENOMINATORS:
        raise EdgeddError(f"unknown flow denominator {cfg.flow_denominator!r}", f"choose one of {', '.join(FLOW_DENOMINATORS)}")
    if cfg.augment.crop_sampler not in CROP_SAMPLERS:
        raise EdgeddError(f"unknown crop sampler {cfg.augment.crop_sampler!r}", f"choose one of {', '.join(CROP_SAMPLERS)}")
    for name in ("ipc", "iterations", "augs_per_batch", "extend_every", "syn_res", "crop_res"):
        if getattr(cfg, name) < 1:
            raise EdgeddError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})", "pass a positive value")
    for name in ("syn_res", "crop_res"):
        if getattr(cfg, name) > MAX_RESOLUTION:
            raise EdgeddError(f"--{name.replace('_', '-')} must be at most {MAX_RESOLUTION} (got {getattr(cfg, name)})", "pass a resolution in pixels, e.g. 224")
    if not (cfg.beta >= 0 and math.isfinite(cfg.beta)):
        raise EdgeddError(f"--beta must be a finite value >= 0 (got {cfg.beta})", "pass e.g. 1.0 (0 is plain SFM)")
    if not 0 <= cfg.alpha <= 1:
        raise EdgeddError(f"--alpha must lie in [0, 1] (got {cfg.alpha})", "pass a value between 0 and 1")
    # finite, and at most MAX_LR: far larger steps overflow Adam's float32 update (a traceback at 1e38)
    if not (0 < cfg.lr <= MAX_LR):
        raise EdgeddError(f"--lr must be a finite value in (0, {MAX_LR:g}] (got {cfg.lr})", "pass a positive learning rate, e.g. 2e-3")


def distill(
    data: str,
    backbone: str,
    out: str | Path,
    weights: str = "hub",
    config: DistillConfig = DistillConfig(),
    stage1_config: StageIConfig = StageIConfig(),
    options: RunOptions = RunOptions(),
    crop_res: int | None = None,
    syn_res: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict | None:
    """Run both stages and return the summary (also written to ``summary.json``).

    Under ``torchrun`` every rank calls this; rank 0 alone writes files and returns the summary
    (the others return None). See :mod:`edgedd.distributed` for what is sharded.
    """
    t_start = time.perf_counter()
    out = Path(out)
    validate(replace(config, syn_res=1 if syn_res is None else syn_res, crop_res=1 if crop_res is None else crop_res))
    source: LabelledImages = open_dataset(data)  # cheap input checks before any model work
    check_model_name(backbone)
    if options.use_cache:  # a cache directory that is a file or read-only: one line now, not a traceback after Stage I
        atomic.check_writable_dir(cache_root(), "the cache directory", f"set {CACHE_ENV} to a writable directory, or pass --no-cache")
    group, device = setup(resolve_device(options.device))
    try:
        # one distill per run directory at a time: rank 0 holds the lock until the run returns
        with group.on_main(lambda: lock_run_dir(out)) or nullcontext():
            return _distill(data, backbone, out, weights, config, stage1_config, options, crop_res, syn_res, resume, overwrite,
                            source, group, device, t_start)
    finally:
        teardown(group)


def _distill(data, backbone, out, weights, config, stage1_config, options, crop_res, syn_res, resume, overwrite,
             source: LabelledImages, group: Dist, device, t_start) -> dict | None:
    main = group.main
    if group.enabled and config.method == "lgm":
        raise on_all_ranks(EdgeddError("--method lgm runs on one process (its loss needs the whole real batch and synthetic set)",
                                       "launch it without torchrun, or use --method sfm"))
    # reference-faithful sizes unless overridden or impossible (the rule: edgedd.backbones.distill_resolution)
    crop_res, syn_res, size_rule = distill_resolution(backbone, crop_res, syn_res)
    model, info = load_backbone(backbone, weights, input_size=crop_res, resize_size=syn_res, device=device, seed=config.seed)
    pp = info.preprocess
    if main and options.progress and progress_allowed():  # progress information: silent with -q / EDGEDD_PROGRESS=0
        say(f"resolution: synthetic {pp.resize_size} / crop {pp.input_size} ({size_rule})")  # the rule quotes the backbone name
    cfg = replace(config, syn_res=pp.resize_size, crop_res=pp.input_size)
    c, n = source.num_classes, source.num_classes * cfg.ipc
    if n < group.world:
        raise on_all_ranks(EdgeddError(f"{n} synthetic images cannot be shared by {group.world} processes",
                                       "launch at most one process per synthetic image"))
    identity = {
        "backbone": {"name": info.name, "weights_sha256": info.weights_sha256},
        "dataset": source.fingerprint,
        "preprocess": to_dict(pp),
        "distill": to_dict(cfg),
        "stage1": to_dict(stage1_config),
    }
    run_fp = fingerprint(identity)
    group.on_main(lambda: prepare_run_dir(out, {"format": RUN_FORMAT, "fingerprint": run_fp, "identity": identity, "edgedd": __version__},
                                          resume, overwrite))

    # ---- Stage I: from this run dir (resume), else the cache, else one pass over the data
    t1 = time.perf_counter()
    workers = default_num_workers() if options.num_workers is None else options.num_workers
    s1, from_cache = stage1_cached(model, info, source, stage1_config, device, workers, options.strict_images, options.progress,
                                   options.use_cache, group, run_dir=out)
    if main:
        save_stage1(s1, out)
    stage1_seconds = time.perf_counter() - t1

    # ---- Stage II: SFM (or the LGM baseline); this rank's rows of the pyramid
    rows = shard(n, group.rank, group.world)
    centres_real = s1.centres.to(device=device, dtype=torch.float32)
    flow_real = flow(s1.centres).to(device=device, dtype=torch.float32)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the same on every rank
    ckpt = out / CHECKPOINT
    start, loss_value = 0, float("nan")
    if resume and group.broadcast_text("yes" if main and ckpt.exists() else "") == "yes":
        start, pyr, opt, loss_value = load_checkpoint(ckpt, run_fp, cfg.syn_res, cfg.lr, gen, device, group, rows, n)
    else:
        if cfg.init == "real":
            real = real_init_images(source, cfg.ipc, cfg.syn_res, pp.interpolation, cfg.seed)[rows[0]:rows[1]]
            pyr = Pyramid.from_images(real.to(device), rows, n)
        else:
            pyr = Pyramid.init(n, cfg.syn_res, gen, device, rows)
        opt = _adam(pyr.levels, cfg.lr)
    ext = extension_steps(cfg.iterations, cfg.syn_res, cfg.extend_every)
    labels_dev = torch.arange(c, device=device).repeat_interleave(cfg.ipc)
    reals = real_batches(source, cfg, pp.interpolation, start, device, workers) if cfg.method == "lgm" else None
    if main:
        (out / "previews").mkdir(exist_ok=True)
    chunk = options.chunk_size
    if reals is not None:
        chunk = 0  # LGM's loss is not a function of per-image features alone
    elif chunk is None:
        chunk = auto_chunk_size(model, pyr, cfg, info, device, _autocast(device, cfg.amp))
    stop = cfg.iterations if options.stop_after is None else min(cfg.iterations, start + options.stop_after)
    memory = PhaseMemory(device)
    memory.start()
    step_memory = None  # one step's own working memory, see below
    fc_every = flow_every(options.preview_every)
    # rank 0's history; on resume the lines past the checkpoint go first (edgedd.metrics)
    metrics = MetricsLog(out / METRICS_FILE, keep_through=start) if main else nullcontext()
    t2 = time.perf_counter()
    with metrics, Progress(cfg.iterations, f"stage II: {cfg.method}", initial=start, enabled=options.progress and main) as bar:
        for step in range(start, stop):
            if pyr.grow(step, ext, gen):
                opt = _adam(pyr.levels, cfg.lr)  # reset at each extension (reference)
            # The phase's peak includes the synthetic set's own state (levels, Adam moments: the
            # same for every method), created inside it as the pyramid grows, and the framework's
            # lazy first-step allocations. The step's working memory is measured once, on the first
            # full-resolution step of this process whose state already exists.
            measure = step_memory is None and step > start and pyr.full and len(opt.state) == len(pyr.levels)
            in_step = memory.nested() if measure else None
            opt.zero_grad(set_to_none=True)
            if reals is not None:
                loss = lgm_step_loss(model, pyr.decode(), labels_dev, c, next(reals), cfg, info, gen)
                loss.backward()
            else:  # SFM: one pass or chunks, one rank or several (edgedd.chunked)
                loss = chunked_step(model, pyr, cfg, info, gen, lambda z: feature_loss(z, cfg, flow_real, centres_real),
                                    chunk, _autocast(device, cfg.amp), group)
            opt.step()
            loss_value = loss.item()
            if not math.isfinite(loss_value):  # stop before a NaN reaches a checkpoint or the result (the last checkpoint stays)
                raise on_all_ranks(EdgeddError(
                    f"the loss became {loss_value} at step {step + 1} of {cfg.iterations}",
                    "the learning rate is likely too high (lower --lr) or the Stage I statistics are damaged "
                    "(rerun into a new --out with --no-cache)"))
            if in_step is not None:
                step_memory = {**in_step.peak_mb(), "step": step}
            done = step + 1
            bar.update(1, loss=loss_value, res=pyr.levels[-1].shape[-1])
            preview_due = options.preview_every and done % options.preview_every == 0 and done < cfg.iterations
            fc_due = done % fc_every == 0 or done == cfg.iterations
            fc = None
            if preview_due or fc_due:
                with torch.no_grad():
                    images = group.rows_to_main(pyr.decode(), n)
                if main and preview_due:
                    write_grid(out / "previews" / f"step_{done:06d}.png", images.numpy(), c)
                if main and fc_due:  # a no-grad forward of the centre crops: draws nothing from gen
                    fc = flow_cosine(model, images, info, flow_real, c, cfg.amp)
            if main:
                metrics.write(done, loss_value, pyr.levels[-1].shape[-1], time.perf_counter() - t2, fc)
            if done < cfg.iterations and ((options.checkpoint_every and done % options.checkpoint_every == 0) or done == stop):
                save_checkpoint(ckpt, done, pyr, opt, gen, run_fp, loss_value, group)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stage2_seconds = time.perf_counter() - t2
    stage2_memory = memory.peak_mb()
    iters_run = stop - start
    if stop < cfg.iterations:  # --stop-after: checkpointed above; --resume continues
        return {"finished": False, "step": stop, "iterations": cfg.iterations, "final_loss": loss_value, "out": str(out),
                "ranks": group.world, "sec_per_iter": stage2_seconds / iters_run if iters_run else None} if main else None

    # ---- outputs (rank 0)
    with torch.no_grad():
        images = group.rows_to_main(pyr.decode().detach().float(), n)
    if not main:
        return None
    if not torch.isfinite(images).all():  # a finite loss with a non-finite last update: never write such a result
        raise EdgeddError(f"the synthetic images became non-finite at step {stop} of {cfg.iterations}",
                          "the learning rate is likely too high (lower --lr) or the Stage I statistics are damaged")
    labels = torch.arange(c).repeat_interleave(cfg.ipc)
    fcos = flow_cosine(model, images.to(device), info, flow_real, c, cfg.amp)
    lands = synthetic_landing(lambda x: encode(model, x, pp, amp=cfg.amp), images.to(device), pp.input_size, labels,
                              s1.centres, s1.weight, s1.bias, seed=cfg.seed)
    images = images.contiguous()
    synthetic_meta = {
        "format": RUN_FORMAT,
        "class_names": source.class_names,
        "preprocess": to_dict(pp),
        "backbone": info.to_dict(),
        "config": to_dict(cfg),
        "pixels": "float32 in [0, 1], not normalised; (N, 3, syn_res, syn_res), class-major",
    }
    atomic.write_bytes(out / "synthetic.safetensors", save(
        {"images": images, "labels": labels},
        metadata={"format": str(RUN_FORMAT), "json": json.dumps(synthetic_meta, sort_keys=True)},
    ))
    atomic.write_json(out / "synthetic.json", synthetic_meta)
    write_grid(out / "preview.png", images.numpy(), c)
    summary = {
        "edgedd": __version__,
        "finished": True,
        "method": cfg.method,
        "backbone": info.to_dict(),
        "dataset": {"name": source.name, "classes": c, "class_names": source.class_names,
                    "images_used": s1.meta.get("images_used"), "skipped_images": len(s1.meta.get("skipped_images", [])),
                    "skipped_files": s1.meta.get("skipped_images", [])[:20]},
        "ipc": cfg.ipc,
        "synthetic_images": n,
        "iterations": cfg.iterations,
        "resumed_from_step": start,
        "final_loss": loss_value,
        "flow_cosine": fcos,
        "landing": lands,
        "golden": {k: v for k, v in s1.meta.get("golden", {}).items() if k != "candidates"},
        "golden_train_top1": s1.meta.get("golden_train_top1_centre_crop"),
        "stage1_cached": from_cache,
        "stage1_seconds": stage1_seconds,
        "stage2_seconds": stage2_seconds,
        "sec_per_iter": stage2_seconds / iters_run if iters_run else None,
        "stage2_memory": stage2_memory,
        "stage2_step_memory": step_memory,
        "chunk_size": chunk,
        "ranks": group.world,
        "total_seconds": time.perf_counter() - t_start,
        "device": str(device),
        "config": to_dict(cfg),
        "stage1_config": to_dict(stage1_config),
        "out": str(out),
    }
    ckpt.unlink(missing_ok=True)  # the result supersedes it; summary.json marks the run finished
    atomic.write_json(out / "summary.json", summary)
    return summary
