"""edgedd.device.adaptation on a packed bundle: the synthetic images as local images, shuffled
labels, and an untrusted local folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from edgedd.core.errors import EdgeddError
from edgedd.device.adaptation import adapt_bundle
from edgedd.device.bundle import open_bundle
from edgedd.device.finetune import fine_tune_projector, synthetic_pixels
from edgedd.device.infer import backbone_features, head
from edgedd.device.inputs import prepare_canvases


def _synthetic_folder(b, root):
    """The bundle's synthetic images as an ImageFolder: local images identical to the views' source."""
    pix, labels = b.artifact["synthetic.images"], b.artifact["synthetic.labels"]
    for i, (im, c) in enumerate(zip(pix, labels, strict=True)):
        d = root / b.class_names[c]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.transpose(1, 2, 0)).save(d / f"{i}.png")
    return root


def test_synthetic_images_as_local_images_change_nothing_harmful(packed, tmp_path):
    b = open_bundle(packed["bundle"])
    r = adapt_bundle(b, _synthetic_folder(b, tmp_path / "syn"))
    feats = backbone_features(b, prepare_canvases(b, synthetic_pixels(b)))
    labels = b.artifact["synthetic.labels"]
    views = fine_tune_projector(b)
    before = float((head(b, feats, (views["weight"], views["bias"])).argmax(1) == labels).mean())
    after = float((head(b, feats, (r["weight"], r["bias"])).argmax(1) == labels).mean())
    assert after >= before and np.isfinite(r["weight"]).all()
    hx, hy = _heldout_inputs(b, packed)
    hf = backbone_features(b, hx)
    held, held_views = (
        float((head(b, hf, p).argmax(1) == hy).mean())
        for p in ((r["weight"], r["bias"]), (views["weight"], views["bias"]))
    )
    assert held >= held_views - 0.2  # real held-out images: not harmed beyond a few of its 18 images
    assert r["report"]["used"] in ("adapted", "views only") and r["report"]["images"] == len(labels)


def _heldout_inputs(b, packed):
    from edgedd.device.accuracy import load_labelled_folder

    x, y, _ = load_labelled_folder(b, packed["heldout"])
    return x, y


def test_shuffled_labels_fall_back_and_say_so(packed, tmp_path):
    b = open_bundle(packed["bundle"])
    files = sorted(p for p in packed["heldout"].rglob("*.png"))
    classes = sorted(p.name for p in packed["heldout"].iterdir())
    wrong = np.random.default_rng(0).permutation([f.parent.name for f in files])
    for f, c in zip(files, wrong, strict=True):
        (tmp_path / "wrong" / c).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "wrong" / c / f"{f.parent.name}_{f.name}")
    assert sorted(p.name for p in (tmp_path / "wrong").iterdir()) == classes
    r = adapt_bundle(b, tmp_path / "wrong")
    views = fine_tune_projector(b)
    assert r["report"]["used"] == "views only" and r["report"]["why_not_adapted"]
    assert np.array_equal(r["weight"], views["weight"]) and np.array_equal(r["bias"], views["bias"])


def test_one_class_and_unknown_classes_are_refused(packed, tmp_path):
    b = open_bundle(packed["bundle"])
    shutil.copytree(packed["heldout"] / "square", tmp_path / "one" / "square")
    with pytest.raises(EdgeddError, match="at least two"):
        adapt_bundle(b, tmp_path / "one")
    shutil.copytree(packed["heldout"], tmp_path / "odd")
    (tmp_path / "odd" / "zebra").mkdir()
    shutil.copy(next((packed["heldout"] / "square").iterdir()), tmp_path / "odd" / "zebra" / "z.png")
    with pytest.raises(EdgeddError, match="not classes of this bundle"):
        adapt_bundle(b, tmp_path / "odd")


def test_adapt_cli_writes_its_sidecar_and_refuses_bad_folders(packed, tmp_path):
    import json

    from typer.testing import CliRunner

    from edgedd.cli.host import app

    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    r = CliRunner().invoke(
        app, ["adapt", str(bundle), "--data", str(packed["heldout"]), "--json"], env={"EDGEDD_PROGRESS": "0"}
    )
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (bundle / rep["sidecar"]).is_file() and rep["images"] == 18 and rep["used"] in ("adapted", "views only")
    shutil.copytree(packed["heldout"] / "square", tmp_path / "one" / "square")
    r = CliRunner().invoke(app, ["adapt", str(bundle), "--data", str(tmp_path / "one")], env={"EDGEDD_PROGRESS": "0"})
    assert (
        r.exit_code == 1
        and r.stderr.startswith("error: ")
        and len(r.stderr.strip().splitlines()) == 1
        and "Traceback" not in r.stderr
    )


def test_adapted_sidecar_is_bound_used_and_scored(packed, tmp_path):
    """predict and Bundle.open use the adapt sidecar of their variant; deploy-check scores it beside
    the views-only fit and the report page shows both; a forged or moved one is refused."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from edgedd import Bundle
    from edgedd.device.checks import deploy_check
    from edgedd.evaluation.report import deploy_section

    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    rep = Bundle.open(bundle).adapt(packed["heldout"])
    path = bundle / rep["sidecar"]
    assert path.name == "projector.adapt.fp32.safetensors"
    b = Bundle.open(bundle)
    assert b.projector_kind == "adapt" and b.projector_file == path
    dc = deploy_check(bundle, data=packed["heldout"])
    assert dc["projector"] == "adapt" and "data_top1_before_adapt" in dc
    assert [c["ok"] for c in dc["checks"] if c["name"] == "adapted"] == [True]
    assert "before" in deploy_section(dc) and "after" in deploy_section(dc)
    with safe_open(str(path), framework="numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, "artifact_sha256": "0" * 64})  # bound to another artifact
    with pytest.raises(EdgeddError, match="another artifact"):
        Bundle.open(bundle)
    dc = deploy_check(bundle, data=packed["heldout"])
    assert (
        dc["projector"] == "fit"
        and [c["ok"] for c in dc["checks"] if c["name"] == "adapted"] == [False]
        and not dc["ok"]
    )
    save_file(tensors, str(path), metadata={**meta, "backbone": "int8"})  # an int8 adaptation, renamed as the fp32 one
    with pytest.raises(EdgeddError, match="int8 backbone"):
        Bundle.open(bundle)


@pytest.mark.parametrize("recorded", [True, False])
def test_a_strength_pack_chose_on_real_images_is_not_moved_by_a_few_local_ones(packed, tmp_path, recorded):
    """Format 1.6: deploy-check's strength recorded by pack (chosen on held-out real images through this
    backbone) is adapt's too, unmoved; without a record the local images may move the views' choice
    (candidates within a decade, edgedd.device.adapt.local_strength)."""
    from edgedd.device import artifact as art
    from edgedd.device.finetune import RIDGE_FROM_REAL

    bundle = tmp_path / "bundle"
    shutil.copytree(packed["bundle"], bundle)
    a = art.load(bundle / art.ARTIFACT_FILE)
    a.meta["reference"]["device_ridge"] = 0.3 if recorded else None  # as pack writes it (the fixture holds out too few)
    art.write(bundle / art.ARTIFACT_FILE, a.tensors, a.meta)
    r = adapt_bundle(open_bundle(bundle), packed["heldout"])["report"]
    considered = [c["ridge"] for c in r["strength_ce"]]
    if recorded:
        assert r["view_ridge_from"] == RIDGE_FROM_REAL and r["view_ridge"] == a.meta["reference"]["device_ridge"]
        assert considered == [r["view_ridge"]] and r["ridge"] == r["view_ridge"] and r["strength_from"] == "views"
    else:
        assert r["view_ridge_from"] == "synthetic views (cross-validation)" and len(considered) > 1
