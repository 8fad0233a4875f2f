"""Shipped self-supervised backbones (edgedd.backbones.zoo): load offline, match their cards, still work.

A broken or swapped weights file must not land: the sha256 of the loaded tensors has to equal the
card's, and a linear probe recomputed here on a fixed slice of the embedded data has to match the
figure the pretraining run recorded (``card["probe"]["slice"]``), while a random-weight model of the
same architecture scores clearly lower on the same slice.
"""

from __future__ import annotations

import hashlib
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgedd.backbones import zoo
from edgedd.backbones.loader import check_model_name, load_backbone
from edgedd.core.errors import EdgeddError

NAMES = sorted(zoo.SHIPPED)

# The slice figure is recomputed with the card's exact protocol (same images, same closed-form
# ridge), so only float rounding differs (BLAS, thread count, fused vs unfused attention kernels),
# which can flip a few borderline test images, not more: 2 points = 10 of the 500 test images.
# A wrong preprocessing or a damaged/mismatched weights file moves it far more than that.
SLICE_TOLERANCE = 0.02
# The self-supervised features must beat random weights of the same architecture by this much.
MIN_GAIN_OVER_RANDOM = 0.10


@pytest.fixture
def offline(monkeypatch):
    """No network at all: hub downloads and any socket connection raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted while loading a shipped backbone")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import huggingface_hub
    import timm.models._hub as timm_hub

    for mod, attr in (
        (huggingface_hub, "hf_hub_download"),
        (huggingface_hub, "snapshot_download"),
        (timm_hub, "hf_hub_download"),
        (torch.hub, "load_state_dict_from_url"),
        (torch.hub, "download_url_to_file"),
    ):
        if hasattr(mod, attr):
            monkeypatch.setattr(mod, attr, refuse)


@pytest.fixture(scope="module")
def slice_data():
    """Every 4th train image (1,000) and every 2nd test image (500), as uint8 28x28 digits."""
    from edgedd.core.images import open_dataset

    tr, te = open_dataset("embedded:mnist"), open_dataset("embedded:mnist/test")
    step_tr, step_te = 4, 2
    return (
        tr.pixels[::step_tr],
        torch.from_numpy(tr.labels[::step_tr]),
        te.pixels[::step_te],
        torch.from_numpy(te.labels[::step_te]),
    )


def model_inputs(pixels: np.ndarray, pp) -> torch.Tensor:
    """edgedd's own pipeline: canvas at resize_size (card interpolation), centre crop, normalise."""
    from edgedd.core.images import LabelledImages
    from edgedd.host.data import CanvasDataset

    src = LabelledImages(name="slice", class_names=[], labels=np.zeros(len(pixels), np.int64), pixels=pixels)
    ds = CanvasDataset(src, pp.resize_size, pp.interpolation)
    x = torch.from_numpy(np.stack([ds[i][0] for i in range(len(ds))])).permute(0, 3, 1, 2).float() / 255.0
    off = (pp.resize_size - pp.input_size) // 2
    x = x[:, :, off : off + pp.input_size, off : off + pp.input_size]
    mean = torch.tensor(pp.mean).view(1, 3, 1, 1)
    std = torch.tensor(pp.std).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def pooled(model, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)]).double()


def ridge_top1(ftr, ytr, fte, yte, lam: float) -> float:
    """Closed-form ridge classifier on standardised features: the card's slice protocol."""
    mu, sd = ftr.mean(0), ftr.std(0).clamp_min(1e-6)
    xtr, xte = (ftr - mu) / sd, (fte - mu) / sd
    xtr = torch.cat([xtr, torch.ones(len(xtr), 1, dtype=xtr.dtype)], 1)
    xte = torch.cat([xte, torch.ones(len(xte), 1, dtype=xte.dtype)], 1)
    reg = lam * torch.eye(xtr.shape[1], dtype=xtr.dtype)
    reg[-1, -1] = 0
    w = torch.linalg.solve(xtr.T @ xtr + reg, xtr.T @ F.one_hot(ytr, 10).double())
    return float(((xte @ w).argmax(1) == yte).double().mean())


def slice_probe(model, info, slice_data, card) -> float:
    ptr, ytr, pte, yte = slice_data
    s = card["probe"]["slice"]
    assert (s["train_step"], s["test_step"]) == (4, 2), "the card's slice differs from the one this test builds"
    ftr = pooled(model, model_inputs(ptr, info.preprocess))
    fte = pooled(model, model_inputs(pte, info.preprocess))
    return ridge_top1(ftr, ytr, fte, yte, s["ridge_lambda"])


# ----------------------------------------------------------------------------- registry and files


def test_registry_names_and_files():
    assert set(NAMES) == {"edgedd/host-vit", "edgedd/edge-cnn"}
    total = 0
    for name in NAMES:
        assert zoo.is_shipped(name)
        path = zoo.weights_path(name)
        assert path.is_file() and path.suffix == ".safetensors"
        card = zoo.card(name)
        assert card["name"] == name
        assert card["weights"]["file"] == path.name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == card["weights"]["file_sha256"]
        assert card["training"]["data"]["labels_used"] is False
        assert path.with_suffix(".md").is_file()
        total += path.stat().st_size
    assert total < 8 * 2**20, "shipped weights should stay a few MB"
    assert not zoo.is_shipped("vit_small_patch14_dinov2.lvd142m")


def test_host_is_a_timm_vit_with_conv_stem():
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    model = zoo.create("edgedd/host-vit", pretrained=False)
    assert isinstance(model, VisionTransformer) and isinstance(model.patch_embed, HybridEmbed)
    assert model.num_classes == 0


# ----------------------------------------------------------------------------- offline loading


@pytest.mark.parametrize("name", NAMES)
def test_loads_offline_and_matches_card(name, offline):
    card = zoo.card(name)
    for weights in ("hub", "shipped", "shipped:" + name):
        model, info = load_backbone(name, weights)
        assert info.weights == "shipped:" + name
        assert info.weights_sha256 == card["weights"]["weights_sha256"]
    assert info.num_features == card["architecture"]["num_features"]
    pp = card["preprocess"]
    assert (
        (info.preprocess.input_size, info.preprocess.resize_size) == (pp["input_size"], pp["resize_size"]) == (32, 32)
    )
    assert info.preprocess.mean == tuple(pp["mean"]) and info.preprocess.std == tuple(pp["std"])
    assert info.preprocess.interpolation == pp["interpolation"] and info.preprocess.crop_pct == 1.0
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # a .safetensors path loads the same tensors, recorded by path
    model_f, info_f = load_backbone(name, str(zoo.weights_path(name)))
    assert info_f.weights == str(zoo.weights_path(name)) and info_f.weights_sha256 == info.weights_sha256


@pytest.mark.parametrize("name", NAMES)
def test_probe_matches_card_and_beats_random(name, offline, slice_data):
    card = zoo.card(name)
    model, info = load_backbone(name)
    top1 = slice_probe(model, info, slice_data, card)
    recorded = card["probe"]["slice"]["model_top1"]
    assert abs(top1 - recorded) <= SLICE_TOLERANCE, f"{name}: slice probe {top1:.4f}, card says {recorded:.4f}"

    rand, rinfo = load_backbone(name, "random", seed=card["training"]["seed"])
    assert rinfo.weights == "random" and rinfo.weights_sha256 != info.weights_sha256
    rtop1 = slice_probe(rand, rinfo, slice_data, card)
    assert abs(rtop1 - card["probe"]["slice"]["random_weights_top1"]) <= SLICE_TOLERANCE
    assert top1 - rtop1 >= MIN_GAIN_OVER_RANDOM, f"{name}: {top1:.4f} vs random weights {rtop1:.4f}"


def test_damaged_weights_file_is_caught(tmp_path, offline):
    from safetensors.torch import load_file, save_file

    name = "edgedd/edge-cnn"
    state = load_file(str(zoo.weights_path(name)))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = state[key] + 1e-3
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    _, info = load_backbone(name, str(bad))
    assert info.weights_sha256 != zoo.card(name)["weights"]["weights_sha256"]
    del state[key]
    save_file(state, str(bad))
    with pytest.raises(EdgeddError, match="do not fit"):
        load_backbone(name, str(bad))


def test_host_vit_other_input_size(offline):
    model, info = load_backbone("edgedd/host-vit", input_size=48)
    assert (info.preprocess.input_size, info.preprocess.resize_size) == (48, 48)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 48, 48)).shape == (2, info.num_features)
    _, info = load_backbone("edgedd/host-vit", input_size=32, resize_size=36)
    assert (info.preprocess.input_size, info.preprocess.resize_size) == (32, 36)


def test_names_and_weight_errors(offline):
    check_model_name("edgedd/host-vit")
    with pytest.raises(EdgeddError, match="edgedd/host-vit"):
        check_model_name("edgedd/host-vt")
    with pytest.raises(EdgeddError, match="do not belong"):
        load_backbone("edgedd/host-vit", "shipped:edgedd/edge-cnn")
    with pytest.raises(EdgeddError, match="no shipped weights"):
        load_backbone("test_vit", "shipped")


# ----------------------------------------------------------------------------- edge export


@pytest.mark.parametrize("name", NAMES)
def test_exports_to_onnx_with_parity(name, offline):
    from edgedd.export.onnx_graphs import check, export_backbone, parity

    model, info = load_backbone(name)
    data = export_backbone(model, info.preprocess.input_size, {"model": name})
    check(data, name)
    assert parity(data, model, (3, 32, 32), name)["max_rel_error"] < 1e-4


def test_host_runs_fused_attention_and_export_sees_plain():
    """Host work uses fused SDPA; the exporter gets timm's plain attention; both give the same features."""
    from edgedd.backbones.forward import plain_attention

    model, _ = load_backbone("test_vit", "random", input_size=32, seed=0)
    attn = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    assert attn and all(m.fused_attn for m in attn)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fused = model(x)
        with plain_attention(model):
            assert not any(m.fused_attn for m in attn)
            plain = model(x)
    assert all(m.fused_attn for m in attn)  # restored
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
