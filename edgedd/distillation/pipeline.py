"""``edgedd distill``: Stage I (statistics + golden classifier), then Stage II (SFM).

A plain library function, :func:`distill`, that the CLI wraps, read as the paper's stages: the
plan (backbone, resolutions, the run's identity: :func:`_plan`), Stage I (:func:`_stage1`), Stage
II's steps (``edgedd.distillation.stage2`` makes them; :func:`_stage2` drives them, with the checkpoints,
previews, metrics and progress), then the results (:func:`_results`). Everything it writes lands
in one run directory, whose file names and writing are ``edgedd.distillation.rundir``'s:

    run.json                       what this run is (config, backbone, dataset): its identity
    stats.safetensors              class sums/counts/centres and the real flow (Stage I)
    golden_classifier.safetensors  the full-data linear probe (Stage I)
    stage1.json                    how Stage I was made
    checkpoint.safetensors         while running: pyramid, Adam state, RNG state, step
    previews/step_XXXXXX.png       the synthetic images every ``preview_every`` steps
    metrics.jsonl                  one line per Stage II step: loss, resolution, time, flow cosine every
                                   iterations // 10 (edgedd.distillation.metrics)
    synthetic.safetensors          the result: images in [0, 1] (N, 3, R, R) and labels
    synthetic.json                 class names, preprocessing and config of the result
    initial.safetensors            the starting set: the step-0 images (real draws or decoded noise)
    preview.png                    the final grid
    summary.json                   figures of the run; written last, marks it finished
    .edgedd.lock                   while a distill runs: its lock (edgedd.core.lock), removed at the end

Each file is written atomically. Resuming needs only ``checkpoint.safetensors``: it holds every
piece of state the loop has (including the one generator all randomness comes from), so a resumed
CPU run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from edgedd import __version__
from edgedd.backbones.forward import encode, resolve_device
from edgedd.backbones.loader import BackboneInfo, check_model_name, load_backbone
from edgedd.backbones.timm_rules import distill_resolution
from edgedd.core import atomic
from edgedd.core.config import (
    CROP_SAMPLERS,
    FLOW_DENOMINATORS,
    INITS,
    LR_SCHEDULES,
    MAX_RESOLUTION,
    METHODS,
    PROBE_METHODS,
    SUBCENTRE_METHODS,
    DistillConfig,
    RunOptions,
    StageIConfig,
    fingerprint,
    to_dict,
)
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages, open_dataset
from edgedd.core.paths import CACHE_ENV, cache_root, refuse_overlap
from edgedd.core.progress import Progress, progress_allowed
from edgedd.core.terminal import say
from edgedd.host.data import default_num_workers
from edgedd.host.distributed import Dist, on_all_ranks, setup, shard, teardown
from edgedd.host.memory import PhaseMemory

from . import copies, copyfloor, projector_aware, rundir, stage2, trainingset
from .checkpoint import save_checkpoint
from .fidelity import synthetic_landing
from .losses import flow
from .metrics import flow_every
from .stage1 import stage1_cached
from .stage1_files import Stage1, save_stage1

MAX_MIX = 64  # --init mix holds ipc * mix canvases per class at once
MAX_LR = 1e3  # the pyramid's logits saturate the sigmoid long before: no useful lr comes near it
# the training images' centre-crop features (edgedd.distillation.trainingset), made for Stage II's terms,
# are kept for the copy ratio at the end up to this size; past it that pass computes them again
HOLD_FEATURES_BYTES = 2 << 30


def validate(cfg: DistillConfig) -> None:
    if cfg.method not in METHODS:
        raise EdgeddError(f"unknown method {cfg.method!r}", f"choose one of {', '.join(METHODS)}")
    if cfg.init not in INITS:
        raise EdgeddError(f"unknown init {cfg.init!r}", f"choose one of {', '.join(INITS)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise EdgeddError(
            f"unknown learning-rate schedule {cfg.lr_schedule!r}", f"choose one of {', '.join(LR_SCHEDULES)}"
        )
    if cfg.flow_denominator not in FLOW_DENOMINATORS:
        raise EdgeddError(
            f"unknown flow denominator {cfg.flow_denominator!r}", f"choose one of {', '.join(FLOW_DENOMINATORS)}"
        )
    if cfg.augment.crop_sampler not in CROP_SAMPLERS:
        raise EdgeddError(
            f"unknown crop sampler {cfg.augment.crop_sampler!r}", f"choose one of {', '.join(CROP_SAMPLERS)}"
        )
    for name in ("ipc", "iterations", "augs_per_batch", "extend_every", "syn_res", "crop_res"):
        if getattr(cfg, name) < 1:
            raise EdgeddError(
                f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})", "pass a positive value"
            )
    for name in ("syn_res", "crop_res"):
        if getattr(cfg, name) > MAX_RESOLUTION:
            raise EdgeddError(
                f"--{name.replace('_', '-')} must be at most {MAX_RESOLUTION} (got {getattr(cfg, name)})",
                "pass a resolution in pixels, e.g. 224",
            )
    if not (cfg.beta >= 0 and math.isfinite(cfg.beta)):
        raise EdgeddError(f"--beta must be a finite value >= 0 (got {cfg.beta})", "pass e.g. 1.0 (0 is plain SFM)")
    for name in ("gamma", "kappa"):
        if not (getattr(cfg, name) >= 0 and math.isfinite(getattr(cfg, name))):
            raise EdgeddError(
                f"--{name} must be a finite value >= 0 (got {getattr(cfg, name)})", "pass e.g. 10.0 (0 is anchored SFM)"
            )
    lo, hi = cfg.augment.crop_scale
    if not (0 < lo <= hi <= 1):
        raise EdgeddError(
            f"the crop area range must satisfy 0 < min <= max <= 1 (got {lo}, {hi})", "pass e.g. --crop-min 0.25"
        )
    if not 0 <= cfg.augment.noise_p <= 1:
        raise EdgeddError(f"--noise-p must lie in [0, 1] (got {cfg.augment.noise_p})", "pass a probability, e.g. 0")
    if not 0 <= cfg.augment.centre_p <= 1:
        raise EdgeddError(
            f"--centre-view must lie in [0, 1] (got {cfg.augment.centre_p})", "pass a probability, e.g. 0.5"
        )
    if not (cfg.probe_ridge > 0 and math.isfinite(cfg.probe_ridge)):
        raise EdgeddError(f"probe_ridge must be a finite value > 0 (got {cfg.probe_ridge})", "pass e.g. 0.1")
    if not 0 <= cfg.alpha <= 1:
        raise EdgeddError(f"--alpha must lie in [0, 1] (got {cfg.alpha})", "pass a value between 0 and 1")
    # finite, and at most MAX_LR: far larger steps overflow Adam's float32 update (a traceback at 1e38)
    if not (0 < cfg.lr <= MAX_LR):
        raise EdgeddError(
            f"--lr must be a finite value in (0, {MAX_LR:g}] (got {cfg.lr})", "pass a positive learning rate, e.g. 2e-3"
        )
    if not (cfg.min_copy_ratio >= 0 and math.isfinite(cfg.min_copy_ratio)):
        raise EdgeddError(f"--min-copy-ratio must be a finite value >= 0 (got {cfg.min_copy_ratio})", "pass e.g. 1.05")
    if not (cfg.copy_weight >= 0 and math.isfinite(cfg.copy_weight)):
        raise EdgeddError(f"copy_weight must be a finite value >= 0 (got {cfg.copy_weight})", "pass e.g. 100")
    if not 1 <= cfg.mix <= MAX_MIX:
        raise EdgeddError(f"--mix must lie in [1, {MAX_MIX}] (got {cfg.mix})", "pass e.g. 4")
    if cfg.min_copy_ratio > 0 and (cfg.init in ("real", "coreset") or (cfg.init == "mix" and cfg.mix < 2)):
        raise EdgeddError(
            "--min-copy-ratio cannot start from training images (--init real or coreset, or --init mix --mix 1): "
            "each image would start on one, where only the pyramid's clamp says which way is away",
            "add --init mix (means of several real images, --mix 2 or more) or --init noise",
        )
    projector_aware.validate(cfg)


def distill(
    data: str,
    backbone: str,
    out: str | Path,
    *,
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
    (the others return None). See :mod:`edgedd.host.distributed` for what is sharded.
    """
    t_start = time.perf_counter()
    out = Path(out)
    validate(replace(config, syn_res=1 if syn_res is None else syn_res, crop_res=1 if crop_res is None else crop_res))
    refuse_overlap(out, "--out", data, "the data directory")  # the run would become a class of its own data
    source: LabelledImages = open_dataset(data)  # cheap input checks before any model work
    check_model_name(backbone)
    if options.use_cache:  # a cache directory that is a file or read-only: one line now, not a traceback after Stage I
        atomic.check_writable_dir(
            cache_root(), "the cache directory", f"set {CACHE_ENV} to a writable directory, or pass --no-cache"
        )
    group, device = setup(resolve_device(options.device))
    try:
        # one distill per run directory at a time: rank 0 holds the lock until the run returns
        with group.on_main(lambda: rundir.lock_run_dir(out)) or nullcontext():
            plan = _plan(
                out=out,
                source=source,
                backbone=backbone,
                weights=weights,
                config=config,
                stage1_config=stage1_config,
                options=options,
                crop_res=crop_res,
                syn_res=syn_res,
                group=group,
                device=device,
                t_start=t_start,
            )
            group.on_main(lambda: rundir.prepare_run_dir(out, plan.run_json(), resume=resume, overwrite=overwrite))
            s1 = _stage1(plan)
            return _results(plan, s1, _stage2(plan, s1, resume=resume))
    finally:
        teardown(group)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """What a run computes (``cfg`` with its resolutions resolved, the backbone loaded, the run's
    identity) and how and where it runs."""

    out: Path
    source: LabelledImages
    model: torch.nn.Module
    info: BackboneInfo
    cfg: DistillConfig
    stage1_config: StageIConfig
    options: RunOptions
    group: Dist
    device: torch.device
    identity: dict
    t_start: float

    @property
    def run_fp(self) -> str:
        return fingerprint(self.identity)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def n(self) -> int:  # synthetic images
        return self.source.num_classes * self.cfg.ipc

    @property
    def workers(self) -> int:
        return default_num_workers() if self.options.num_workers is None else self.options.num_workers

    def run_json(self) -> dict:
        return {
            "format": rundir.RUN_FORMAT,
            "fingerprint": self.run_fp,
            "identity": self.identity,
            "edgedd": __version__,
        }


def _plan(
    *,
    out: Path,
    source: LabelledImages,
    backbone: str,
    weights: str,
    config: DistillConfig,
    stage1_config: StageIConfig,
    options: RunOptions,
    crop_res: int | None,
    syn_res: int | None,
    group: Dist,
    device,
    t_start: float,
) -> Plan:
    """The backbone loaded, at the resolutions the run uses, and the run's identity."""
    if group.enabled and config.method == "lgm":
        raise on_all_ranks(
            EdgeddError(
                "--method lgm runs on one process (its loss needs the whole real batch and synthetic set)",
                "launch it without torchrun, or use --method sfm",
            )
        )
    if group.enabled and config.surrogates:
        raise on_all_ranks(
            EdgeddError(
                "--surrogate runs on one process (its projector is fitted on the whole synthetic set)",
                "launch it without torchrun",
            )
        )
    # reference-faithful sizes unless overridden or impossible (the rule:
    # edgedd.backbones.timm_rules.distill_resolution)
    crop_res, syn_res, size_rule = distill_resolution(backbone, crop_res, syn_res)
    model, info = load_backbone(
        backbone, weights, input_size=crop_res, resize_size=syn_res, device=device, seed=config.seed
    )
    pp = info.preprocess
    if (
        group.main and options.progress and progress_allowed()
    ):  # progress information: silent with -q / EDGEDD_PROGRESS=0
        say(
            f"resolution: synthetic {pp.resize_size} / crop {pp.input_size} ({size_rule})"
        )  # the rule quotes the backbone name
    cfg = replace(config, syn_res=pp.resize_size, crop_res=pp.input_size)
    if cfg.min_copy_ratio > 0:  # before Stage I: a refusal costs no pass over the data
        copyfloor.check_memory(cfg, len(source), model)
    n = source.num_classes * cfg.ipc
    if n < group.world:
        raise on_all_ranks(
            EdgeddError(
                f"{n} synthetic images cannot be shared by {group.world} processes",
                "launch at most one process per synthetic image",
            )
        )
    identity = {
        "backbone": {"name": info.name, "weights_sha256": info.weights_sha256},
        "dataset": source.fingerprint,
        "preprocess": to_dict(pp),
        "distill": to_dict(cfg),
        "stage1": to_dict(stage1_config),
    }
    return Plan(
        out=out,
        source=source,
        model=model,
        info=info,
        cfg=cfg,
        stage1_config=stage1_config,
        options=options,
        group=group,
        device=device,
        identity=identity,
        t_start=t_start,
    )


# ----------------------------------------------------------------------------- Stage I


@dataclass(frozen=True)
class Stage1Result:
    stats: Stage1
    cached: bool
    seconds: float


def _stage1(plan: Plan) -> Stage1Result:
    """From this run dir (resume), else the cache, else one pass over the data; the run dir's
    copy written by rank 0."""
    t1 = time.perf_counter()
    o = plan.options
    s1, from_cache = stage1_cached(
        plan.model,
        plan.info,
        plan.source,
        plan.stage1_config,
        plan.device,
        num_workers=plan.workers,
        strict_images=o.strict_images,
        progress=o.progress,
        use_cache=o.use_cache,
        group=plan.group,
        run_dir=plan.out,
    )
    if plan.group.main:
        save_stage1(s1, plan.out)
    return Stage1Result(s1, from_cache, time.perf_counter() - t1)


# ----------------------------------------------------------------------------- Stage II


@dataclass(frozen=True)
class Stage2Result:
    loop: stage2.Loop
    start: int  # the step it started from (resume)
    stop: int  # the step it ended at
    seconds: float
    memory: dict  # the phase's peak (edgedd.host.memory)
    chunk: int
    flow_real: torch.Tensor
    extra: dict  # the added terms' summaries: "projector_aware", "copy_floor" (when on)
    features: trainingset.TrainingFeatures | None  # held for the copy ratio (HOLD_FEATURES_BYTES), else None

    @property
    def sec_per_iter(self) -> float | None:
        return self.seconds / (self.stop - self.start) if self.stop != self.start else None


def _stage2(plan: Plan, s1: Stage1Result, *, resume: bool) -> Stage2Result:
    """SFM (or the LGM baseline) on this rank's rows of the pyramid, checkpointed every
    ``checkpoint_every`` steps and at ``stop_after``."""
    cfg, group, device, o, main = plan.cfg, plan.group, plan.device, plan.options, plan.group.main
    centres_real = s1.stats.centres.to(device=device, dtype=torch.float32)
    flow_real = flow(s1.stats.centres).to(device=device, dtype=torch.float32)
    ckpt = plan.out / rundir.CHECKPOINT
    found = resume and group.broadcast_flag(main and ckpt.exists())
    features = _training_features(plan)
    loop = stage2.start(
        cfg=cfg,
        source=plan.source,
        interpolation=plan.info.preprocess.interpolation,
        device=device,
        group=group,
        rows=shard(plan.n, group.rank, group.world),
        total=plan.n,
        checkpoint=ckpt if found else None,
        run_fp=plan.run_fp,
        features=features,
    )
    start = loop.step
    if start == 0:  # the starting set, for evaluate's stage-II gain and the copy ratio (a resumed run keeps it)
        with torch.no_grad():
            initial = group.rows_to_main(loop.pyr.decode().detach().float(), plan.n)
        if main:
            rundir.write_initial(
                plan.out, images=initial, labels=torch.arange(plan.num_classes).repeat_interleave(cfg.ipc)
            )
    step, chunk = stage2.step_function(
        loop=loop,
        model=plan.model,
        info=plan.info,
        cfg=cfg,
        source=plan.source,
        device=device,
        group=group,
        flow_real=flow_real,
        centres_real=centres_real,
        chunk_size=o.chunk_size,
        num_workers=plan.workers,
        features=features,
    )
    if cfg.surrogates:  # plus the projector-aware term (edgedd.distillation.projector_aware)
        step = projector_aware.ProjectorAware(
            step, plan.model, plan.info, cfg, plan.source, (s1.stats.weight, s1.stats.bias), device, plan.workers
        )
    if cfg.min_copy_ratio > 0:  # plus the copy floor (edgedd.distillation.copyfloor)
        step = copyfloor.CopyFloor(
            step, plan.model, plan.info, cfg, plan.source, device, plan.workers, chunk, group, features
        )
    # the terms keep what they need of the features; the copy ratio at the end reads them only when they
    # are small (HOLD_FEATURES_BYTES) and only on rank 0, so no larger copy lives through the steps
    if features is not None and not (main and features.feats.nbytes <= HOLD_FEATURES_BYTES):
        features = None
    stop = cfg.iterations if o.stop_after is None else min(cfg.iterations, start + o.stop_after)
    memory = PhaseMemory(device)
    memory.start()
    log = rundir.stage2_log(plan.out, keep_through=start) if main else nullcontext()  # rank 0's history
    t2 = time.perf_counter()
    with log, Progress(cfg.iterations, f"stage II: {cfg.method}", initial=start, enabled=o.progress and main) as bar:
        for _ in stage2.steps(loop, step, cfg=cfg, stop=stop, memory=memory):  # advances ``loop`` in place
            bar.update(1, loss=loop.loss, res=loop.resolution)
            fc = _look(plan, loop, flow_real)
            if main:
                log.write(loop.step, loop.loss, loop.resolution, time.perf_counter() - t2, fc)
            if loop.step < cfg.iterations and (
                (o.checkpoint_every and loop.step % o.checkpoint_every == 0) or loop.step == stop
            ):
                save_checkpoint(
                    ckpt,
                    step=loop.step,
                    pyr=loop.pyr,
                    opt=loop.opt,
                    gen=loop.gen,
                    run_fp=plan.run_fp,
                    loss=loop.loss,
                    group=group,
                )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Stage2Result(
        loop,
        start,
        stop,
        time.perf_counter() - t2,
        memory.peak_mb(),
        chunk,
        flow_real,
        _terms(step),
        features,
    )


def _training_features(plan: Plan) -> trainingset.TrainingFeatures | None:
    """The one pass over the training images' centre crops, when a Stage II term needs it: sfm_sub's
    sub-centres, sfm_probe's real features (both for sfm_sub_probe), the copy floor in phi_A, --init coreset's picks
    (edgedd.distillation.trainingset)."""
    cfg = plan.cfg
    if (
        cfg.method not in SUBCENTRE_METHODS + PROBE_METHODS
        and cfg.init != "coreset"
        and not (cfg.min_copy_ratio > 0 and cfg.copy_floor_features)
    ):
        return None
    return trainingset.training_features(
        plan.model,
        plan.info,
        plan.source,
        plan.device,
        batch_size=plan.stage1_config.batch_size,
        num_workers=plan.workers,
        amp=cfg.amp,
        progress=plan.options.progress and plan.group.main,
    )


def _terms(step) -> dict:
    """The added terms' summaries, by term (each wrapper keeps the step it wraps as ``.step``)."""
    out = {}
    while isinstance(step, projector_aware.ProjectorAware | copyfloor.CopyFloor):
        out["copy_floor" if isinstance(step, copyfloor.CopyFloor) else "projector_aware"] = step.summary()
        step = step.step
    return out


def _look(plan: Plan, loop: stage2.Loop, flow_real: torch.Tensor) -> float | None:
    """The preview (every ``preview_every`` steps) and the flow cosine (every ``flow_every(iterations)``
    steps and at the end) after ``loop.step`` steps; the flow cosine (rank 0) or None."""
    done, cfg, every = loop.step, plan.cfg, plan.options.preview_every
    preview_due = every and done % every == 0 and done < cfg.iterations
    fc_due = done % flow_every(cfg.iterations) == 0 or done == cfg.iterations
    if not (preview_due or fc_due):
        return None
    with torch.no_grad():
        images = plan.group.rows_to_main(loop.pyr.decode(), plan.n)
    if plan.group.main and preview_due:
        rundir.write_preview(plan.out, step=done, images=images.numpy(), num_classes=plan.num_classes)
    if plan.group.main and fc_due:  # a no-grad forward of the centre crops: draws nothing from gen
        return stage2.flow_cosine(plan.model, images, plan.info, flow_real, plan.num_classes, cfg.amp)
    return None


# ----------------------------------------------------------------------------- results


def _results(plan: Plan, s1: Stage1Result, s2: Stage2Result) -> dict | None:
    """After ``stop_after`` steps: where the run stopped (its checkpoint continues it). Finished:
    the synthetic images, their grid and the summary, written by rank 0, which alone returns it."""
    cfg, main = plan.cfg, plan.group.main
    if s2.stop < cfg.iterations:  # --stop-after: checkpointed above; --resume continues
        return (
            {
                "finished": False,
                "step": s2.stop,
                "iterations": cfg.iterations,
                "final_loss": s2.loop.loss,
                "out": str(plan.out),
                "ranks": plan.group.world,
                "sec_per_iter": s2.sec_per_iter,
            }
            if main
            else None
        )
    with torch.no_grad():
        images = plan.group.rows_to_main(s2.loop.pyr.decode().detach().float(), plan.n)
    if not main:
        return None
    if not torch.isfinite(images).all():  # a finite loss with a non-finite last update: never write such a result
        raise EdgeddError(
            f"the synthetic images became non-finite at step {s2.stop} of {cfg.iterations}",
            "the learning rate is likely too high (lower --lr) or the Stage I statistics are damaged",
        )
    c, pp, device = plan.num_classes, plan.info.preprocess, plan.device
    labels = torch.arange(c).repeat_interleave(cfg.ipc)
    fcos = stage2.flow_cosine(plan.model, images.to(device), plan.info, s2.flow_real, c, cfg.amp)
    lands = synthetic_landing(
        lambda x: encode(plan.model, x, pp, amp=cfg.amp),
        images.to(device),
        pp.input_size,
        labels,
        s1.stats.centres,
        s1.stats.weight,
        s1.stats.bias,
        seed=cfg.seed,
    )
    rundir.write_result(
        plan.out,
        images=images.contiguous(),
        labels=labels,
        meta={
            "format": rundir.RUN_FORMAT,
            "class_names": plan.source.class_names,
            "preprocess": to_dict(pp),
            "backbone": plan.info.to_dict(),
            "config": to_dict(cfg),
            "pixels": "float32 in [0, 1], not normalised; (N, 3, syn_res, syn_res), class-major",
        },
    )
    summary = _summary(plan, s1, s2, flow_cosine=fcos, landing=lands)
    summary.update(_copy_ratios(plan, images, s2.features))
    rundir.write_summary(plan.out, summary)  # marks the run finished
    return summary


def _copy_ratios(plan: Plan, images: torch.Tensor, features: trainingset.TrainingFeatures | None) -> dict:
    """``copy_ratio`` of the result and ``copy_ratio_start`` of the starting set (edgedd.core.copyratio),
    in one streaming pass over the training data (its phi_A from ``features`` when the run holds them),
    and the pass's wall time."""
    sets = {"copy_ratio": images}
    if (plan.out / rundir.INITIAL).exists():
        sets["copy_ratio_start"] = rundir.read_tensors(plan.out, rundir.INITIAL)["images"].float()
    t = time.perf_counter()
    out = copies.measure(
        plan.model,
        plan.info,
        plan.source,
        sets,
        seed=plan.cfg.seed,
        device=plan.device,
        batch_size=plan.stage1_config.batch_size,
        num_workers=plan.workers,
        amp=plan.cfg.amp,
        progress=plan.options.progress,
        features=features,
    )
    return {**out, "copy_ratio_seconds": time.perf_counter() - t}


def _summary(plan: Plan, s1: Stage1Result, s2: Stage2Result, *, flow_cosine: float, landing: dict) -> dict:
    cfg, source, meta = plan.cfg, plan.source, s1.stats.meta
    return {
        "edgedd": __version__,
        "finished": True,
        "method": cfg.method,
        "backbone": plan.info.to_dict(),
        "dataset": {
            "name": source.name,
            "classes": source.num_classes,
            "class_names": source.class_names,
            "images_used": meta.get("images_used"),
            "skipped_images": len(meta.get("skipped_images", [])),
            "skipped_files": meta.get("skipped_images", [])[:20],
        },
        "ipc": cfg.ipc,
        "synthetic_images": plan.n,
        "iterations": cfg.iterations,
        "resumed_from_step": s2.start,
        "final_loss": s2.loop.loss,
        "flow_cosine": flow_cosine,
        "landing": landing,
        "golden": {k: v for k, v in meta.get("golden", {}).items() if k != "candidates"},
        "golden_train_top1": meta.get("golden_train_top1_centre_crop"),
        "stage1_cached": s1.cached,
        "stage1_seconds": s1.seconds,
        "stage2_seconds": s2.seconds,
        "sec_per_iter": s2.sec_per_iter,
        "stage2_memory": s2.memory,
        "stage2_step_memory": s2.loop.step_memory,
        "chunk_size": s2.chunk,
        "projector_aware": s2.extra.get("projector_aware"),
        "copy_floor": s2.extra.get("copy_floor"),
        "ranks": plan.group.world,
        "total_seconds": time.perf_counter() - plan.t_start,
        "device": str(plan.device),
        "config": to_dict(cfg),
        "stage1_config": to_dict(plan.stage1_config),
        "out": str(plan.out),
    }
