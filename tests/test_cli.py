"""`edgedd distill` through the CLI: the happy path, every bad input of the issue, --help snapshots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import copy_run, make_image_folder, tiny_distill_args
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from edgedd.cli.host import app

SNAPSHOTS = Path(__file__).parent / "snapshots"


def run(args, **kw):
    result = CliRunner().invoke(app, args, **kw)
    return result


def assert_clean_error(result, code: int, *needles: str):
    """One line on stderr, the expected exit code, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    for n in needles:
        assert n in err, err
    if code == 1:
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err


def test_distill_end_to_end(image_folder, tmp_path):
    out = tmp_path / "run"
    r = run(tiny_distill_args(image_folder, out, "--ipc", "2", "--iterations", "40", "--json", "--preview-every", "20"))
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["synthetic_images"] == 6 and summary["method"] == "sfm_sub_probe"  # the default
    assert summary["backbone"]["preprocess"]["input_size"] == 32
    assert -1 <= summary["flow_cosine"] <= 1
    for f in [
        "run.json",
        "stats.safetensors",
        "golden_classifier.safetensors",
        "stage1.json",
        "synthetic.safetensors",
        "synthetic.json",
        "preview.png",
        "summary.json",
        "previews/step_000020.png",
    ]:
        assert (out / f).is_file(), f
    assert not (out / "checkpoint.safetensors").exists()
    syn = load_file(out / "synthetic.safetensors")
    assert syn["images"].shape == (6, 3, 32, 32) and syn["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert 0 < syn["images"].min() and syn["images"].max() < 1
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["class_names"] == ["circle", "square", "stripes"]
    assert meta["preprocess"]["mean"] == list(summary["backbone"]["preprocess"]["mean"])
    assert not list(out.glob(".*.tmp"))
    assert Image.open(out / "preview.png").size[0] > 0
    assert summary["schema"] == "edgedd.distill/1" and r.stderr == ""  # --json: the summary alone, on stdout


def test_second_distill_reuses_stage1(image_folder, tmp_path):
    r1 = run(tiny_distill_args(image_folder, tmp_path / "a", "--iterations", "2", "--json"))
    r2 = run(tiny_distill_args(image_folder, tmp_path / "b", "--iterations", "2", "--json"))
    assert json.loads(r1.stdout)["stage1_cached"] is False
    assert json.loads(r2.stdout)["stage1_cached"] is True
    assert load_file(tmp_path / "a" / "stats.safetensors")["centres"].equal(
        load_file(tmp_path / "b" / "stats.safetensors")["centres"]
    )


def test_sfm_decouple_and_reference_flow(image_folder, tmp_path):
    r = run(
        tiny_distill_args(
            image_folder, tmp_path / "d", "--iterations", "3", "--method", "sfm_decouple", "--alpha", "1", "--json"
        )
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["config"]["alpha"] == 1.0
    r = run(
        tiny_distill_args(
            image_folder, tmp_path / "r", "--iterations", "3", "--flow-denominator", "reference", "--json"
        )
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["config"]["flow_denominator"] == "reference"


# ----------------------------------------------------------------------------- bad input


def test_missing_directory(tmp_path):
    assert_clean_error(run(tiny_distill_args(tmp_path / "nope", tmp_path / "o")), 1, "does not exist")


def test_class_folder_without_images(image_folder, tmp_path):
    (image_folder / "empty").mkdir()
    (image_folder / "empty" / "readme.txt").write_text("no images")
    assert_clean_error(run(tiny_distill_args(image_folder, tmp_path / "o")), 1, "empty", "holds no images")


def test_single_class(tmp_path):
    make_image_folder(tmp_path / "one", classes=("only",))
    assert_clean_error(
        run(tiny_distill_args(tmp_path / "one", tmp_path / "o")), 1, "only one class", "at least 2 classes"
    )


def test_corrupt_image_skipped_with_warning_or_stopped(image_folder, tmp_path):
    bad = image_folder / "square" / "broken.png"
    good = sorted((image_folder / "square").iterdir())[0].read_bytes()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + good[:50])  # truncated, not decodable
    r = run(tiny_distill_args(image_folder, tmp_path / "skip", "--iterations", "2", "--json"))
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["dataset"]["skipped_images"] == 1
    assert "warning: skipped 1 unreadable image(s)" in r.stderr and "broken.png" in r.stderr
    assert_clean_error(
        run(tiny_distill_args(image_folder, tmp_path / "strict", "--iterations", "2", "--strict-images", "--no-cache")),
        1,
        "broken.png",
        "cannot read image",
    )
    assert not (tmp_path / "strict" / "summary.json").exists()


def test_unknown_backbone(image_folder, tmp_path):
    args = tiny_distill_args(image_folder, tmp_path / "o")
    args[args.index("test_vit")] = "test_vitt"
    assert_clean_error(run(args), 1, "unknown backbone 'test_vitt'", "did you mean", "test_vit")


def test_weights_that_do_not_fit(image_folder, tmp_path):
    import timm

    other = timm.create_model("test_vit3", num_classes=0)  # same family, other widths
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "w.safetensors")
    args = tiny_distill_args(image_folder, tmp_path / "o")
    args[args.index("random")] = str(tmp_path / "w.safetensors")
    assert_clean_error(run(args), 1, "does not fit test_vit")
    torch.save({"x": torch.zeros(1)}, tmp_path / "w.pth")
    args[args.index(str(tmp_path / "w.safetensors"))] = str(tmp_path / "w.pth")
    assert_clean_error(run(args), 1, "is not .safetensors", "never unpickles")


def test_matching_weights_file_loads(image_folder, tmp_path):
    import timm

    m = timm.create_model("test_vit", num_classes=0, img_size=32)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "w.safetensors")
    args = tiny_distill_args(image_folder, tmp_path / "o", "--iterations", "2", "--json")
    args[args.index("random")] = str(tmp_path / "w.safetensors")
    r = run(args)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["backbone"]["weights"].endswith("w.safetensors")


def test_ipc_zero_is_a_usage_error(image_folder, tmp_path):
    r = run(tiny_distill_args(image_folder, tmp_path / "o", "--ipc", "0"))
    assert r.exit_code == 2 and "--ipc" in r.stderr and "Traceback" not in r.output


def test_out_dir_with_a_different_run(tiny_run, tmp_path):
    image_folder, out = tiny_run["data"], copy_run(tiny_run["run"], tmp_path / "o")  # made by the same arguments
    before = (out / "synthetic.safetensors").read_bytes()
    assert_clean_error(
        run(tiny_distill_args(image_folder, out, "--iterations", "2", "--ipc", "2")),
        1,
        "already holds a different run",
        "distill.ipc",
        "--overwrite",
    )
    assert (out / "synthetic.safetensors").read_bytes() == before  # untouched
    assert_clean_error(
        run(tiny_distill_args(image_folder, out, "--iterations", "2")), 1, "already holds this finished run"
    )
    assert run(tiny_distill_args(image_folder, out, "--iterations", "2", "--ipc", "2", "--overwrite")).exit_code == 0


def test_out_dir_that_is_not_a_run(image_folder, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "thesis.tex").write_text("precious")
    assert_clean_error(run(tiny_distill_args(image_folder, tmp_path / "o")), 1, "not an edgedd run directory")
    assert_clean_error(
        run(tiny_distill_args(image_folder, tmp_path / "o", "--overwrite")), 1, "not an edgedd run directory"
    )
    assert (tmp_path / "o" / "thesis.tex").read_text() == "precious"


def test_traceback_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDD_TRACEBACK", "1")
    r = run(tiny_distill_args(tmp_path / "nope", tmp_path / "o"))
    assert r.exit_code != 0 and r.exception is not None and "does not exist" in str(r.exception)


# ----------------------------------------------------------------------------- --help snapshots


@pytest.mark.parametrize(
    "args, name",
    [
        ([], "root"),
        (["distill"], "distill"),
        (["deploy-check"], "deploy_check"),
        (["export-data"], "export_data"),
        (["report"], "report"),
        (["predict"], "predict"),
        (["adapt"], "adapt"),
    ],
)
def test_help_snapshot(args, name):
    r = run(
        [*args, "--help"],
        prog_name="edgedd",
        terminal_width=100,
        env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"},
    )
    assert r.exit_code == 0
    path = SNAPSHOTS / f"help_{name}.txt"
    if os.environ.get("EDGEDD_UPDATE_SNAPSHOTS") or not path.exists():
        path.write_text(r.stdout)
    assert r.stdout == path.read_text(), "--help changed; review and rerun with EDGEDD_UPDATE_SNAPSHOTS=1"


def test_evaluate_through_the_cli(tiny_run, tmp_path):
    image_folder, out = tiny_run["data"], tiny_run["run"]  # evaluate only reads the run
    held = make_image_folder(tmp_path / "held", seed=3)
    r = run(
        [
            "evaluate",
            str(out),
            "--test-data",
            str(held),
            "--mode",
            "normal",
            "--mode",
            "ci",
            "--seeds",
            "2",
            "--epochs",
            "5",
            "--baselines",
            "--train-data",
            str(image_folder),
            "--json",
            "-q",
        ]
    )
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert {
        "method",
        "backbone",
        "eval_backbone",
        "ipc",
        "protocol",
        "flow_cosine",
        "modes",
        "baselines",
        "landing",
        "golden",
    } <= set(res)
    assert res["protocol"] == "converged"
    assert set(res["modes"]) == {"normal", "ci"} and set(res["baselines"]) == {
        "random",
        "centroids",
        "neighbors",
        "kcentre",
        "herding",
        "full",
    }
    # the starting set: the same modes, seeds and protocol; the gain is final - start
    assert set(res["starting_set"]) == {"normal", "ci"}
    for m in ("normal", "ci"):
        assert res["stage2_gain"][m] == pytest.approx(
            res["modes"][m]["top1_mean"] - res["starting_set"][m]["top1_mean"]
        )
    assert res["copy_ratio"]["spaces"]["pixels"]["images"] == 3 * res["ipc"]
    for name, v in [*res["modes"].items(), *res["baselines"].items(), *res["starting_set"].items()]:
        assert set(v) == {
            "top1_mean",
            "top1_std",
            "top5_mean",
            "seeds",
            "train_loss_start",
            "train_loss_final",
            "train_steps",
            "stalled",
        } | ({"ridge", "ridge_from"} if name == "ci" else set())
        assert len(v["seeds"]) == 2 and len(v["train_loss_final"]) == 2
    assert res["schema"] == "edgedd.evaluate/1" and r.stderr == ""
    human = run(
        ["evaluate", str(out), "--test-data", str(held), "--mode", "normal", "--seeds", "1", "--epochs", "2", "-q"]
    )
    assert human.exit_code == 0 and "train loss (start -> end)" in human.stdout and human.stderr == ""
    assert (
        "starting set, step 0 (normal)" in human.stdout
        and "stage-II gain" in human.stdout
        and "copy ratio median" in human.stdout
    )
    without = run(["evaluate", str(out), "--test-data", str(held), "--seeds", "1", "--no-starting-set", "--json", "-q"])
    assert without.exit_code == 0 and "starting_set" not in json.loads(without.stdout)
    bad = run(["evaluate", str(out), "--test-data", str(tmp_path / "missing"), "-q"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ")


def test_init_real_starts_from_real_images_of_each_class(image_folder, tmp_path):
    """--init real: before any step the synthetic images are real images of their own class, drawn
    by the seed (the preview at step 0 would show them); with 0 steps' worth of change the saved set
    is still those images, and the run records the choice."""
    import numpy as np

    from edgedd.core.images import scan_image_folder
    from edgedd.distillation.stage2 import real_init_images
    from edgedd.host.data import CanvasDataset

    out = tmp_path / "run"
    r = CliRunner().invoke(
        app, tiny_distill_args(image_folder, out, "--iterations", "2", "--init", "real", "--lr", "1e-9")
    )
    assert r.exit_code == 0, r.output
    saved = load_file(out / "synthetic.safetensors")
    src = scan_image_folder(image_folder)
    canvases = CanvasDataset(src, 32, "bicubic")
    reals = np.stack([canvases[i][0] for i in range(len(src))]).astype(np.float32) / 255  # (n, H, W, 3)
    for img, label in zip(saved["images"].permute(0, 2, 3, 1).numpy(), saved["labels"].tolist(), strict=True):
        d = np.abs(reals - img.clip(0.01, 0.99)).reshape(len(src), -1).max(1)
        assert d.min() < 0.02 and src.labels[d.argmin()] == label  # a real image of its own class
    assert json.loads((out / "summary.json").read_text())["config"]["init"] == "real"
    a = real_init_images(src, 2, 32, "bicubic", seed=0)
    assert torch.equal(a, real_init_images(src, 2, 32, "bicubic", seed=0)) and not torch.equal(
        a, real_init_images(src, 2, 32, "bicubic", seed=1)
    )
