"""Reference-faithful defaults for hub backbones (issue 12, item 3), by model name with random
init: timm's configs resolve offline, nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

from edgedd.backbones.loader import load_backbone
from edgedd.backbones.timm_rules import REFERENCE_CROP, REFERENCE_SYN, clip_projection_width, distill_resolution


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2.lvd142m", "vit_base_patch16_clip_224.openai"])
def test_hub_ssl_backbones_distill_at_256_224(name):
    crop, syn, rule = distill_resolution(name)
    assert (syn, crop) == (REFERENCE_SYN, REFERENCE_CROP) == (256, 224) and "reference" in rule
    # the user's sizes win
    assert distill_resolution(name, 112, 128)[:2] == (112, 128)
    assert distill_resolution(name, crop_res=112)[:2] == (112, None)


def test_dinov2_loads_at_224_with_a_256_canvas():
    model, info = load_backbone("vit_small_patch14_dinov2.lvd142m", "random", input_size=224, resize_size=256)
    pp = info.preprocess
    assert (pp.input_size, pp.resize_size) == (224, 256)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 384)


def test_shipped_and_conv_backbones():
    # shipped models keep their cards' sizes; conv nets take 224 whatever their config's size
    assert distill_resolution("edgedd/host-vit")[:2] == (None, None)
    assert distill_resolution("resnet18.a1_in1k")[:2] == (224, 256)


def test_fixed_size_model_that_cannot_take_224_keeps_its_own(monkeypatch):
    """A fixed-size model without img_size keeps its crop; synthetic at the reference ratio."""
    import timm

    from edgedd.backbones import timm_rules

    cfg = timm_rules.pretrained_cfg("resnet18.a1_in1k")
    fixed = type(cfg)(**{**cfg.__dict__, "input_size": (3, 288, 288), "fixed_input_size": True})
    monkeypatch.setattr(timm_rules, "pretrained_cfg", lambda name: fixed)
    crop, syn, rule = distill_resolution("resnet18.a1_in1k")
    assert (crop, syn) == (288, round(288 * 256 / 224)) and "cannot take 224" in rule
    assert timm.is_model("resnet18")


def test_clip_features_are_the_projected_embedding():
    """timm keeps CLIP's image projection as the head: ViT-B/16 CLIP gives 512 features, not 768."""
    assert clip_projection_width("vit_base_patch16_clip_224.openai") == 512
    assert clip_projection_width("vit_base_patch16_clip_224.openai_ft_in1k") is None  # a classifier head
    assert clip_projection_width("vit_small_patch14_dinov2.lvd142m") is None
    model, info = load_backbone("vit_base_patch16_clip_224.openai", "random", input_size=224, resize_size=256)
    assert info.num_features == 512
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model(x)
        assert z.shape == (2, 512)
        # exactly the projection (timm's head) of the pooled 768-d features
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(z, model.head(pooled))
    raw, raw_info = load_backbone("vit_base_patch16_clip_224.openai", "random", input_size=224, num_classes=0)
    assert raw_info.num_features == 768


def test_distill_prints_the_resolution_rule(image_folder, tmp_path, monkeypatch, capsys):
    from edgedd.core.config import DistillConfig, StageIConfig
    from edgedd.distillation.pipeline import RunOptions, distill

    monkeypatch.setenv("EDGEDD_PROGRESS", "1")
    distill(
        str(image_folder),
        "test_vit",
        tmp_path / "run",
        weights="random",
        config=DistillConfig(iterations=2),
        stage1_config=StageIConfig(golden_views=1, golden_recipe="reference", golden_epochs=1),
        options=RunOptions(device="cpu", num_workers=0, preview_every=0),
        crop_res=32,
        syn_res=32,
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("resolution:")]
    assert lines == ["resolution: synthetic 32 / crop 32 (set by --crop-res/--syn-res)"]
