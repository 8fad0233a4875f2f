"""Stage I throughput vs the bare backbone forward, measured side by side in one run.

Stage I (``edgedd.distillation.stage1.extract_features``) streams a labelled dataset through a DataLoader
(decode + resize to a square canvas in worker processes), then on the compute device takes each
image's centre crop plus K = ``golden_views`` random-resized-crop views, runs ONE backbone forward
over the (1 + K) * B crops of a batch, accumulates float64 class sums and writes the view
features to a disk-backed numpy memmap.

The physical limit of that pass is the bare backbone forward over the same crops. This script
times both in one invocation, on the same model object and the same threads:

* **stage I**: ``extract_features`` on the first ``--images`` images, wall time of the call
  (DataLoader start-up and worker decode included, the memmap in a temporary directory);
* **bare**: the backbone forward alone, under ``torch.no_grad()`` (and the same autocast Stage I
  uses on that device), over the same (1 + K) * n crops, pre-built in memory as ONE tensor and fed
  in the same batch composition, (1 + K) * B crops per forward (the last forward is short when B
  does not divide n, exactly as in Stage I). The crops are the real ones: canvases decoded with
  edgedd's ``CanvasDataset``, centre crop + ``sample_views``/``render_views`` with the default
  ``AugmentConfig`` and the Stage I seed, normalised, as ``extract_features`` builds them (the
  forward's cost does not depend on the pixel values, but this keeps the comparison literal).

    ratio = bare forward time / stage I wall time          (1.0 = Stage I runs at the limit)

Both get a warm-up (Stage I on max(B, C) images, C the number of classes, since Stage I refuses
empty classes; the bare forward on one batch) and ``--repeats`` timed runs, interleaved in ABBA
order (stage I, bare, bare, stage I, ...) so drift of the machine hits both alike; medians are
reported, and the per-repeat ratios too. Each run also records CPU use: this process's cores,
the DataLoader workers' cores, and (Linux) the *foreign* load, i.e. busy CPU on the machine that
is not ours. A repeat where either side saw more than 0.15 foreign cores is not clean (another job
took CPU from it) and is left out of the medians, and said so; if no repeat is clean, all are used
and the script warns. While Stage I runs, a timing wrapper around the backbone records the time spent inside
its forward calls, which splits Stage I's wall time into "backbone forward" and "everything else"
(loader, view rendering, normalisation, float64 sums, memmap writes). The wrapper costs one
``perf_counter`` pair per batch.

"forwards" below counts crops through the backbone (one image crop = one backbone forward).

The subset is the first ``--images`` images in class-interleaved order, so every run holds every
class.

Usage:
    .venv/bin/python bench/stage1_throughput.py            # defaults: ~2 min on 2 idle CPU cores
    .venv/bin/python bench/stage1_throughput.py --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics as stats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgedd.backbones.forward import resolve_device
from edgedd.backbones.loader import load_backbone
from edgedd.core.config import AugmentConfig, StageIConfig
from edgedd.core.images import open_dataset
from edgedd.distillation.stage1 import _autocast, extract_features
from edgedd.host.augment import center_crop, normalize, render_views, sample_views
from edgedd.host.data import CanvasDataset

# ----------------------------------------------------------------------------- helpers


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if not model:
        model = platform.processor() or platform.machine()
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    info = {
        "cpu_model": model,
        "cpu_cores_usable": cores,
        "ram_gib": ram_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


FOREIGN_LIMIT = 0.15  # cores of other jobs' CPU use above which a repeat is not clean


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class TimedForward(torch.nn.Module):
    """Wraps the backbone; accumulates the wall time spent inside its forward calls."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device
        self.seconds = 0.0
        self.calls = 0

    def forward(self, x):
        sync(self.device)
        t = time.perf_counter()
        y = self.model(x)
        sync(self.device)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return y


def subset(src, n: int):
    """The first ``n`` images in class-interleaved order (class 0, 1, ..., C-1, 0, 1, ...), so any
    prefix of at least C images holds every class (extract_features refuses empty classes)."""
    if n > len(src):
        raise SystemExit(f"--images {n} exceeds the dataset's {len(src)} images")
    if n < src.num_classes:
        raise SystemExit(f"--images {n} is fewer than the dataset's {src.num_classes} classes")
    rank = np.empty(len(src), dtype=np.int64)
    for c in range(src.num_classes):
        where = np.flatnonzero(src.labels == c)
        rank[where] = np.arange(len(where))
    idx = np.lexsort((src.labels, rank))[:n]
    return dataclasses.replace(
        src,
        labels=src.labels[idx],
        paths=[src.paths[i] for i in idx] if src.paths is not None else None,
        pixels=np.ascontiguousarray(src.pixels[idx]) if src.pixels is not None else None,
        fingerprint=f"{src.fingerprint}[interleaved:{n}]",
    )


@torch.no_grad()
def build_crops(info, source, cfg: StageIConfig, device: torch.device) -> torch.Tensor:
    """All (1 + K) * n normalised crops as ONE tensor, laid out batch by batch exactly as
    extract_features concatenates them: per batch of b images, [centre(b), view_1(b), ..., view_K(b)]."""
    pp = info.preprocess
    ds = CanvasDataset(source, pp.resize_size, pp.interpolation)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    aug = AugmentConfig()
    k = cfg.golden_views
    n = len(source)
    out = torch.empty((1 + k) * n, 3, pp.input_size, pp.input_size, dtype=torch.float32, device=device)
    pos = 0
    for s in range(0, n, cfg.batch_size):
        items = [ds[i] for i in range(s, min(n, s + cfg.batch_size))]
        canv = torch.from_numpy(np.stack([it[0] for it in items])).permute(0, 3, 1, 2).contiguous()
        x = canv.to(device).float().div_(255)
        b = x.shape[0]
        crops = [center_crop(x, pp.input_size)]
        for _ in range(k):
            crops.append(render_views(x, sample_views(b, aug, gen), pp.input_size))
        batch = normalize(torch.cat(crops), pp.mean, pp.std)
        out[pos : pos + batch.shape[0]] = batch
        pos += batch.shape[0]
    assert pos == out.shape[0]
    return out


class CpuMeter:
    """CPU accounting over one timed run: this process (all its threads), its reaped children
    (DataLoader workers), and, on Linux, the whole machine from /proc/stat. ``foreign`` is the
    machine's busy CPU time not ours, in cores: another job sharing the cores, which makes that
    repeat's wall time meaningless for a ratio."""

    def __enter__(self):
        self.t = time.perf_counter()
        self.own = time.process_time()
        self.kids = _children_cpu()
        self.vm = _vm_busy()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t
        self.own_cores = (time.process_time() - self.own) / self.wall
        self.kids_cores = (_children_cpu() - self.kids) / self.wall
        vm = _vm_busy()
        self.foreign_cores = None
        if vm is not None and self.vm is not None:
            busy = (vm - self.vm) / os.sysconf("SC_CLK_TCK") / self.wall
            self.foreign_cores = max(0.0, busy - self.own_cores - self.kids_cores)
        return False


def _children_cpu() -> float:
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    except (ImportError, OSError):
        return 0.0


def _vm_busy() -> int | None:
    """Busy clock ticks of all CPUs (user + nice + system + irq + softirq), or None off Linux."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()
        v = [int(x) for x in f[1:8]]
        return v[0] + v[1] + v[2] + v[5] + v[6]
    except (OSError, ValueError, IndexError):
        return None


@torch.no_grad()
def bare_forward(model, crops: torch.Tensor, per_forward: int, device: torch.device) -> CpuMeter:
    """The backbone alone over the pre-built crops, ``per_forward`` crops per call."""
    sync(device)
    with CpuMeter() as m:
        for s in range(0, crops.shape[0], per_forward):
            with _autocast(device):
                model(crops[s : s + per_forward]).float()
        sync(device)
    m.in_forward = m.wall
    return m


def stage1_once(model, info, source, cfg, device, num_workers, tmpdir: Path) -> CpuMeter:
    """extract_features, timed; ``in_forward`` is the part of its wall time inside the backbone."""
    timed = TimedForward(model, device)
    feature_file = tmpdir / "views.npy"
    sync(device)
    with CpuMeter() as m:
        out = extract_features(
            timed, info, source, cfg, device, feature_file, num_workers=num_workers, strict_images=False, progress=False
        )
        sync(device)
    m.in_forward = timed.seconds
    del out
    feature_file.unlink(missing_ok=True)
    return m


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--backbone",
        default="vit_small_patch16_224",
        help="timm model name, random init (default vit_small_patch16_224)",
    )
    p.add_argument("--data", default="embedded:mnist", help="ImageFolder path or embedded:mnist (default)")
    p.add_argument("--images", type=int, default=24, help="images per timed Stage I run (default 24)")
    p.add_argument("--batch-size", type=int, default=8, help="Stage I batch size B (default 8)")
    p.add_argument("--golden-views", type=int, default=4, help="K augmented views per image (default 4)")
    p.add_argument("--crop-res", type=int, default=224, help="backbone input size (default 224)")
    p.add_argument("--canvas-res", type=int, default=None, help="canvas (resize) size; default round(crop / 0.875)")
    p.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader workers for Stage I (default 0: best on 2 CPU cores)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each side, medians reported (default 5)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    canvas = args.canvas_res or int(round(args.crop_res / 0.875))
    cfg = StageIConfig(batch_size=args.batch_size, golden_views=args.golden_views)
    k = cfg.golden_views
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    source = subset(open_dataset(args.data), args.images)
    # The warm-up needs every class too (extract_features refuses empty classes): max(B, C) images.
    warm_src = subset(source, min(len(source), max(args.batch_size, source.num_classes)))
    model, info = load_backbone(args.backbone, "random", input_size=args.crop_res, resize_size=canvas, device=device)
    n = len(source)
    per_forward = (1 + k) * args.batch_size
    total_crops = (1 + k) * n

    log(
        f"building {total_crops} crops ({1 + k} per image, {info.preprocess.input_size}px from a {canvas}px canvas) ..."
    )
    crops = build_crops(info, source, cfg, device)

    s1_runs: list[CpuMeter] = []
    bare_runs: list[CpuMeter] = []
    with tempfile.TemporaryDirectory(prefix="edgedd-bench-") as tmp:
        tmpdir = Path(tmp)
        log(f"warm-up: Stage I on {len(warm_src)} images, one bare forward ...")
        stage1_once(model, info, warm_src, cfg, device, args.num_workers, tmpdir)
        bare_forward(model, crops[:per_forward], per_forward, device)
        for r in range(args.repeats):
            # ABBA order: a slow drift of the machine hits both sides alike.
            if r % 2 == 0:
                a = stage1_once(model, info, source, cfg, device, args.num_workers, tmpdir)
                b = bare_forward(model, crops, per_forward, device)
            else:
                b = bare_forward(model, crops, per_forward, device)
                a = stage1_once(model, info, source, cfg, device, args.num_workers, tmpdir)
            s1_runs.append(a)
            bare_runs.append(b)
            fa = "" if a.foreign_cores is None else f", foreign load {a.foreign_cores:.2f}"
            fb = "" if b.foreign_cores is None else f", foreign load {b.foreign_cores:.2f}"
            log(
                f"  repeat {r + 1}/{args.repeats}: stage I {a.wall:.2f} s (in forward {a.in_forward:.2f} s, "
                f"own cores {a.own_cores:.2f}{fa}), bare {b.wall:.2f} s (own cores {b.own_cores:.2f}{fb}), "
                f"ratio {b.wall / a.wall:.3f}"
            )

    med = stats.median
    paired = [b.wall / a.wall for a, b in zip(s1_runs, bare_runs, strict=True)]
    foreign = [x.foreign_cores for x in s1_runs + bare_runs if x.foreign_cores is not None]
    # A repeat is clean when neither side shared the machine with another job (measured, Linux).
    clean = [
        i
        for i, (a, b) in enumerate(zip(s1_runs, bare_runs, strict=True))
        if (a.foreign_cores or 0.0) <= FOREIGN_LIMIT and (b.foreign_cores or 0.0) <= FOREIGN_LIMIT
    ]
    use = clean or list(range(len(s1_runs)))
    contended = len(clean) < len(s1_runs)
    s1 = med(s1_runs[i].wall for i in use)
    s1f = med(s1_runs[i].in_forward for i in use)
    s1o = med(s1_runs[i].wall - s1_runs[i].in_forward for i in use)
    bare = med(bare_runs[i].wall for i in use)
    result = {
        "backbone": args.backbone,
        "weights": "random",
        "data": source.name,
        "images": n,
        "views_per_image": 1 + k,
        "golden_views": k,
        "batch_size": args.batch_size,
        "crops_per_forward_call": per_forward,
        "crop_res": info.preprocess.input_size,
        "canvas_res": info.preprocess.resize_size,
        "num_workers": args.num_workers,
        "device": str(device),
        "repeats": args.repeats,
        "stage1_seconds": s1,
        "stage1_seconds_in_forward": s1f,
        "stage1_seconds_outside_forward": s1o,
        "bare_seconds": bare,
        "stage1_images_per_s": n / s1,
        "bare_images_per_s": n / bare,
        "stage1_forwards_per_s": total_crops / s1,
        "bare_forwards_per_s": total_crops / bare,
        "ratio": bare / s1,
        "ratio_paired_median": med(paired[i] for i in use),
        "repeats_used": [i + 1 for i in use],
        "clean_repeats": len(clean),
        "foreign_load_limit_cores": FOREIGN_LIMIT,
        "ratio_per_repeat": paired,
        "stage1_seconds_all": [r.wall for r in s1_runs],
        "stage1_seconds_in_forward_all": [r.in_forward for r in s1_runs],
        "bare_seconds_all": [r.wall for r in bare_runs],
        "stage1_own_cores_all": [r.own_cores for r in s1_runs],
        "stage1_worker_cores_all": [r.kids_cores for r in s1_runs],
        "bare_own_cores_all": [r.own_cores for r in bare_runs],
        "foreign_cores_stage1_all": [r.foreign_cores for r in s1_runs],
        "foreign_cores_bare_all": [r.foreign_cores for r in bare_runs],
        "contended": contended,
        "bare_crops": "real crops, built as extract_features builds them (centre + sample_views/render_views, "
        "normalised)",
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    m = result["machine"]
    print()
    print(f"Stage I throughput vs bare backbone forward  ({args.backbone}, random init, device {device})")
    print(
        f"  machine : {m['cpu_model']}, {m['cpu_cores_usable']} cores, {m['ram_gib']} GiB RAM, torch {m['torch']}, "
        f"{result['torch_threads']} intra-op threads"
    )
    print(
        f"  workload: {n} images x {1 + k} crops ({info.preprocess.input_size}px, canvas {canvas}px) = {total_crops} "
        "crops, "
        f"B={args.batch_size} -> {per_forward} crops per forward, num_workers={args.num_workers}, "
        f"{args.repeats} repeats"
    )
    print()
    print(f"  {'':28s} {'seconds':>9s} {'images/s':>10s} {'forwards/s':>11s}")
    print(f"  {'stage I (extract_features)':28s} {s1:9.2f} {n / s1:10.2f} {total_crops / s1:11.2f}")
    print(f"  {'bare backbone forward':28s} {bare:9.2f} {n / bare:10.2f} {total_crops / bare:11.2f}")
    print()
    print(
        f"  stage I split (medians): {s1f:.2f} s inside the backbone forward, {s1o:.3f} s outside it "
        f"(loader, view rendering, normalise, float64 sums, memmap) = {s1o / s1:.1%} of its wall time"
    )
    marks = ", ".join(f"{x:.3f}" + ("" if i in clean else "*") for i, x in enumerate(paired))
    print(f"  ratio per repeat: {marks}  (median of those used {result['ratio_paired_median']:.3f})")
    print(
        f"  ratio (bare / stage I, medians) = {bare / s1:.3f}   (target >= 0.9: "
        f"{'met' if bare / s1 >= 0.9 else 'NOT met'})"
    )
    if contended and clean:
        print(
            f"  note: {len(s1_runs) - len(clean)} repeat(s) marked * shared the CPU with another job "
            f"(> {FOREIGN_LIMIT} foreign cores) and are left out of the medians; {len(clean)} clean repeat(s) used"
        )
    elif contended:
        print(
            f"  WARNING: every repeat shared the CPU with another job (up to {max(foreign):.2f} foreign cores); "
            "the figures above use them all and are not a clean measurement: rerun on a quiet machine"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
