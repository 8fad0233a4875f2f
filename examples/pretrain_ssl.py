"""Pre-train the shipped self-supervised backbones (SimCLR, no labels) on the embedded digits.

    python examples/pretrain_ssl.py --model both --seed 0        # writes edgedd/weights/

For each model (``host``: ``edgedd/host-vit``, ``edge``: ``edgedd/edge-cnn``, both defined in
``edgedd/backbones/zoo.py``):

1. SimCLR on the 4,000 train images of ``embedded:mnist`` (labels never touch training): two
   augmented views per image (random resized crop, scale (0.4, 1), no flips; small rotation and
   shear; brightness/contrast jitter; sometimes a Gaussian blur), a 2-layer MLP projection head,
   NT-Xent loss. The head is discarded afterwards.
2. Linear probe on frozen pooled features of the centre 32x32 input: multinomial logistic
   regression (L-BFGS, standardised features, L2 picked on a seeded 20% hold-out of the train
   split, then refit on all of it), fit on the train split, top-1 on ``embedded:mnist/test``.
   The same probe on raw pixels and on the same architecture with random weights (same seed).
   A second, cheaper probe (closed-form ridge on a fixed slice) is recorded for tests/test_zoo.py.
3. Weights as safetensors (timm state dict, ``num_classes=0``) plus a model card (``.json``,
   ``.md``) in ``--out``; an ONNX export + onnxruntime parity check is recorded in the card.

Reproducible: one seed fixes the initialisation, the data order and every augmentation draw
(a single torch.Generator, single process, fixed thread count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from edgedd.backbones import zoo  # noqa: E402
from edgedd.backbones.loader import state_dict_sha256  # noqa: E402
from edgedd.core.images import open_dataset, resize_center_crop  # noqa: E402

MODELS = {"host": "edgedd/host-vit", "edge": "edgedd/edge-cnn"}

# Per-model recipe defaults (the CLI can override epochs / batch size / lr).
RECIPES = {
    "host": dict(epochs=20, lr=1e-3, weight_decay=0.05, warmup_epochs=1),
    "edge": dict(epochs=20, lr=2e-3, weight_decay=5e-4, warmup_epochs=1),
}
TEMPERATURE = 0.2
PROJ_HIDDEN, PROJ_OUT = 256, 128
AUG = dict(
    crop_scale=(0.4, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    rotate_deg=15.0,
    shear_deg=10.0,
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    blur_p=0.3,
    blur_sigma=(0.1, 1.2),
    hflip=False,
)
# The slice probe tests/test_zoo.py recomputes: every 4th train image, every 2nd test image.
SLICE = dict(train_step=4, test_step=2, ridge_lambda=10.0)
PROBE_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1)


# ----------------------------------------------------------------------------- data


def canvases(spec: str, pp: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The images as edgedd's pipeline sees them: resized to the canvas, centre input crop, [0, 1]."""
    ds = open_dataset(spec)
    size, crop = int(pp["resize_size"]), int(pp["input_size"])
    arr = np.stack([np.asarray(resize_center_crop(_pil(p), size, pp["interpolation"])) for p in ds.pixels])
    off = (size - crop) // 2
    arr = arr[:, off : off + crop, off : off + crop]
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return x, torch.from_numpy(ds.labels), ds.fingerprint


def _pil(a):
    from PIL import Image

    return Image.fromarray(a)


def normalise(x: torch.Tensor, pp: dict) -> torch.Tensor:
    mean = torch.tensor(pp["mean"], dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pp["std"], dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------- augmentation


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random view per image of x (n, 3, H, W) in [0, 1]; every draw comes from ``g``."""
    n = x.shape[0]
    # random resized crop (area fraction, aspect ratio, position) + rotation + shear, one affine map
    area = _u(n, *AUG["crop_scale"], g)
    logr = _u(n, math.log(AUG["crop_ratio"][0]), math.log(AUG["crop_ratio"][1]), g)
    w = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
    cx = (1 - w) * _u(n, -1, 1, g)
    cy = (1 - h) * _u(n, -1, 1, g)
    rot = torch.deg2rad(_u(n, -AUG["rotate_deg"], AUG["rotate_deg"], g))
    shear = torch.tan(torch.deg2rad(_u(n, -AUG["shear_deg"], AUG["shear_deg"], g)))
    c, s = torch.cos(rot), torch.sin(rot)
    # theta maps output coords to input coords: R(rot) @ Shear @ diag(w, h), then + (cx, cy)
    a11, a12 = c * w, (c * shear - s) * h
    a21, a22 = s * w, (s * shear + c) * h
    theta = torch.stack([torch.stack([a11, a12, cx], 1), torch.stack([a21, a22, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # brightness / contrast jitter (grey stays grey: same factor on every channel)
    on = (torch.rand(n, generator=g) < AUG["jitter_p"]).float().view(n, 1, 1, 1)
    b = 1 + on * _u(n, -AUG["brightness"], AUG["brightness"], g).view(n, 1, 1, 1)
    k = 1 + on * _u(n, -AUG["contrast"], AUG["contrast"], g).view(n, 1, 1, 1)
    out = out * b
    m = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - m) * k + m).clamp_(0, 1)
    # Gaussian blur on a random subset, per-image sigma (separable, grouped conv)
    blur = torch.rand(n, generator=g) < AUG["blur_p"]
    sigma = _u(n, *AUG["blur_sigma"], g)
    idx = torch.nonzero(blur).flatten()
    if len(idx):
        out = out.clone()
        out[idx] = _blur(out[idx], sigma[idx])
    return out


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    n, ch, hh, ww = x.shape
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (n*ch, 2r+1)
    y = x.reshape(1, n * ch, hh, ww)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(n * ch, 1, 1, -1), groups=n * ch)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(n * ch, 1, -1, 1), groups=n * ch)
    return y.reshape(n, ch, hh, ww)


# ----------------------------------------------------------------------------- SimCLR


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """z: (2B, d), rows i and i+B are the two views of one image."""
    z = F.normalize(z, dim=1)
    n2 = z.shape[0]
    b = n2 // 2
    sim = (z @ z.t()) / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, n2), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


def param_groups(model: nn.Module, head: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for mod in (model, head):
        for name, p in mod.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith("pos_embed") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_simclr(
    model: nn.Module,
    x: torch.Tensor,
    pp: dict,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_epochs: int,
    seed: int,
    log,
) -> dict:
    g = torch.Generator().manual_seed(seed)
    dim = int(model.num_features)
    head = nn.Sequential(
        nn.Linear(dim, PROJ_HIDDEN),
        nn.BatchNorm1d(PROJ_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(PROJ_HIDDEN, PROJ_OUT),
    )
    opt = torch.optim.AdamW(param_groups(model, head, weight_decay), lr=lr, betas=(0.9, 0.999))
    n = x.shape[0]
    steps_per_epoch = n // batch_size  # drop_last: every batch has batch_size images
    total = epochs * steps_per_epoch
    warm = warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    model.train()
    head.train()
    curve, step, t0 = [], 0, time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        losses = []
        for i in range(steps_per_epoch):
            xb = x[perm[i * batch_size : (i + 1) * batch_size]]
            views = torch.cat([augment(xb, g), augment(xb, g)])
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = nt_xent(head(model(normalise(views, pp))), TEMPERATURE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        curve.append(round(float(np.mean(losses)), 4))
        log(
            f"  epoch {epoch + 1:3d}/{epochs}  loss {curve[-1]:.4f}  lr {lr_at(step - 1):.2e}  "
            f"{time.perf_counter() - t0:6.1f}s"
        )
    model.eval()
    return {"loss_per_epoch": curve, "steps": total, "train_seconds": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- probes


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, pp: dict, batch: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(normalise(x[i : i + batch], pp)) for i in range(0, len(x), batch)]).double()


def _standardise(ftr: torch.Tensor, fte: torch.Tensor):
    mu, sd = ftr.mean(0), ftr.std(0).clamp_min(1e-6)
    return (ftr - mu) / sd, (fte - mu) / sd


def _fit_logistic(
    x: torch.Tensor, y: torch.Tensor, lam: float, init: torch.Tensor | None = None, classes: int = 10
) -> torch.Tensor:
    """argmin_W mean CE(x W + b, y) + lam/2 |W|^2 by L-BFGS (float32, at most 200 iterations)."""
    x = x.float()
    w0 = torch.zeros(x.shape[1] + 1, classes) if init is None else init.float().clone()
    w = w0.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w],
        lr=1.0,
        max_iter=200,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w[:-1] + w[-1], y) + 0.5 * lam * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _top1(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    x = x.float()
    return float(((x @ w[:-1] + w[-1]).argmax(1) == y).double().mean())


def logistic_probe(ftr, ytr, fte, yte, seed: int) -> dict:
    """L2 strength from a seeded 80/20 split of the train features (a warm-started path from the
    strongest penalty down), then refit on all train features."""
    xtr, xte = _standardise(ftr, fte)
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))
    val, fit = perm[: len(xtr) // 5], perm[len(xtr) // 5 :]
    scores, w = {}, None
    for lam in sorted(PROBE_LAMBDAS, reverse=True):
        w = _fit_logistic(xtr[fit], ytr[fit], lam, init=w)
        scores[lam] = _top1(w, xtr[val], ytr[val])
    best = max(PROBE_LAMBDAS, key=lambda lam: (scores[lam], lam))  # ties: the stronger penalty
    w = _fit_logistic(xtr, ytr, best)
    return {
        "top1": round(_top1(w, xte, yte), 4),
        "l2": best,
        "holdout_top1": {str(k): round(v, 4) for k, v in sorted(scores.items())},
    }


def ridge_slice_probe(ftr, ytr, fte, yte, lam: float = SLICE["ridge_lambda"]) -> float:
    """Closed-form ridge classifier (one-hot targets) on standardised features; tests/test_zoo.py
    recomputes exactly this on the same slice."""
    xtr, xte = _standardise(ftr, fte)
    xtr = torch.cat([xtr, torch.ones(len(xtr), 1, dtype=xtr.dtype)], 1)
    xte = torch.cat([xte, torch.ones(len(xte), 1, dtype=xte.dtype)], 1)
    t = F.one_hot(ytr, 10).double()
    reg = lam * torch.eye(xtr.shape[1], dtype=xtr.dtype)
    reg[-1, -1] = 0
    w = torch.linalg.solve(xtr.T @ xtr + reg, xtr.T @ t)
    return round(float(((xte @ w).argmax(1) == yte).double().mean()), 4)


# ----------------------------------------------------------------------------- cards


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def markdown_card(c: dict) -> str:
    a, t, p, pp, o = c["architecture"], c["training"], c["probe"], c["preprocess"], c.get("onnx", {})
    kw = ", ".join(f"{k}={v}" for k, v in a["kwargs"].items())
    return f"""# {c["name"]}

{a["description"]}

Self-supervised (SimCLR, **no labels**) on the {t["data"]["images"]:,} train images of
`{t["data"]["dataset"]}`; shipped with edgedd so it loads offline:
`edgedd.backbones.loader.load_backbone("{c["name"]}")`.

| | |
|---|---|
| builder | `{a["builder"]}({kw})` |
| timm class | `{a["timm_class"]}` |
| parameters | {a["params"]:,} |
| pooled features | {a["num_features"]} |
| weights | `{c["weights"]["file"]}` ({c["weights"]["bytes"]:,} bytes, float32) |
| file sha256 | `{c["weights"]["file_sha256"]}` |
| weights_sha256 (edgedd) | `{c["weights"]["weights_sha256"]}` |

## Training

- Objective: {t["objective"]}, temperature {t["temperature"]}; projection head {t["projection_head"]} (discarded).
- Augmentations: {t["augmentations_text"]}.
- Optimiser: {t["optimizer"]}, lr {t["lr"]}, weight decay {t["weight_decay"]}, {t["schedule"]}.
- Epochs {t["epochs"]}, batch size {t["batch_size"]} (x2 views), {t["steps"]} steps, seed {t["seed"]}.
- Wall time {t["wall_seconds"]} s on {t["threads"]} CPU threads ({t["machine"]}); training alone {t["train_seconds"]} s.
- Loss per epoch: {", ".join(str(v) for v in t["loss_per_epoch"])}.

## Preprocessing

input_size {pp["input_size"]}, resize_size {pp["resize_size"]} (crop_pct {pp["crop_pct"]}),
interpolation {pp["interpolation"]}, mean {list(pp["mean"])}, std {list(pp["std"])}.
The 28x28 digits are resized to 32x32 ({pp["interpolation"]}) and used whole.

## Linear probe (top-1 on `embedded:mnist/test`, 1,000 images)

{p["protocol"]}

| features | top-1 |
|---|---|
| this model (frozen) | **{p["model"]["top1"] * 100:.1f}%** |
| raw pixels | {p["raw_pixels"]["top1"] * 100:.1f}% |
| same architecture, random weights (seed {t["seed"]}) | {p["random_weights"]["top1"] * 100:.1f}% |

Slice probe used by `tests/test_zoo.py` ({p["slice"]["protocol"]}): model {p["slice"]["model_top1"] * 100:.1f}%,
random weights {p["slice"]["random_weights_top1"] * 100:.1f}%.

## Export

ONNX (torch.onnx.export, dynamo) via `edgedd.export.onnx_graphs.export_backbone`: {o.get("bytes", "n/a")} bytes,
onnxruntime parity max relative error {o.get("parity", {}).get("max_rel_error", float("nan")):.1e}.

## Reproduce

```
{c["command"]}
```

torch {c["versions"]["torch"]}, timm {c["versions"]["timm"]}, Python {c["versions"]["python"]}.
"""


# ----------------------------------------------------------------------------- main


_RAW_PROBE: dict = {}


def run_one(key: str, args, data, log) -> dict:
    import timm

    name = MODELS[key]
    entry = zoo.SHIPPED[name]
    pp = dict(zoo.MNIST32_PREPROCESS)
    recipe = dict(RECIPES[key])
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    if args.lr is not None:
        recipe["lr"] = args.lr
    (xtr, ytr, fp_tr), (xte, yte, _) = data
    t_start = time.perf_counter()

    torch.manual_seed(args.seed)
    model = zoo.create(name, pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {type(model).__module__}.{type(model).__name__}, {params:,} params, {recipe['epochs']} epochs")
    hist = train_simclr(
        model,
        xtr,
        pp,
        epochs=recipe["epochs"],
        batch_size=args.batch_size,
        lr=recipe["lr"],
        weight_decay=recipe["weight_decay"],
        warmup_epochs=recipe["warmup_epochs"],
        seed=args.seed,
        log=log,
    )

    # probes: model, raw pixels, random weights (same seed => the same init the training started from)
    ftr, fte = features(model, xtr, pp), features(model, xte, pp)
    torch.manual_seed(args.seed)
    rand = zoo.create(name, pretrained=False).eval()
    rtr, rte = features(rand, xtr, pp), features(rand, xte, pp)
    if _RAW_PROBE.get("key") != (args.seed, tuple(pp.items())):  # the same for every model: fit once
        ptr, pte = normalise(xtr, pp)[:, 0].flatten(1).double(), normalise(xte, pp)[:, 0].flatten(1).double()
        _RAW_PROBE.update(key=(args.seed, tuple(pp.items())), result=logistic_probe(ptr, ytr, pte, yte, args.seed))
    probe = {
        "model": logistic_probe(ftr, ytr, fte, yte, args.seed),
        "raw_pixels": dict(_RAW_PROBE["result"]),
        "random_weights": logistic_probe(rtr, ytr, rte, yte, args.seed),
    }
    s_tr, s_te = slice(None, None, SLICE["train_step"]), slice(None, None, SLICE["test_step"])
    probe["slice"] = {
        "protocol": (
            f"closed-form ridge classifier, lambda {SLICE['ridge_lambda']}, standardised features; "
            f"fit on embedded:mnist[::{SLICE['train_step']}] (1,000), top-1 on "
            f"embedded:mnist/test[::{SLICE['test_step']}] (500)"
        ),
        **SLICE,
        "model_top1": ridge_slice_probe(ftr[s_tr], ytr[s_tr], fte[s_te], yte[s_te]),
        "random_weights_top1": ridge_slice_probe(rtr[s_tr], ytr[s_tr], rte[s_te], yte[s_te]),
    }
    probe["protocol"] = (
        "multinomial logistic regression (L-BFGS, float32, <= 200 iterations) on standardised frozen pooled features "
        "of the centre 32x32 input; L2 chosen from "
        + ", ".join(f"{v:g}" for v in PROBE_LAMBDAS)
        + " on a seeded 20% hold-out of the train split, refit on all 4,000 train images; "
        "raw pixels: the normalised 32x32 input (one channel: R=G=B)"
    )
    log(
        f"  probe top-1: model {probe['model']['top1']:.4f}  raw pixels {probe['raw_pixels']['top1']:.4f}  "
        f"random weights {probe['random_weights']['top1']:.4f}  (slice: {probe['slice']['model_top1']:.4f} / "
        f"{probe['slice']['random_weights_top1']:.4f})"
    )

    # save: timm state dict (num_classes=0), then reload through the registry to hash what users get
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wfile = out / f"{entry.file}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes metadata in hash-map order, several keys make the bytes vary
    save_file(state, str(wfile), metadata={"format": "pt"})
    wfile.chmod(0o644)  # safetensors creates it owner-only; it ships as package data
    reloaded = zoo.create(name, pretrained=False)
    from safetensors.torch import load_file

    reloaded.load_state_dict(load_file(str(wfile)), strict=True)
    reloaded.eval()
    assert torch.equal(features(reloaded, xte[:64], pp), fte[:64]), "reloaded weights give other features"

    onnx_info = {}
    try:
        from edgedd.export.onnx_graphs import OPSET, check, export_backbone, parity

        data_onnx = export_backbone(reloaded, pp["input_size"], {"model": name})
        check(data_onnx, name)
        onnx_info = {
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": OPSET,
            "bytes": len(data_onnx),
            "parity": parity(data_onnx, reloaded, (3, pp["input_size"], pp["input_size"]), name),
        }
        log(f"  onnx: {len(data_onnx):,} bytes, parity {onnx_info['parity']['max_rel_error']:.1e}")
    except Exception as e:  # recorded, not fatal: the weights are still valid
        onnx_info = {"error": f"{type(e).__name__}: {e}"[:300]}
        log(f"  onnx export failed: {onnx_info['error']}")

    wall = round(time.perf_counter() - t_start, 1)
    timm_cls = type(model)
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in entry.kwargs.items()}
    card = {
        "name": name,
        "card_version": 1,
        "architecture": {
            "builder": entry.builder_path,
            "kwargs": kwargs,
            "num_classes": 0,
            "timm_class": f"{timm_cls.__module__}.{timm_cls.__name__}",
            "description": (entry.builder.__doc__ or "").strip().splitlines()[0],
            "params": params,
            "num_features": int(model.num_features),
        },
        "weights": {
            "file": wfile.name,
            "bytes": wfile.stat().st_size,
            "file_sha256": sha256_file(wfile),
            "weights_sha256": state_dict_sha256(reloaded),
            "dtype": "float32",
        },
        "training": {
            "objective": "SimCLR (NT-Xent)",
            "temperature": TEMPERATURE,
            "projection_head": f"Linear({int(model.num_features)},{PROJ_HIDDEN})-BatchNorm1d-ReLU-"
            f"Linear({PROJ_HIDDEN},{PROJ_OUT})",
            "augmentations": {k: (list(v) if isinstance(v, tuple) else v) for k, v in AUG.items()},
            "augmentations_text": (
                f"random resized crop scale {AUG['crop_scale']}, ratio 3/4-4/3, no flips; rotation "
                f"+/-{AUG['rotate_deg']:g} deg, shear +/-{AUG['shear_deg']:g} deg; brightness/contrast "
                f"+/-{AUG['brightness']:g}/{AUG['contrast']:g} (p {AUG['jitter_p']}); Gaussian blur sigma "
                f"{AUG['blur_sigma']} (p {AUG['blur_p']})"
            ),
            "optimizer": "AdamW (no decay on norms, biases, pos_embed)",
            "lr": recipe["lr"],
            "weight_decay": recipe["weight_decay"],
            "schedule": f"linear warm-up {recipe['warmup_epochs']} epoch, cosine to 0",
            "epochs": recipe["epochs"],
            "batch_size": args.batch_size,
            "steps": hist["steps"],
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {platform.system()}",
            "train_seconds": hist["train_seconds"],
            "wall_seconds": wall,
            "loss_per_epoch": hist["loss_per_epoch"],
            "data": {"dataset": "embedded:mnist", "images": int(len(xtr)), "fingerprint": fp_tr, "labels_used": False},
        },
        "preprocess": {**pp, "mean": list(pp["mean"]), "std": list(pp["std"])},
        "probe": {
            "test_set": "embedded:mnist/test",
            "test_images": int(len(xte)),
            "model": probe["model"],
            "raw_pixels": probe["raw_pixels"],
            "random_weights": probe["random_weights"],
            "slice": probe["slice"],
            "protocol": probe["protocol"],
        },
        "onnx": onnx_info,
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "command": args.command,
    }
    (out / f"{entry.file}.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / f"{entry.file}.md").write_text(markdown_card(card))
    log(f"  wrote {wfile} ({wfile.stat().st_size:,} bytes) in {wall:.0f}s")
    return card


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", choices=("host", "edge", "both"), default="both")
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"default: host {RECIPES['host']['epochs']}, edge {RECIPES['edge']['epochs']}",
    )
    ap.add_argument("--batch-size", type=int, default=128, help="images per step (each gives 2 views)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default per model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "edgedd" / "weights"))
    args = ap.parse_args(argv)
    args.command = "python examples/pretrain_ssl.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    log = lambda s: print(s, flush=True)  # noqa: E731

    pp = zoo.MNIST32_PREPROCESS
    data = (canvases("embedded:mnist", pp), canvases("embedded:mnist/test", pp))
    keys = ("host", "edge") if args.model == "both" else (args.model,)
    summary = {}
    for key in keys:
        c = run_one(key, args, data, log)
        summary[c["name"]] = {k: c["probe"][k]["top1"] for k in ("model", "raw_pixels", "random_weights")}
        summary[c["name"]]["wall_seconds"] = c["training"]["wall_seconds"]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
