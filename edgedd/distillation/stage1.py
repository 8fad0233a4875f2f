"""Stage I: class centres and the golden full-data classifier, in one streaming pass.

For each batch of canvases the backbone sees the centre crop (for the statistics) and
``golden_views`` flip + random-resized-crop views (for the classifier) in one forward:

    sums[c]   += sum of phi(centre crop) over images of class c      (float64)
    counts[c] += number of images of class c
    mu_c       = sums[c] / counts[c]                                  (exact, any dataset size;
                                                                       shards add up: all-reduce)

The views' features go to a disk-backed array, and the golden probe (Linear(D, C), W ~ N(0, 0.01^2),
b = 0, cross-entropy) trains on them with one of two recipes (``StageIConfig.golden_recipe``):
``converged`` (default) fits L2-regularised logistic regression to its optimum (``edgedd.host.heads``),
choosing the L2 strength and whether the augmented views help on a held-out slice of the training
set, then refits on all of it; ``reference`` is METHOD.md's Adam lr 1e-3 * batch / 256, cosine, 10
epochs, one randomly chosen view per image per epoch (it under-trains on small data sets: 320 steps
on 4,000 images).

Results are cached under ``$EDGEDD_CACHE_DIR`` (default ``~/.cache/edgedd``) keyed by backbone,
weights hash, dataset fingerprint, preprocessing and this config, so a second distill on the same
data skips the pass. The files of an entry (the same as a run directory's Stage I files) are
``edgedd.distillation.stage1_files``'.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgedd.backbones.forward import backbone_autocast as _autocast
from edgedd.backbones.loader import BackboneInfo
from edgedd.core import atomic
from edgedd.core.config import RECIPES, AugmentConfig, StageIConfig, fingerprint, to_dict
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages
from edgedd.core.paths import cache_root
from edgedd.core.progress import Progress
from edgedd.host.augment import center_crop, normalize, render_views, sample_views
from edgedd.host.data import canvas_loader
from edgedd.host.distributed import SINGLE, Dist, on_all_ranks
from edgedd.host.heads import ce_loss, fit_lbfgs, train_reference
from edgedd.host.rng import block_generator, numpy_generator, torch_generator

from .stage1_files import STAGE1_FORMAT, Stage1, load_stage1, save_stage1


def _feature_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The on-disk (n, 1 + K, D) feature array of the pass; a full disk or file-size limit: one line."""
    try:
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    except OSError as e:
        raise atomic.os_error(
            e, path.parent.parent, "write the Stage I features in"
        ) from None  # the temporary's parent: the directory to act on


def stage1_key(info: BackboneInfo, source: LabelledImages, cfg: StageIConfig) -> str:
    return fingerprint(
        {
            "format": STAGE1_FORMAT,
            "backbone": info.name,
            "weights_sha256": info.weights_sha256,
            "dataset": source.fingerprint,
            "preprocess": to_dict(info.preprocess),
            "stage1": to_dict(cfg),
        }
    )


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    info: BackboneInfo,
    source: LabelledImages,
    cfg: StageIConfig,
    device: torch.device,
    feature_file: Path,
    *,
    num_workers: int = 0,
    strict_images: bool = False,
    progress: bool = True,
    group: Dist = SINGLE,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None, np.ndarray | None, list[str]]:
    """The streaming pass. Returns sums, counts, view features (n_ok, 1 + K, D; slot 0 is the
    centre crop), their labels, and the unreadable files' messages.

    Batches are fixed slices of the dataset (batch b = images [b*B, (b+1)*B)) whose augmentation
    draws come from batch b's own generator, so a view depends on the image, not on who computes
    it: with W ranks, rank r takes batches r, r+W, ...; sums and counts are all-reduced and the
    features gathered round by round, in batch order, into rank 0's array (None on other ranks).
    """
    pp = info.preprocess
    c, d, k = source.num_classes, info.num_features, cfg.golden_views
    sums = torch.zeros(c, d, dtype=torch.float64, device=device)
    counts = torch.zeros(c, dtype=torch.int64, device=device)
    feats = _feature_array(Path(feature_file), (len(source), 1 + k, d)) if group.main else None
    labels_kept = np.empty(len(source), dtype=np.int64) if group.main else None
    aug = AugmentConfig()  # flip + RRC at the reference values; no noise for real images
    skipped: list[str] = []
    pos = 0
    n_batches = -(-len(source) // cfg.batch_size)
    mine = list(range(group.rank, n_batches, group.world))
    batches = [list(range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(source)))) for b in mine]
    loader = iter(
        canvas_loader(
            source,
            pp.resize_size,
            pp.interpolation,
            cfg.batch_size,
            num_workers,
            pin_memory=device.type == "cuda",
            batches=batches,
        )
    )
    with Progress(len(source), "stage I: statistics", enabled=progress and group.main) as bar:
        for rnd in range(-(-n_batches // group.world)):
            if rnd < len(mine):
                images, labels, errors = next(loader)
            else:  # this rank has no batch in the last round but still joins its collectives
                images, labels, errors = (
                    torch.empty(0, 3, 1, 1, dtype=torch.uint8),
                    torch.empty(0, dtype=torch.long),
                    [],
                )
            if group.any(bool(errors)):
                errors = group.all_gather_text(errors)
                if strict_images:
                    raise on_all_ranks(
                        EdgeddError(
                            f"cannot read image {errors[0]}",
                            "fix or remove the file, or drop --strict-images to skip unreadable images",
                        )
                    )
                skipped.extend(errors)
            b = images.shape[0]
            z = torch.empty(0, 1 + k, d, device=device)
            labels = labels.to(device)
            if b:
                x = images.to(device, non_blocking=True).float().div_(255)
                gen = block_generator(cfg.seed, mine[rnd], device)
                crops = [center_crop(x, pp.input_size)]
                for _ in range(k):
                    crops.append(render_views(x, sample_views(b, aug, gen), pp.input_size))
                with _autocast(device):
                    z = model(normalize(torch.cat(crops), pp.mean, pp.std)).float()
                z = z.view(1 + k, b, d).transpose(0, 1)
                sums.index_add_(0, labels, z[:, 0].double())
                counts += torch.bincount(labels, minlength=c)
            z, labels = group.gather_rows(z), group.gather_rows(labels)  # the golden probe trains on rank 0
            if group.main:
                feats[pos : pos + len(labels)] = z.cpu().numpy()
                labels_kept[pos : pos + len(labels)] = labels.cpu().numpy()
                pos += len(labels)
                bar.update(len(labels) + len(errors))
    group.all_reduce_sum_(sums)
    group.all_reduce_sum_(counts)
    empty = [source.class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise on_all_ranks(
            EdgeddError(f"no readable images in class(es) {', '.join(empty)}", "add readable images to those classes")
        )
    if not group.main:
        return sums.cpu(), counts.cpu(), None, None, skipped
    feats.flush()
    return sums.cpu(), counts.cpu(), feats[:pos], labels_kept[:pos], skipped


class ViewRows:
    """Stage I's (n, 1 + K, D) view features (slot 0 the centre crop), restricted to some images and
    some slots, read lazily: a memmap stays on disk until a chunk of rows is asked for."""

    def __init__(self, feats, images: np.ndarray | None = None, slots: list[int] | None = None):
        self.feats, self.images = feats, images
        self.slots = list(range(feats.shape[1])) if slots is None else slots
        n = feats.shape[0] if images is None else len(images)
        self.shape = (n, len(self.slots), feats.shape[2])

    def __getitem__(self, sl: slice) -> np.ndarray:
        rows = self.feats[sl] if self.images is None else self.feats[self.images[sl]]
        return np.asarray(rows)[:, self.slots]

    def epoch(
        self, gen: torch.Generator
    ) -> torch.Tensor:  # the reference recipe's sampler: the order, then one slot per image
        perm = torch.randperm(self.shape[0], generator=gen)
        self.pick = torch.randint(len(self.slots), (self.shape[0],), generator=gen)
        return perm

    @property
    def n(self) -> int:
        return self.shape[0]

    def load(self, limit_bytes: int = 1 << 30):
        """The rows as one in-memory tensor when they take at most ``limit_bytes``, else ``self``
        (read chunk by chunk): the L-BFGS fits pass over them hundreds of times."""
        n, v, d = self.shape
        return torch.from_numpy(np.ascontiguousarray(self[0:n])) if n * v * d * 4 <= limit_bytes else self

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor]:
        order = torch.argsort(idx)  # sorted reads from the memmap, then undo
        inv = torch.argsort(order)
        pos = idx[order].numpy()
        rows = self.feats[pos if self.images is None else self.images[pos]]
        slots = np.asarray(self.slots)[self.pick[idx[order]].numpy()]
        x = np.asarray(rows)[np.arange(len(pos)), slots]
        return (torch.from_numpy(np.ascontiguousarray(x))[inv],)


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified held-out slice: per class round(fraction * n_c) images (none from a class
    with fewer than 2), drawn from the stream ("golden-holdout", seed): train_golden and pack pass
    the same plain Stage I seed. Returns sorted (train, held-out) indices."""
    gen = numpy_generator("golden-holdout", seed)
    held = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        k = (
            min(int(round(fraction * len(pool))), len(pool) - 1) if len(pool) >= 2 else 0
        )  # a class keeps an image to train on
        held.append(gen.permutation(pool)[:k])
    held = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), held), held


def heldout_images(run, limit: int | None = None) -> tuple[LabelledImages, np.ndarray]:
    """The run's (edgedd.distillation.rundir.Run) training data and the indices of the golden
    classifier's held-out slice in it: the real images pack and evaluate choose the projector's
    strength on, and pack's expectation is measured on.

    The slice is Stage I's (:func:`holdout_split`, same fraction and seed), taken over
    the images Stage I could read: its split indexes those, so the ones it skipped as unreadable
    are left out first. ``limit``: at most that many, evenly spread over the sorted slice so every
    class keeps its share. Raises EdgeddError when the data cannot be opened or no longer matches.
    """
    source = run.train_data()  # refuses data whose fingerprint changed since the run
    read = np.arange(len(source))
    skipped = run.stage1.get("skipped_images") or []
    if skipped and source.paths is not None:
        # messages are "<path>: <error>" (edgedd.host.data.CanvasDataset)
        unreadable = {m.split(": ", 1)[0] for m in skipped}
        read = np.asarray([i for i, p in enumerate(source.paths) if p not in unreadable], dtype=np.int64)
    used = run.stage1.get("images_used")
    if used is not None and used != len(read):
        raise EdgeddError(f"cannot tell which {used} of the {len(source)} training images Stage I read")
    if run.stage1.get("format") != STAGE1_FORMAT:  # older Stage I: another slice, or a golden classifier refitted on it
        raise EdgeddError(
            f"its Stage I (format {run.stage1.get('format')}, this edgedd writes {STAGE1_FORMAT}) drew or trained on "
            "the held-out slice differently"
        )
    cfg = run.stage1_config()
    if cfg.golden_recipe != "converged":  # the reference recipe trains on every image: nothing is held out
        raise EdgeddError(
            f"its golden classifier ({cfg.golden_recipe} recipe) trained on every image, none is held out"
        )
    _, held = holdout_split(source.labels[read], cfg.golden_holdout, cfg.seed)  # as train_golden draws it
    held = read[held]
    if limit is not None and len(held) > limit:
        held = held[np.linspace(0, len(held) - 1, limit).round().astype(np.int64)] if limit > 0 else held[:0]
    return source, held


def _top1(head: torch.nn.Linear, x, labels: np.ndarray, device) -> float:
    """Top-1 of ``head`` on (n, 1, D) rows (a centre-crop slot), in chunks."""
    correct = 0
    with torch.no_grad():
        for s in range(0, x.shape[0], 4096):
            z = torch.from_numpy(np.ascontiguousarray(x[s : s + 4096][:, 0])).to(device)
            correct += int((head(z).argmax(1).cpu().numpy() == labels[s : s + 4096]).sum())
    return correct / max(1, x.shape[0])


def _golden_head(d: int, num_classes: int, cfg: StageIConfig, device) -> torch.nn.Linear:
    """Linear(D, C), W ~ N(0, 0.01^2) from the stream ("golden-init", seed) (drawn on ``device``, as
    edgedd always has), b = 0."""
    head = torch.nn.Linear(d, num_classes).to(device)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=torch_generator("golden-init", cfg.seed, device=device))
        head.bias.zero_()
    return head


def train_golden(
    feats, labels: np.ndarray, num_classes: int, cfg: StageIConfig, device: torch.device, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The golden classifier on Stage I's (n, 1 + K, D) view features; see ``StageIConfig``.
    Returns weight (C, D), bias (C,) and a report: recipe, choices, training loss, held-out top-1."""
    n, views, d = feats.shape
    centre = ViewRows(feats, slots=[0])
    if cfg.golden_recipe == "reference":  # one random view among slots 1..K per image per epoch
        head = _golden_head(d, num_classes, cfg, device)
        sampler = ViewRows(feats, slots=list(range(1, views)) if views > 1 else [0])
        y = torch.from_numpy(labels).to(device)
        with Progress(cfg.golden_epochs, "stage I: golden classifier", enabled=progress) as bar:
            fit = train_reference(
                head,
                sampler,
                ce_loss(y),
                cfg.golden_epochs,
                cfg.golden_batch,
                cfg.resolved_golden_lr(),
                torch_generator("golden-reference", cfg.seed),
                bar,
            )
        report = {
            "recipe": "reference",
            "epochs": cfg.golden_epochs,
            "lr": cfg.resolved_golden_lr(),
            **fit.report(),
            "heldout_top1": None,
        }
    elif cfg.golden_recipe == "converged":
        # the held-out slice stays out of every fit, the final one too: it chooses the settings but
        # never trains the shipped classifier (pack's real-image expectation is measured on it)
        fit_rows, held = holdout_split(labels, cfg.golden_holdout, cfg.seed)
        train = fit_rows
        if len(train) > cfg.golden_select_max:
            train = np.sort(
                numpy_generator("golden-select", cfg.seed).choice(train, cfg.golden_select_max, replace=False)
            )
        inputs = {"centre": [0], "centre+views": list(range(views))} if views > 1 else {"centre": [0]}
        candidates, heads = [], {}
        held_rows = ViewRows(feats, held, [0]).load()
        y = torch.from_numpy(labels[train]).to(device)
        l2s = sorted(cfg.golden_l2_grid, reverse=True)  # strong to weak: each fit warm-starts from the last
        with Progress(len(inputs) * len(l2s) + 1, "stage I: golden classifier", enabled=progress) as bar:
            for name, slots in inputs.items():  # ties go to the first: fewer inputs, stronger L2
                rows, warm = ViewRows(feats, train, slots).load(), None
                for l2 in l2s:
                    fit = fit_lbfgs(
                        _golden_head(d, num_classes, cfg, device),
                        (rows,),
                        ce_loss(y),
                        l2,
                        cfg.golden_max_iter,
                        warm_start=warm,
                    )
                    warm = heads[name, l2] = fit.head
                    acc = _top1(fit.head, held_rows, labels[held], device) if len(held) else float("nan")
                    candidates.append(
                        {
                            "inputs": name,
                            "l2": l2,
                            "heldout_top1": acc,
                            "train_loss": fit.loss_final,
                            "steps": fit.steps,
                        }
                    )
                    bar.update(1, heldout=acc)
            best = max(candidates, key=lambda c: -1 if c["heldout_top1"] != c["heldout_top1"] else c["heldout_top1"])
            fit = fit_lbfgs(
                _golden_head(d, num_classes, cfg, device),
                (ViewRows(feats, fit_rows, inputs[best["inputs"]]).load(),),
                ce_loss(torch.from_numpy(labels[fit_rows]).to(device)),
                best["l2"],
                cfg.golden_max_iter,
                warm_start=heads[best["inputs"], best["l2"]],
            )
            bar.update(1)
        heldout = _top1(fit.head, held_rows, labels[held], device) if len(held) else float("nan")
        report = {
            "recipe": "converged",
            "inputs": best["inputs"],
            "l2": best["l2"],
            **fit.report(),
            "heldout_top1": heldout,
            "heldout_images": int(len(held)),
            "candidates": candidates,
        }
    else:
        raise EdgeddError(f"unknown golden recipe {cfg.golden_recipe!r}", f"choose one of {', '.join(RECIPES)}")
    report["train_top1_centre_crop"] = _top1(fit.head, centre, labels, device)
    return fit.head.weight.detach().cpu().float(), fit.head.bias.detach().cpu().float(), report


def run_stage1(
    model,
    info,
    source,
    cfg,
    device,
    *,
    work_dir: Path,
    num_workers=0,
    strict_images=False,
    progress=True,
    group: Dist = SINGLE,
) -> Stage1:
    """The pass and the golden classifier. With several ranks the classifier is trained on rank 0
    only (on the gathered features); the other ranks get empty weight/bias tensors."""
    t0 = time.perf_counter()
    if group.main:
        work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir if group.main else None, prefix=".features-") as tmp:
        sums, counts, feats, labels, skipped = extract_features(
            model,
            info,
            source,
            cfg,
            device,
            Path(tmp) / "views.npy",
            num_workers=num_workers,
            strict_images=strict_images,
            progress=progress,
            group=group,
        )
        t1 = time.perf_counter()
        if group.main:
            weight, bias, golden = train_golden(feats, labels, source.num_classes, cfg, device, progress)
        else:
            weight, bias, golden = torch.empty(0), torch.empty(0), {}
        del feats
    meta = {
        "format": STAGE1_FORMAT,
        "key": stage1_key(info, source, cfg),
        "backbone": info.to_dict(),
        "dataset": {
            "name": source.name,
            "fingerprint": source.fingerprint,
            "class_names": source.class_names,
            "images": len(source),
        },
        "stage1": to_dict(cfg),
        "images_used": int(counts.sum()),
        "skipped_images": skipped,
        "golden_train_top1_centre_crop": golden.get("train_top1_centre_crop"),
        "golden": golden,
        "pass_seconds": t1 - t0,
        "ranks": group.world,
        "golden_seconds": time.perf_counter() - t1,
    }
    return Stage1(sums, counts, weight, bias, meta)


def stage1_cached(
    model,
    info,
    source,
    cfg,
    device,
    *,
    num_workers=0,
    strict_images=False,
    progress=True,
    use_cache=True,
    group: Dist = SINGLE,
    run_dir: Path | None = None,
) -> tuple[Stage1, bool]:
    """Stage I from ``run_dir`` (a resumed run) or the cache when its key matches, else the pass
    (all ranks) and, on rank 0, filling the cache. Every rank gets sums and counts; the golden
    classifier lives on rank 0 (which alone writes files)."""
    key = stage1_key(info, source, cfg)
    directory = cache_root() / "stage1" / key[:32]

    def usable(s: Stage1 | None) -> Stage1 | None:
        # --strict-images refuses unreadable images: a Stage I that skipped some is one it would not
        # have made, so it is a miss (and the pass then stops at the first unreadable image)
        return None if s is None or (strict_images and s.meta.get("skipped_images")) else s

    def lookup() -> Stage1 | None:
        hit = usable(load_stage1(run_dir, key, source.num_classes, info.num_features)) if run_dir is not None else None
        return (
            hit
            if hit is not None or not use_cache
            else usable(load_stage1(directory, key, source.num_classes, info.num_features, remove_damaged=True))
        )

    hit = group.on_main(lookup)
    if group.broadcast_flag(hit is not None):
        return _share(hit, source.num_classes, info.num_features, group), True
    result = run_stage1(
        model,
        info,
        source,
        cfg,
        device,
        work_dir=directory,
        num_workers=num_workers,
        strict_images=strict_images,
        progress=progress,
        group=group,
    )
    if group.main:
        if use_cache:
            save_stage1(result, directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return result, False


def _share(s1: Stage1 | None, num_classes: int, dim: int, group: Dist) -> Stage1:
    """Rank 0's sums and counts on every rank (the loss needs the real flow everywhere)."""
    if not group.enabled:
        return s1
    sums = s1.sums if group.main else torch.zeros(num_classes, dim, dtype=torch.float64)
    counts = s1.counts if group.main else torch.zeros(num_classes, dtype=torch.int64)
    group.broadcast_(sums)
    group.broadcast_(counts)
    return s1 if group.main else Stage1(sums, counts, torch.empty(0), torch.empty(0), {})
