"""deploy-check's `expected` check: pack records what the host measured on real held-out images,
the device's --data top-1 must not fall more than the allowed drop below it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.images import scan_image_folder
from edgedd.device import accuracy, checks, infer, predict
from edgedd.device import artifact as art
from edgedd.device import bundle as device_bundle
from edgedd.distillation.stage1 import holdout_split


def _copy(packed, tmp_path, name="b"):
    bundle = tmp_path / name
    shutil.copytree(packed["bundle"], bundle)
    return bundle


def _rewrite_reference(bundle, **changes):
    """Re-write the artifact through the writer with edited expectations (None: the key removed),
    so its sha256 is valid and it verifies like any packed one."""
    a = art.read(bundle / art.ARTIFACT_FILE)
    meta = json.loads(json.dumps(a.meta))
    for k, v in changes.items():
        meta["reference"].pop(k, None) if v is None else meta["reference"].__setitem__(k, v)
    art.write(bundle / art.ARTIFACT_FILE, a.tensors, meta)


def _folder(tmp_path, name, files_by_class):
    root = tmp_path / name
    for c, files in files_by_class.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            shutil.copy(f, root / c / f"{i:03d}_{f.name}")
    return root


def _check(rep, name):
    return next(c for c in rep["checks"] if c["name"] == name)


def _deploy(bundle, data, *extra):
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(data), "--json", *extra])
    return r.exit_code, json.loads(r.stdout)


def test_pack_records_the_held_out_figures(packed, tmp_path):
    """golden_heldout_top1 is stage1.json's; expected_edge_top1 is what onnxruntime gets through the
    packed graphs (packed projector) on the golden classifier's held-out slice of the training data."""
    ref = art.read(packed["bundle"] / art.ARTIFACT_FILE).meta["reference"]
    stage1 = json.loads((packed["run"] / "stage1.json").read_text())
    assert (ref["golden_heldout_top1"], ref["golden_heldout_images"]) == (
        stage1["golden"]["heldout_top1"],
        stage1["golden"]["heldout_images"],
    )
    assert packed["result"]["reference"] == ref  # pack's output carries the same figures

    src = scan_image_folder(packed["data"])
    assert not stage1["skipped_images"]
    _, held = holdout_split(src.labels, stage1["stage1"]["golden_holdout"], stage1["stage1"]["seed"])
    assert len(held) == stage1["golden"]["heldout_images"] > 0  # the slice the golden classifier was scored on
    sub = _folder(
        tmp_path,
        "held",
        {c: [Path(src.paths[i]) for i in held if src.labels[i] == k] for k, c in enumerate(src.class_names)},
    )
    b = device_bundle.open_bundle(packed["bundle"])
    x, y, skipped = accuracy.load_labelled_folder(b, sub)
    assert skipped == 0
    assert ref["expected_edge_images"] == len(y) and ref["expected_edge_data"] == str(packed["data"])
    assert ref["expected_edge_top1"] == pytest.approx(accuracy.top1(infer.classify(b, x), y), abs=1e-9)
    assert ref["expected_edge_missing"] is None


def test_pack_edge_top1_follows_the_labels(packed, tmp_path):
    """pack's measurement (torch) against the device's (onnxruntime) on a folder where the figure is
    neither 0 nor 1: a third of the images filed under the wrong class."""
    from edgedd.backbones.loader import load_backbone
    from edgedd.distillation.rundir import load_run
    from edgedd.export.edge_path import edge_top1

    run = load_run(packed["run"])
    pp = run.backbone["preprocess"]
    model, info = load_backbone(
        run.backbone["name"],
        run.backbone["weights"],
        input_size=pp["input_size"],
        resize_size=pp["resize_size"],
        device="cpu",
        seed=run.config["seed"],
    )
    assert info.weights_sha256 == run.backbone["weights_sha256"]
    src = scan_image_folder(packed["heldout"])
    wrong = {"circle": "square", "square": "stripes", "stripes": "circle"}
    data = _folder(tmp_path, "mixed", {c: [] for c in src.class_names})
    for i, (p, label) in enumerate(zip(src.paths, src.labels, strict=True)):
        c = src.class_names[label]
        shutil.copy(p, data / (wrong[c] if i % 3 == 0 else c) / f"{i:03d}.{p.rsplit('.', 1)[1]}")
    a = art.read(packed["bundle"] / art.ARTIFACT_FILE)
    t = {
        k: __import__("torch").from_numpy(a[k].copy())
        for k in ("projector.weight", "projector.bias", "classifier.weight", "classifier.bias")
    }
    mixed = scan_image_folder(data)
    top, n = edge_top1(
        mixed,
        np.arange(len(mixed)),
        model,
        info,
        t["projector.weight"],
        t["projector.bias"],
        t["classifier.weight"],
        t["classifier.bias"],
    )
    b = device_bundle.open_bundle(packed["bundle"])
    x, y, _ = accuracy.load_labelled_folder(b, data)
    device = accuracy.top1(infer.classify(b, x), y)
    assert n == len(y) == 18 and 0 < device < 1
    assert top == pytest.approx(device, abs=1e-9)


def test_expected_check_fails_when_the_device_falls_short(packed, tmp_path):
    """A bundle expecting 100% on 1,000 images: data the device gets fully right passes, the same
    bundle on data where it gets 42 of 54 fails `expected` (exit 3) and only that check."""
    bundle = _copy(packed, tmp_path)
    _rewrite_reference(bundle, expected_edge_top1=1.0, expected_edge_images=1000)
    assert checks.deploy_check(bundle)["ok"]  # verifies (integrity), and writes the fitted projector predict uses
    # file each held-out image (3 copies) under the class the device predicts, then 12 under another one
    files = [p for c in sorted(packed["heldout"].iterdir()) for p in sorted(c.iterdir())] * 3
    pred = [r["top"][0]["label"] for r in predict.predict(bundle, [str(p) for p in files], topk=1)]
    classes = device_bundle.open_bundle(bundle).class_names
    agree = _folder(tmp_path, "agree", {c: [f for f, p in zip(files, pred, strict=True) if p == c] for c in classes})
    code, rep = _deploy(bundle, agree)
    assert code == 0 and _check(rep, "expected")["ok"] is True and rep["data_top1"] == 1.0, rep["checks"]

    moved = set(range(0, len(files), 4)[:12])
    other = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
    short = _folder(
        tmp_path,
        "short",
        {
            c: [f for i, (f, p) in enumerate(zip(files, pred, strict=True)) if (other[p] if i in moved else p) == c]
            for c in classes
        },
    )
    code, rep = _deploy(bundle, short)
    assert rep["data_top1"] == pytest.approx(42 / 54)
    assert code == 3 and [c["name"] for c in rep["checks"] if not c["ok"]] == ["expected"], rep["checks"]
    drop = accuracy.allowed_drop(42 / 54, 54, 1.0, 1000)
    assert (rep["expected_top1"], rep["expected_images"], rep["expected_allowed_drop"]) == (
        1.0,
        1000,
        pytest.approx(drop),
    )
    assert 1.0 - drop > 42 / 54
    detail = _check(rep, "expected")["detail"]
    assert (
        "device 77.8% on 54 images" in detail
        and "host expected 100.0% on 1000" in detail
        and f"allowed drop {100 * drop:.1f}" in detail
    )
    # a wider --margin lets the same drop through
    code, rep = _deploy(bundle, short, "--margin", "0.3")
    assert code == 0 and rep["expected_allowed_drop"] == 0.3
    human = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(short)])
    assert human.exit_code == 3 and "FAIL  expected" in human.stdout


def test_bundle_without_expectation_reports_skipped(packed, tmp_path):
    bundle = _copy(packed, tmp_path)
    _rewrite_reference(
        bundle, expected_edge_top1=None, expected_edge_images=None, expected_edge_missing=None
    )  # as a 1.0 bundle
    code, rep = _deploy(bundle, packed["heldout"])
    c = _check(rep, "expected")
    assert (
        code == 0
        and rep["ok"] is True
        and c["ok"] is None
        and c["detail"].startswith("skipped: the bundle records no expected")
    )
    assert rep["expected_top1"] is None and rep["expected_allowed_drop"] is None
    human = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(packed["heldout"])])
    assert human.exit_code == 0 and "SKIP  expected" in human.stdout and "PASS  expected" not in human.stdout


def test_pack_without_its_training_data_warns_and_records_none(packed, tmp_path):
    """The training folder moved since the run: no expectation (null, with the reason), one warning."""
    from edgedd.distillation.rundir import load_run
    from edgedd.export.edge_path import expectations, heldout_real

    run_dir = tmp_path / "run"
    shutil.copytree(packed["run"], run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["dataset"]["name"] = str(tmp_path / "moved-away")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.warns(UserWarning) as w:
        real, missing = heldout_real(load_run(run_dir), None, None, 1000)
    out = expectations(load_run(run_dir), real, missing, None, None, None, None)
    ours = [
        str(x.message) for x in w if issubclass(x.category, UserWarning) and not issubclass(x.category, ResourceWarning)
    ]
    assert len(ours) == 1 and "\n" not in ours[0] and "no expected edge accuracy" in ours[0], ours
    assert out["expected_edge_top1"] is None and out["expected_edge_images"] is None and real is None
    assert "not readable here" in out["expected_edge_missing"]
    assert out["golden_heldout_top1"] == json.loads((run_dir / "stage1.json").read_text())["golden"]["heldout_top1"]
    assert heldout_real(load_run(run_dir), None, None, 0) == (None, "not measured (pack --expect-images 0)")


def test_expectation_is_measured_on_the_golden_held_out_slice(packed, monkeypatch):
    """The images pack classifies are Stage I's held-out slice (capped evenly), nothing else."""
    from edgedd.distillation.rundir import load_run
    from edgedd.export import edge_path

    seen = []

    def fake_features(source, idx, *a):  # every other image "right" through the identity heads below
        seen.append((source.name, list(idx)))
        return torch.eye(2)[torch.arange(len(idx)) % 2], torch.zeros(len(idx), dtype=torch.int64)

    monkeypatch.setattr(edge_path, "heldout_features", fake_features)
    run = load_run(packed["run"])
    src = scan_image_folder(packed["data"])
    cfg = json.loads((packed["run"] / "stage1.json").read_text())["stage1"]
    _, held = holdout_split(src.labels, cfg["golden_holdout"], cfg["seed"])
    real, missing = edge_path.heldout_real(run, None, None, 1000)
    eye, zero = torch.eye(2), torch.zeros(2)
    out = edge_path.expectations(run, real, missing, eye, zero, eye, zero)
    assert seen == [(str(packed["data"]), held.tolist())] and missing is None
    assert (out["expected_edge_top1"], out["expected_edge_images"]) == (
        pytest.approx((len(held) + 1) // 2 / len(held)),
        len(held),
    )
    assert (
        real.source.name == str(packed["data"]) and real.idx.tolist() == held.tolist()
    )  # what the int8 gate measures on, and what pack chooses the device's strength with
    edge_path.heldout_real(run, None, None, 2)
    assert seen[-1][1] == [held[0], held[-1]]  # the cap keeps the slice's ends, spread evenly


def test_allowed_drop_is_margin_or_three_standard_errors():
    assert accuracy.allowed_drop(0.5, 10**7, 0.5, 10**7) == accuracy.EXPECTED_MARGIN  # tight: the margin rules
    assert accuracy.allowed_drop(0.5, 10**7, 0.5, 10**7, margin=0.2) == 0.2

    def adjusted_var(p, n):
        q = (p * n + 1) / (n + 2)
        return q * (1 - q) / (n + 2)

    for p1, n1, p2, n2 in [(0.8, 100, 0.9, 200), (0.5, 40, 0.6, 1000), (1.0, 3, 17 / 18, 18)]:
        assert accuracy.allowed_drop(p1, n1, p2, n2) == pytest.approx(
            max(0.05, 3 * math.sqrt(adjusted_var(p1, n1) + adjusted_var(p2, n2)))
        )
    assert accuracy.allowed_drop(17 / 18, 18, 1.0, 3) > 1 / 18  # 3 of 3 on the host does not fail 17 of 18
    assert accuracy.allowed_drop(0.8, 50, 0.9, 50) > accuracy.allowed_drop(
        0.8, 500, 0.9, 500
    )  # more images, a tighter bound
