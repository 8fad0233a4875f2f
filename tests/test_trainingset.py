"""edgedd.distillation.trainingset: one pass over the training images' centre crops serves the
sub-centre targets, the copy floor and the copy ratio, and held features give the figures a fresh
pass gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_distill_args
from typer.testing import CliRunner


def test_held_features_give_the_copy_ratio_a_fresh_pass_gives(image_folder, tiny_backbone):
    from edgedd.core.images import open_dataset
    from edgedd.distillation.copies import measure
    from edgedd.distillation.trainingset import training_features

    model, info = tiny_backbone
    source = open_dataset(str(image_folder))
    cpu = torch.device("cpu")
    held = training_features(model, info, source, cpu, amp=False)
    assert len(held.pos) == len(source) and np.array_equal(held.labels, source.labels[held.pos])
    images = torch.rand(
        4, 3, info.preprocess.resize_size, info.preprocess.resize_size, generator=torch.Generator().manual_seed(0)
    )
    kw = dict(seed=0, device=cpu, amp=False, progress=False)
    fresh = measure(model, info, source, {"s": images}, **kw)
    reused = measure(model, info, source, {"s": images}, features=held, **kw)
    for space in ("pixels", "features"):
        np.testing.assert_allclose(
            reused["s"]["spaces"][space]["ratios"], fresh["s"]["spaces"][space]["ratios"], rtol=1e-5
        )
    # and the held rows are what the pass computes: a tampered row moves the figure
    bad = type(held)(held.pos, held.labels, held.feats + 100.0)
    moved = measure(model, info, source, {"s": images}, features=bad, **kw)
    assert moved["s"]["spaces"]["features"]["median"] != pytest.approx(fresh["s"]["spaces"]["features"]["median"])


@pytest.mark.parametrize("floor", [False, True])
def test_a_run_makes_the_training_features_once(image_folder, tmp_path, monkeypatch, floor):
    from edgedd.cli.host import app
    from edgedd.distillation import copies, copyfloor, stage2, trainingset

    calls, measured = [], []
    real_pass, real_measure = trainingset.training_features, copies.measure

    def counted(*a, **k):
        calls.append(1)
        return real_pass(*a, **k)

    def seen(*a, **k):
        measured.append(k.get("features"))
        return real_measure(*a, **k)

    for module in (trainingset, stage2, copyfloor):
        monkeypatch.setattr(module, "training_features", counted)
    monkeypatch.setattr(copies, "measure", seen)
    extra = ["--ipc", "2", "--iterations", "3", "--json"]
    if floor:
        extra += ["--init", "mix", "--mix", "2", "--min-copy-ratio", "1.0"]
    r = CliRunner().invoke(app, tiny_distill_args(image_folder, tmp_path / "run", *extra))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["config"]["method"] == "sfm_sub_probe"
    assert len(calls) == 1  # sub-centres (and the floor in phi_A) share it
    assert len(measured) == 1 and measured[0] is not None  # the copy ratio reads it too


def test_features_past_the_hold_limit_are_let_go_and_the_copy_ratio_makes_its_own(image_folder, tmp_path, monkeypatch):
    from edgedd.cli.host import app
    from edgedd.distillation import copies, pipeline

    measured = []
    real_measure = copies.measure

    def seen(*a, **k):
        measured.append(k.get("features"))
        return real_measure(*a, **k)

    args = ["--ipc", "2", "--iterations", "2", "--json"]
    r = CliRunner().invoke(app, tiny_distill_args(image_folder, tmp_path / "held", *args))
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(copies, "measure", seen)
    monkeypatch.setattr(pipeline, "HOLD_FEATURES_BYTES", 0)
    r2 = CliRunner().invoke(app, tiny_distill_args(image_folder, tmp_path / "fresh", *args))
    assert r2.exit_code == 0, r2.output
    assert measured == [None]
    held, fresh = json.loads(r.stdout)["copy_ratio"], json.loads(r2.stdout)["copy_ratio"]
    for space in ("pixels", "features"):
        np.testing.assert_allclose(
            fresh["spaces"][space]["ratios"], held["spaces"][space]["ratios"], atol=1.5e-4, rtol=0
        )
