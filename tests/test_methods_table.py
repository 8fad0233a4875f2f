"""bench/methods_table.py without distilling: variants parse into DistillConfigs, finished cells
are skipped on a second run (resumable), and the table aggregates cells and baselines."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import load_script

from edgedd.core.config import DistillConfig


@pytest.fixture
def mt():
    return load_script("bench/methods_table.py")


def test_variants_parse_into_configs(mt):
    label, cfg = mt.parse_variant("noise=sfm,init=noise,iterations=7,lr=0.5", DistillConfig())
    assert label == "noise" and cfg.method == "sfm" and cfg.init == "noise" and cfg.iterations == 7 and cfg.lr == 0.5
    with pytest.raises(SystemExit):
        mt.parse_variant("x=sfm,nonsense=1", DistillConfig())


def test_variants_reach_the_augment_config(mt):
    label, cfg = mt.parse_variant("sub=sfm_sub,crop_min=0.25,noise_p=0,lr=1e-2", DistillConfig())
    assert cfg.method == "sfm_sub" and cfg.lr == 0.01
    assert cfg.augment.crop_scale == (0.25, DistillConfig().augment.crop_scale[1]) and cfg.augment.noise_p == 0.0
    assert cfg.augment.flip_p == DistillConfig().augment.flip_p


def test_cells_are_resumable_and_tabled(mt, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_cell(a, label, cfg, ipc, seed, results):
        calls.append((label, ipc, seed))
        return {
            "variant": label,
            "method": cfg.method,
            "ipc": ipc,
            "seed": seed,
            "run": str(results / label),
            "final_loss": 1.0 + seed,
            "copy_ratio": {"pixels": {"median": 0.2, "below": 10, "images": 10}},
            "top1": {"normal": 0.8 + 0.02 * seed, "ci": 0.9},
            "stage2_gain": {"normal": 0.05},
        }

    def fake_baselines(a, cell, results):
        calls.append(("baselines", cell["ipc"]))
        return {"ipc": cell["ipc"], "baselines": {"random": {"seeds": [0.7, 0.72]}, "kcentre": {"seeds": [0.6, 0.6]}}}

    monkeypatch.setattr(mt, "run_cell", fake_cell)
    monkeypatch.setattr(mt, "run_baselines", fake_baselines)
    argv = [
        "methods_table.py",
        "--results",
        str(tmp_path),
        "--ipc",
        "10",
        "--seeds",
        "0",
        "1",
        "--variant",
        "default=sfm_anchor",
        "-q",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    mt.main()
    assert calls == [("default", 10, 0), ("default", 10, 1), ("baselines", 10)]
    first = capsys.readouterr().out
    assert "| default (sfm_anchor) | 10 | 2 | 81.0 ± 1.0 | 90.0 ± 0.0 | 1.5 | 0.20; 20/20 | +5.0 |" in first
    assert "| baseline: random | 10 | | 71.0 ± 1.0 |" in first and "baseline: kcentre" in first
    mt.main()  # everything is there: nothing runs again, the same table
    assert len(calls) == 3 and capsys.readouterr().out == first
    assert json.loads((tmp_path / "cells" / "default_ipc10_seed1.json").read_text())["seed"] == 1
    assert (tmp_path / "table.md").read_text().strip() == first.strip()
