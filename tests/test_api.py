"""The Python API (docs/API.md): the documented example runs as written, and edgedd.Bundle
classifies paths, PIL images and arrays exactly as `edgedd predict` does."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import edgedd
from edgedd.cli.host import app
from edgedd.core.errors import EdgeddError
from edgedd.device import bundle, predict

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path = ROOT / "docs" / "API.md") -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_readme_shows_the_tested_example():
    """The README's Python API blocks are docs/API.md's, the ones the next test runs."""
    readme, docs = python_blocks(ROOT / "README.md"), python_blocks()
    assert any(readme[i : i + 2] == docs for i in range(len(readme) - 1))


@pytest.mark.slow
def test_api_md_example_runs_as_written(image_folder, tmp_path, monkeypatch):
    settings, example = python_blocks()
    assert len(example.strip().splitlines()) <= 10
    data = image_folder  # conftest.make_image_folder: 3 classes x 6 images
    image = sorted((data / "square").iterdir())[0]
    monkeypatch.chdir(tmp_path)
    tiny = {"DATA": str(data), "BACKBONE": "test_vit", "WEIGHTS": "random", "RES": 32, "STEPS": 5, "IMAGE": str(image)}
    documented: dict = {}
    exec(settings, documented)  # noqa: S102 - plain assignments
    assert {k for k in documented if not k.startswith("__")} == set(tiny)  # the test replaces exactly the settings
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "docs/API.md", "exec"), dict(tiny))  # noqa: S102 - the documented code, verbatim
    lines = out.getvalue().splitlines()
    assert lines[0] == str(["circle", "square", "stripes"]) and len(lines) == 4
    assert all(re.fullmatch(r"(circle|square|stripes): \d\.\d\d", line) for line in lines[1:]), lines
    assert (tmp_path / "runs" / "api" / "synthetic.safetensors").is_file()
    assert (tmp_path / "bundles" / "api" / "edgedd.artifact.safetensors").is_file()


def test_package_exports():
    assert sorted(edgedd.__all__) == sorted(
        [
            "Bundle",
            "DistillConfig",
            "EvalConfig",
            "PackConfig",
            "RunOptions",
            "StageIConfig",
            "__version__",
            "distill",
            "evaluate",
            "pack",
        ]
    )
    for name in edgedd.__all__:
        assert getattr(edgedd, name) is not None and name in dir(edgedd)
    from edgedd.distillation.pipeline import RunOptions, distill
    from edgedd.evaluation.evaluate import evaluate_run
    from edgedd.export.pack import pack

    assert edgedd.RunOptions is RunOptions and edgedd.pack is pack and edgedd.Bundle is bundle.Bundle
    assert edgedd.distill is distill  # the function (its module: edgedd.distill)
    import inspect

    assert inspect.signature(edgedd.evaluate) == inspect.signature(evaluate_run)
    with pytest.raises(AttributeError):
        edgedd.no_such_name  # noqa: B018


def test_api_names_are_the_functions():
    """No module is callable: edgedd.distill and edgedd.evaluate are the functions themselves."""
    import types

    from edgedd.evaluation.evaluate import evaluate_run

    assert edgedd.evaluate is evaluate_run and not isinstance(edgedd.distill, types.ModuleType)


@pytest.fixture
def bundle_dir(packed, tmp_path) -> Path:
    b = tmp_path / "b"
    shutil.copytree(packed["bundle"], b)
    return b


def test_bundle_predicts_like_the_cli_for_every_kind_of_input(bundle_dir, packed):
    assert CliRunner().invoke(app, ["deploy-check", str(bundle_dir)]).exit_code == 0  # writes the fitted projector
    files = [sorted((packed["heldout"] / c).iterdir())[i] for c in ("circle", "square", "stripes") for i in (0, 3)]
    b = edgedd.Bundle.open(bundle_dir)
    assert b.projector is not None and b.classes == ["circle", "square", "stripes"]
    cli = predict.predict(bundle_dir, [str(f) for f in files], topk=3)
    want = [[(t["label"], t["prob"]) for t in item["top"]] for item in cli]
    assert b.predict([str(f) for f in files], top_k=3) == want
    assert b.predict(files, top_k=3) == want  # pathlib paths
    for f in files:  # the same preprocessing, bit for bit, whatever the input's kind (and so the same answer)
        x = b.inputs(str(f))
        with Image.open(f) as img:
            img.load()  # any mode as decoded: RGB, L, P, RGBA
            np.testing.assert_array_equal(b.inputs(img), x)
            assert b.predict(img, top_k=3) == b.predict(str(f), top_k=3)
            if img.mode == "RGB":
                np.testing.assert_array_equal(b.inputs(np.asarray(img)), x)
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files[:2]]
    assert b.predict(arrays, top_k=2) == b.predict([Image.fromarray(a) for a in arrays], top_k=2)
    if arrays[0].shape == arrays[1].shape:
        assert b.predict(np.stack(arrays), top_k=2) == b.predict(arrays, top_k=2)
    p = b.probabilities(files)
    assert p.shape == (len(files), 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert len(b.predict(str(files[0]), top_k=10)) == 3 and b.predict([]) == []


def test_bundle_refuses_what_is_not_an_image(bundle_dir, tmp_path):
    b = edgedd.Bundle.open(bundle_dir)
    for bad, words in (
        (np.zeros((8, 8, 3), np.float32), "not an RGB image"),
        (np.zeros((8, 8), np.uint8), "not an RGB image"),
        (42, "cannot classify a int"),
        (tmp_path / "missing.png", "does not exist"),
    ):
        with pytest.raises(EdgeddError, match=words):
            b.predict(bad)
    with pytest.raises(EdgeddError, match="top_k"):
        b.predict(np.zeros((8, 8, 3), np.uint8), top_k=0)
