"""deploy-check, predict and inspect; the closed-form projector against the torch-trained one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.device import accuracy, finetune, ridge, sidecar
from edgedd.device import bundle as device_bundle
from edgedd.device.render import render_views


def test_deploy_check_json_contract(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(packed["heldout"]), "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] is True and rep["schema"] == "edgedd.deploy-check/1"
    assert [c["name"] for c in rep["checks"]] == [
        "integrity",
        "graphs",
        "mobile readiness",
        "self-test",
        "fine-tune",
        "synthetic accuracy",
        "data accuracy",
        "above chance",
        "expected",
        "latency",
    ]
    assert all(set(c) == {"name", "ok", "detail"} for c in rep["checks"])
    for k in ("synthetic_top1", "data_top1", "latency_ms_p50", "latency_ms_p95", "peak_rss_mb"):
        assert isinstance(rep[k], float), k
    assert rep["latency_ms_p50"] <= rep["latency_ms_p95"]
    assert sidecar.sidecar_path(bundle, "fp32", "fit").is_file() and not (bundle / finetune.FINETUNED_FILE).exists()
    assert rep["latency_ms_p95"] <= rep["latency_ms_p99"] and rep["threads"] in [
        t["threads"] for t in rep["latency_threads"]
    ]
    assert sidecar.settings_path(bundle, "fp32").is_file()
    assert r.stderr == ""  # --json: the report alone, on stdout
    human = CliRunner().invoke(app, ["deploy-check", str(bundle)])
    assert human.exit_code == 0 and "deploy-check PASSED" in human.stdout and human.stderr == ""


def test_deploy_check_fails_on_latency_budget(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--max-latency-ms", "0", "--json"])
    assert r.exit_code == 3  # ran, a check failed (1 is "could not run")
    rep = json.loads(r.stdout)
    assert rep["ok"] is False and [c["name"] for c in rep["checks"] if not c["ok"]] == ["latency"]


def test_predict_uses_device_projector_and_inspect(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    imgs = sorted((packed["heldout"] / "square").iterdir())[:2]
    r = CliRunner().invoke(app, ["predict", str(bundle), *map(str, imgs), "--json", "-k", "2"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["schema"] == "edgedd.predict/1"
    out = res["predictions"]
    assert len(out) == 2 and len(out[0]["top"]) == 2 and abs(sum(t["prob"] for t in out[0]["top"])) <= 1.0 + 1e-6
    assert CliRunner().invoke(app, ["deploy-check", str(bundle)]).exit_code == 0
    (bundle / "edgedd.artifact.safetensors").write_bytes(
        (bundle / "edgedd.artifact.safetensors").read_bytes()
    )  # same bytes
    assert CliRunner().invoke(app, ["predict", str(bundle), str(imgs[0])]).exit_code == 0
    i = CliRunner().invoke(app, ["inspect", str(bundle), "--json"])
    assert i.exit_code == 0 and json.loads(i.stdout)["tensors"]["synthetic.images"]["dtype"] == "uint8"
    bad = CliRunner().invoke(app, ["predict", str(bundle), str(tmp_path / "nope.png")])
    assert bad.exit_code == 1 and "does not exist" in bad.stderr


def test_ridge_recovers_identity_and_linear_maps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    w, b = ridge.fit_ridge(x, x, ridge=1e-6)
    np.testing.assert_allclose(w, np.eye(16), atol=1e-4)
    np.testing.assert_allclose(b, 0, atol=1e-4)
    true_w, true_b = rng.normal(size=(8, 16)), rng.normal(size=8)
    w, b = ridge.fit_ridge(x, x @ true_w.T + true_b, ridge=1e-8)
    np.testing.assert_allclose(w, true_w, atol=1e-3)
    np.testing.assert_allclose(b, true_b, atol=1e-3)


def test_device_renders_the_views_the_host_rendered():
    import torch

    from edgedd.core.config import AugmentConfig
    from edgedd.host.augment import render_views as torch_render
    from edgedd.host.augment import sample_views

    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 29, 29, generator=g)
    v = sample_views(12, AugmentConfig(), g)
    for out in (16, 40):
        np.testing.assert_allclose(
            render_views(x.numpy(), v.boxes.numpy(), v.flips.numpy(), out), torch_render(x, v, out).numpy(), atol=2e-5
        )


# ----------------------------------------------------------------------------- accuracy can fail


def _relabelled(src, dst, mapping: dict[str, str]):
    """A copy of an ImageFolder with class folders renamed (same images, other labels)."""
    dst.mkdir()
    for d in src.iterdir():
        shutil.copytree(d, dst / mapping.get(d.name, d.name))
    return dst


def _check(rep, name):
    return next(c for c in rep["checks"] if c["name"] == name)


def test_deploy_check_fails_at_chance_level(packed, tmp_path):
    """A classifier no better than guessing on --data fails deploy-check (exit 3), however the other checks went."""
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    good = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(packed["heldout"]), "--json"])
    assert good.exit_code == 0, good.stdout
    rep = json.loads(good.stdout)
    assert (
        _check(rep, "above chance")["ok"] and rep["data_top1"] > rep["chance_bound_top1"] > rep["chance_top1"] == 1 / 3
    )
    # every image under another class's name: the bundle is useless on this data
    rotated = _relabelled(
        packed["heldout"], tmp_path / "rotated", {"circle": "square", "square": "stripes", "stripes": "circle"}
    )
    bad = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(rotated), "--json"])
    assert bad.exit_code == 3, bad.stdout
    rep = json.loads(bad.stdout)
    # also far below what pack measured on the training data's held-out images
    assert rep["ok"] is False and [c["name"] for c in rep["checks"] if not c["ok"]] == ["above chance", "expected"]
    assert rep["data_top1"] <= rep["chance_top1"]
    human = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(rotated)])
    assert human.exit_code == 3 and "FAIL  above chance" in human.stdout and "deploy-check FAILED" in human.stdout


def test_deploy_check_too_little_data_cannot_pass(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    small = tmp_path / "small"
    for c in ("circle", "square"):
        (small / c).mkdir(parents=True)
        for f in sorted((packed["heldout"] / c).iterdir())[:2]:
            shutil.copy(f, small / c / f.name)
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(small), "--json"])
    rep = json.loads(r.stdout)
    assert (
        r.exit_code == 3 and rep["chance_bound_top1"] is None and "cannot tell" in _check(rep, "above chance")["detail"]
    )


def test_chance_bound_is_the_3_sigma_binomial_tail():
    from math import comb

    for n, p in [(18, 1 / 3), (100, 0.1), (40, 0.5)]:
        k = accuracy.chance_bound(n, p)
        tail = lambda k, n=n, p=p: sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))  # noqa: E731
        assert tail(k) <= accuracy.CHANCE_ALPHA < tail(k - 1)
    assert accuracy.chance_bound(9, 0.5) is None and accuracy.chance_bound(10, 0.5) == 10


def test_min_accuracy_floor_and_old_name(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    # 2 of 18 images filed under the wrong class: top-1 at most 16/18, still far above chance
    data = tmp_path / "data"
    shutil.copytree(packed["heldout"], data)
    for f in sorted((data / "circle").iterdir())[:2]:
        f.rename(data / "square" / f"moved_{f.name}")
    for flag in ("--min-accuracy", "--min-data-top1"):
        r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(data), flag, "0.95", "--json"])
        rep = json.loads(r.stdout)
        assert r.exit_code == 3 and [c["name"] for c in rep["checks"] if not c["ok"]] == ["data accuracy"], rep[
            "checks"
        ]
    ok = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(data), "--min-accuracy", "0.5"])
    assert ok.exit_code == 0, ok.stdout
    usage = CliRunner().invoke(app, ["deploy-check", str(bundle), "--min-accuracy", "0.5"])
    assert usage.exit_code == 2 and "--data" in usage.stderr


def test_deploy_check_data_names_export_data(packed, tmp_path):
    """--data embedded:... cannot exist on a device: the error says how to make an ImageFolder on the host."""
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    for data in ("embedded:mnist/test", str(tmp_path / "missing")):
        r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", data])
        err = r.stderr.strip()
        assert r.exit_code == 1 and err.startswith("error: ") and "\n" not in err, err
        assert "export-data" in err, err
        if not data.startswith("embedded:"):
            assert "embedded:" not in err, err  # no dataset suggested that a device cannot have
    h = CliRunner().invoke(app, ["deploy-check", "--help"], terminal_width=200)
    assert "export-data" in h.stdout


# ----------------------------------------------------------------------------- predict --int8


def _one_line(r) -> str:
    err = r.stderr.strip()
    assert r.exit_code == 1 and r.stdout == "" and err.startswith("error: ") and "\n" not in err, (
        r.exit_code,
        r.output,
    )
    return err


@pytest.mark.slow
def test_predict_int8_and_the_projector_bound_to_its_variant(packed, tmp_path):
    img = str(sorted((packed["heldout"] / "square").iterdir())[0])
    fp32_only = tmp_path / "fp32"
    shutil.copytree(packed["bundle"], fp32_only)
    err = _one_line(CliRunner().invoke(app, ["predict", str(fp32_only), img, "--int8"]))
    assert "has no int8 backbone" in err and "edgedd pack --int8" in err

    from edgedd.export.pack import PackConfig, pack

    bundle = tmp_path / "q"
    pack(
        packed["run"],
        bundle,
        config=PackConfig(views=8, projector_epochs=100, int8=True, int8_max_drop=1.0),
        device="cpu",
    )

    def predict(*extra):
        return CliRunner().invoke(app, ["predict", str(bundle), img, "--json", *extra])

    for extra, int8 in (((), False), (("--int8",), True)):  # no fitted projector yet: the packed one, either backbone
        r = predict(*extra)
        assert r.exit_code == 0, r.stderr
        assert {k: json.loads(r.stdout)[k] for k in ("int8", "projector")} == {"int8": int8, "projector": "packed"}
    fp32_probs = [t["prob"] for t in json.loads(predict().stdout)["predictions"][0]["top"]]
    int8_probs = [t["prob"] for t in json.loads(predict("--int8").stdout)["predictions"][0]["top"]]
    assert fp32_probs != int8_probs  # another backbone graph really ran

    # the demo's order: deploy-check fp32, then --int8; each variant keeps its own fit (one sidecar per variant)
    assert CliRunner().invoke(app, ["deploy-check", str(bundle)]).exit_code == 0  # the packed bundle passes every check
    assert json.loads(predict().stdout)["projector"] == "device-fitted"
    assert (
        json.loads(predict("--int8").stdout)["projector"] == "packed"
    )  # no int8 fit yet: the fp32 one is not used for it
    assert CliRunner().invoke(app, ["deploy-check", str(bundle), "--int8"]).exit_code == 0
    for extra, int8 in (((), False), (("--int8",), True)):
        r = predict(*extra)
        assert r.exit_code == 0, r.stderr
        out = json.loads(r.stdout)
        variant = "int8" if int8 else "fp32"
        assert (out["projector"], out["projector_file"]) == ("device-fitted", f"projector.fit.{variant}.safetensors")
        b = device_bundle.Bundle.open(bundle, int8=int8)
        assert b.projector is not None and b.projector_file == sidecar.sidecar_path(bundle, variant, "fit")
        assert (
            b.threads
            == json.loads(sidecar.settings_path(bundle, variant).read_text())["intra_op_threads"]
            == out["threads"]
        )
    assert device_bundle.Bundle.open(bundle, threads=1).threads == 1  # --threads / threads= overrides the stored count

    # an adapt sidecar of a variant is preferred over its fit (a copy of the fit stands in for one here)
    import shutil as sh

    sh.copy(sidecar.sidecar_path(bundle, "fp32", "fit"), sidecar.sidecar_path(bundle, "fp32", "adapt"))
    assert json.loads(predict().stdout)["projector"] == "device-adapted"
    assert (
        device_bundle.Bundle.open(bundle).projector_kind == "adapt"
        and device_bundle.Bundle.open(bundle, int8=True).projector_kind == "fit"
    )
    sidecar.sidecar_path(bundle, "fp32", "adapt").unlink()

    # an older edgedd's single sidecar serves the variant it records, and only that one
    sh.move(sidecar.sidecar_path(bundle, "int8", "fit"), bundle / finetune.FINETUNED_FILE)
    assert device_bundle.Bundle.open(bundle, int8=True).projector_file == bundle / finetune.FINETUNED_FILE
    assert device_bundle.Bundle.open(bundle).projector_file == sidecar.sidecar_path(bundle, "fp32", "fit")
    sidecar.sidecar_path(bundle, "fp32", "fit").unlink()
    assert device_bundle.Bundle.open(bundle).projector is None  # the int8 legacy file is not the fp32 fit

    # an int8 fit written by an older edgedd (no fit_features: fitted on int8 view features) still
    # loads, with one warning naming the refit
    from safetensors import safe_open

    from edgedd.core.stio import serialize

    side = bundle / finetune.FINETUNED_FILE
    with safe_open(str(side), framework="numpy") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert md.pop("fit_features") == "fp32 backbone"
    side.write_bytes(serialize(tensors, metadata=md))
    with pytest.warns(UserWarning, match="older edgedd.*deploy-check --int8 again"):
        assert device_bundle.Bundle.open(bundle, int8=True).projector is not None
