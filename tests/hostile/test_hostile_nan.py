"""NaN and Inf (issue 13, item 8): refused in the learning rate, the Stage II loss, Stage I
statistics, checkpoints and what pack packs.

Before: --lr inf gave exit 0 with a NaN run (and --lr 1e38 an overflow traceback in Adam); NaN
statistics or a NaN checkpoint gave NaN images; pack packed a NaN run and its deploy-check PASSED."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _crafted import one_line_error
from _rundirs import distill, outside, rewrite, tree
from safetensors.torch import load_file
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.paths import cache_root
from edgedd.distillation import stage2


@pytest.mark.parametrize("lr", ["inf", "-inf", "nan", "0", "-1", "1e38"])
def test_a_non_finite_or_absurd_lr_is_refused_before_anything_is_written(lr, image_folder, tmp_path):
    one_line_error(
        distill(image_folder, tmp_path / "run", "--lr", lr),
        "--lr must be a finite value in (0, 1000]",
        f"got {float(lr)}",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_non_finite_loss_stops_the_run_naming_the_step(image_folder, tmp_path, monkeypatch, tmp_path_factory, opened):
    real = stage2.feature_loss
    calls = []

    def diverging(*a, **k):  # the loss of step 3 is NaN, as a diverging run's would be
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(stage2, "feature_loss", diverging)
    out = tmp_path / "run"
    with opened:
        r = distill(image_folder, out, "--checkpoint-every", "1", "--chunk-size", "0")
    one_line_error(r, "the loss became nan at step 3 of 4", "lower --lr", "Stage I statistics are damaged")
    assert not (out / "synthetic.safetensors").exists() and not (out / "summary.json").exists()
    ckpt = load_file(out / "checkpoint.safetensors")  # the last good checkpoint (step 2) is kept, finite
    assert all(torch.isfinite(v).all() for v in ckpt.values() if v.is_floating_point())
    assert outside(opened.seen, tmp_path_factory.getbasetemp(), out, image_folder, cache_root()) == []


def _stopped(image_folder, out, *extra):
    r = distill(image_folder, out, "--stop-after", "2", "--checkpoint-every", "1", *extra)
    assert r.exit_code == 0, r.stderr
    return out


def test_a_checkpoint_with_non_finite_values_is_refused(image_folder, tmp_path):
    out = _stopped(image_folder, tmp_path / "run")
    for key, value in (("level.0", float("nan")), ("adam.1.exp_avg_sq", float("inf"))):
        shutil.copy(out / "checkpoint.safetensors", tmp_path / "clean.safetensors")
        rewrite(out / "checkpoint.safetensors", lambda t, key=key, value=value: t[key].view(-1).__setitem__(0, value))
        one_line_error(
            distill(image_folder, out, "--resume"), "checkpoint", "is damaged", f"non-finite values in {key}"
        )
        assert not (out / "synthetic.safetensors").exists()
        shutil.copy(tmp_path / "clean.safetensors", out / "checkpoint.safetensors")
    r = distill(image_folder, out, "--resume", "--json")  # the clean one resumes
    assert r.exit_code == 0 and json.loads(r.stdout)["resumed_from_step"] == 2, r.stderr


def test_non_finite_statistics_in_a_resumed_run_are_recomputed(image_folder, tmp_path):
    out = _stopped(image_folder, tmp_path / "run", "--no-cache")
    clean = (out / "stats.safetensors").read_bytes()
    # NaN written with its checksum re-recorded: the finite check, not the hash, must stop it
    rewrite(out / "stats.safetensors", lambda t: t["sums"].__setitem__((1, 3), float("nan")), rehash=True)
    r = distill(image_folder, out, "--resume", "--no-cache", "--json")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output[-2000:]
    assert r.stderr.count("\n") == 1 and "sums holds non-finite values" in r.stderr, r.stderr
    assert (out / "stats.safetensors").read_bytes() == clean
    images = load_file(out / "synthetic.safetensors")["images"]
    assert torch.isfinite(images).all()


def _nan_images(t):
    t["images"][0, 0, 0, 0] = float("nan")


def _inf_golden(t):
    t["bias"][1] = float("inf")


def _nan_centres(t):
    t["centres"][0, 0] = float("nan")


@pytest.mark.parametrize(
    "file,edit,words",
    [
        ("synthetic.safetensors", _nan_images, "synthetic.safetensors holds non-finite values in 'images'"),
        (
            "golden_classifier.safetensors",
            _inf_golden,
            "golden_classifier.safetensors holds non-finite values in 'bias'",
        ),
        ("stats.safetensors", _nan_centres, "stats.safetensors holds non-finite values in 'centres'"),
    ],
)
def test_pack_and_evaluate_refuse_a_non_finite_run(file, edit, words, packed, tmp_path, tmp_path_factory, opened):
    run = tmp_path / "run"
    shutil.copytree(packed["run"], run)
    rewrite(
        run / file, edit, rehash=file != "synthetic.safetensors"
    )  # checksums re-recorded: the finite check must stop it
    before = tree(run)
    for argv in (
        ["pack", str(run), "--out", str(tmp_path / "bundle")],
        ["evaluate", str(run), "--test-data", str(packed["heldout"]), "--seeds", "1", "-q"],
    ):
        with opened:
            r = CliRunner().invoke(app, argv)
        one_line_error(r, f"run directory {run} is damaged", words, "re-run edgedd distill")
        assert outside(opened.seen, tmp_path_factory.getbasetemp(), run, packed["heldout"]) == [], argv
    assert not (tmp_path / "bundle").exists() and tree(run) == before
