"""deploy-check, predict and inspect; the closed-form projector against the torch-trained one."""

from __future__ import annotations

import json
import shutil

import numpy as np
from typer.testing import CliRunner

from edgedd.cli import app
from edgedd.device import runtime
from edgedd.device.render import render_views


def test_deploy_check_json_contract(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(packed["heldout"]), "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] is True
    assert [c["name"] for c in rep["checks"]] == ["integrity", "graphs", "self-test", "fine-tune", "synthetic accuracy", "data accuracy", "latency"]
    assert all(set(c) == {"name", "ok", "detail"} for c in rep["checks"])
    for k in ("synthetic_top1", "data_top1", "latency_ms_p50", "latency_ms_p95", "peak_rss_mb"):
        assert isinstance(rep[k], float), k
    assert rep["latency_ms_p50"] <= rep["latency_ms_p95"]
    assert (bundle / runtime.FINETUNED_FILE).is_file()
    assert "deploy-check PASSED" in r.stderr


def test_deploy_check_fails_on_latency_budget(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--max-latency-ms", "0", "--json"])
    assert r.exit_code == 1
    rep = json.loads(r.stdout)
    assert rep["ok"] is False and [c["name"] for c in rep["checks"] if not c["ok"]] == ["latency"]


def test_predict_uses_device_projector_and_inspect(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    imgs = sorted((packed["heldout"] / "square").iterdir())[:2]
    r = CliRunner().invoke(app, ["predict", str(bundle), *map(str, imgs), "--json", "-k", "2"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out) == 2 and len(out[0]["top"]) == 2 and abs(sum(t["prob"] for t in out[0]["top"])) <= 1.0 + 1e-6
    assert CliRunner().invoke(app, ["deploy-check", str(bundle)]).exit_code == 0
    (bundle / "edgedd.artifact.safetensors").write_bytes((bundle / "edgedd.artifact.safetensors").read_bytes())  # same bytes
    assert CliRunner().invoke(app, ["predict", str(bundle), str(imgs[0])]).exit_code == 0
    i = CliRunner().invoke(app, ["inspect", str(bundle), "--json"])
    assert i.exit_code == 0 and json.loads(i.stdout)["tensors"]["synthetic.images"]["dtype"] == "uint8"
    bad = CliRunner().invoke(app, ["predict", str(bundle), str(tmp_path / "nope.png")])
    assert bad.exit_code == 1 and "does not exist" in bad.stderr


def test_ridge_recovers_identity_and_linear_maps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    w, b = runtime.fit_projector_ridge(x, x, ridge=1e-6)
    np.testing.assert_allclose(w, np.eye(16), atol=1e-4)
    np.testing.assert_allclose(b, 0, atol=1e-4)
    true_w, true_b = rng.normal(size=(8, 16)), rng.normal(size=8)
    w, b = runtime.fit_projector_ridge(x, x @ true_w.T + true_b, ridge=1e-8)
    np.testing.assert_allclose(w, true_w, atol=1e-3)
    np.testing.assert_allclose(b, true_b, atol=1e-3)


def test_device_renders_the_views_the_host_rendered():
    import torch

    from edgedd.augment import render_views as torch_render, sample_views
    from edgedd.config import AugmentConfig

    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 29, 29, generator=g)
    v = sample_views(12, AugmentConfig(), g)
    for out in (16, 40):
        np.testing.assert_allclose(render_views(x.numpy(), v.boxes.numpy(), v.flips.numpy(), out), torch_render(x, v, out).numpy(), atol=2e-5)
