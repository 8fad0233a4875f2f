"""What edgedd decides about a timm backbone from its name and pretrained config, before building it.

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
  features before the projection instead (:func:`clip_projection_width` is the head's width).
"""

from __future__ import annotations

import torch

REFERENCE_CROP, REFERENCE_SYN = 224, 256  # METHOD.md: syn_res / crop for every backbone


def pretrained_cfg(name: str):
    """timm's pretrained config for ``name`` (architecture.tag), or None when it has none."""
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
    cfg = pretrained_cfg(name)
    tag = tag or (getattr(cfg, "tag", None) or "")
    if cfg is None or "ft" in tag.lower().replace("-", "_").split("_"):
        return None
    n = int(getattr(cfg, "num_classes", 0) or 0)
    return n if n > 0 else None


def _takes_input_size(name: str, size: int) -> bool:
    """Whether timm can build ``name`` for ``size`` inputs: its config's own size, not a fixed-size
    model (conv nets run at any size), or a model that takes ``img_size`` (built on the meta device:
    nothing is allocated or downloaded)."""
    cfg = pretrained_cfg(name)
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


def distill_resolution(
    name: str, crop_res: int | None = None, syn_res: int | None = None
) -> tuple[int | None, int | None, str]:
    """``(crop_res, syn_res, rule)`` for distilling with ``name``: the rule in this module's docstring.
    None leaves a size to :func:`edgedd.backbones.loader.load_backbone` (the backbone's own); ``rule`` says which case
    applied."""
    from . import zoo

    if crop_res is not None or syn_res is not None:
        return crop_res, syn_res, "set by --crop-res/--syn-res"
    if zoo.is_shipped(name):
        return None, None, f"{name}'s own, from its model card"
    if _takes_input_size(name, REFERENCE_CROP):
        return (
            REFERENCE_CROP,
            REFERENCE_SYN,
            f"the reference {REFERENCE_SYN}/{REFERENCE_CROP}; --syn-res/--crop-res override",
        )
    cfg = pretrained_cfg(name)
    crop = int(cfg.input_size[-1])
    return (
        crop,
        round(crop * REFERENCE_SYN / REFERENCE_CROP),
        (
            f"{name} is fixed at {crop} px and cannot take {REFERENCE_CROP}: its own crop, synthetic at the reference "
            f"ratio {REFERENCE_SYN}/{REFERENCE_CROP}"
        ),
    )
