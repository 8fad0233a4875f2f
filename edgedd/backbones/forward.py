"""How the host runs a frozen backbone once it is loaded: the device, the numerics, the attention
kernels, the preprocessing and the batched encoding.

* :func:`resolve_device` turns ``--device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``) into a torch
  device; :func:`backbone_autocast` is the one precision policy for every backbone forward.
* Attention kernels: models are built ``exportable`` (timm's plain attention, which the ONNX
  exporter takes), then switched to fused ``scaled_dot_product_attention`` for the host's own work
  (Stage I, distillation, evaluation): it keeps no T x T attention matrix for the backward, 17% less
  activation memory for a ViT on CPU and flash kernels on CUDA. :func:`plain_attention` switches a
  model back while it is exported.
* Preprocessing: the :class:`~edgedd.core.config.Preprocess` a backbone expects, from timm's pretrained
  data config (:func:`resolve_preprocess`) or a shipped model card (:func:`preprocess_from_card`),
  with the crop and canvas sizes overridable.
* :func:`encode`: features of [0, 1] pixels, in batches, without a graph.

Loading (name -> model + :class:`~edgedd.backbones.loader.BackboneInfo`) is :mod:`edgedd.backbones.loader`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from edgedd.core.config import Preprocess
from edgedd.core.errors import EdgeddError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise EdgeddError(f"unknown device {spec!r}", "use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EdgeddError("CUDA was requested but torch sees no CUDA device", "use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EdgeddError(f"{spec} does not exist ({torch.cuda.device_count()} CUDA devices)", "pick an existing index")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EdgeddError("MPS was requested but is not available", "use --device cpu (or auto)")
    return dev


def backbone_autocast(device: torch.device, enabled: bool = True):
    """How edgedd runs a backbone: bf16 autocast on CUDA (Stage I, Stage II and evaluation alike,
    so features are comparable), plain fp32 everywhere else."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)
    return torch.autocast("cpu", enabled=False)


def output_width(model: torch.nn.Module) -> int:
    """The width of what the model returns: its head's outputs where it keeps one (CLIP's
    projection), else timm's pooled ``num_features``."""
    n = int(getattr(model, "num_classes", 0) or 0)
    return n if n > 0 else int(model.num_features)


@torch.no_grad()
def encode(
    model: torch.nn.Module, images: torch.Tensor, preprocess: Preprocess, batch: int = 256, amp: bool = True
) -> torch.Tensor:
    """Features of [0, 1] pixels already at the input size, in batches, without a graph:
    normalise with the backbone's mean/std, forward (under :func:`backbone_autocast` if ``amp``),
    float32 (N, D) on the model's device. ``images`` may stay on the CPU: each batch moves alone."""
    from edgedd.host.augment import normalize

    dev = next(model.parameters()).device
    out = []
    for s in range(0, images.shape[0], batch):
        with backbone_autocast(dev, amp):
            out.append(model(normalize(images[s : s + batch].to(dev), preprocess.mean, preprocess.std)).float())
    return torch.cat(out) if out else torch.zeros(0, output_width(model), device=dev)


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """timm's attention layers: each reads its ``fused_attn`` flag on every forward."""
    return [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]


def ready(model: torch.nn.Module, device) -> torch.nn.Module:
    """Frozen, eval mode, on ``device``, fused attention where the model has timm attention."""
    model.eval().requires_grad_(False)
    if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        for m in _attention_modules(model):
            m.fused_attn = True
    return model.to(device)


@contextmanager
def plain_attention(model: torch.nn.Module):
    """Plain (exportable) attention inside the block, the model's own setting restored after."""
    mods = [(m, m.fused_attn) for m in _attention_modules(model)]
    for m, _ in mods:
        m.fused_attn = False
    try:
        yield model
    finally:
        for m, fused in mods:
            m.fused_attn = fused


def preprocess_from_card(cfg: dict, input_size: int | None, resize_size: int | None) -> Preprocess:
    """A shipped model card's preprocessing, with the input (crop) and canvas sizes overridable."""
    size = int(input_size or cfg["input_size"])
    canvas = int(resize_size or (cfg["resize_size"] if input_size is None else round(size / float(cfg["crop_pct"]))))
    return _make_preprocess(size, canvas, cfg["mean"], cfg["std"], cfg["interpolation"])


def resolve_preprocess(
    model: torch.nn.Module, input_size: int | None = None, resize_size: int | None = None
) -> Preprocess:
    """timm's pretrained data config, with the input (crop) and canvas sizes overridable."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(input_size or cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    canvas = int(resize_size or round(size / crop_pct))
    return _make_preprocess(size, canvas, cfg["mean"], cfg["std"], cfg.get("interpolation") or "bicubic")


def _make_preprocess(size: int, canvas: int, mean, std, interpolation: str) -> Preprocess:
    if canvas < size:
        raise EdgeddError(
            f"the synthetic/canvas resolution {canvas} is smaller than the crop {size}",
            "pass --syn-res at least --crop-res",
        )
    return Preprocess(
        input_size=size,
        resize_size=canvas,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        interpolation=str(interpolation),
        crop_pct=size / canvas,
    )
