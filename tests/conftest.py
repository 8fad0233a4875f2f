"""Shared fixtures: a small ImageFolder made here, a random-init tiny timm ViT, an isolated cache."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The crafted-input helpers of tests/hostile/ (its test modules import them as `_crafted`). Its
# fixtures live here, not in a tests/hostile/conftest.py: two conftest modules would both be
# imported as `conftest`, and `from conftest import ...` in tests/ would then find the wrong one.
sys.path.insert(0, str(Path(__file__).with_name("hostile")))

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str):
    """A script of bench/ or examples/ (not a package) as a module, by its path under the repository."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = dict(name="test_vit", weights="random", input_size=32, resize_size=32)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDGEDD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("EDGEDD_PROGRESS", "0")
    monkeypatch.delenv("EDGEDD_TRACEBACK", raising=False)


def make_image_folder(
    root: Path, classes=("circle", "square", "stripes"), per_class: int = 6, size=(40, 30), seed: int = 0
) -> Path:
    """Per class a distinct colour and pattern, in several formats and colour modes."""
    rng = np.random.default_rng(seed)
    formats = [
        ("png", "RGB"),
        ("jpg", "RGB"),
        ("png", "L"),
        ("bmp", "RGB"),
        ("webp", "RGB"),
        ("png", "RGBA"),
        ("png", "P"),
    ]
    for ci, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = size
            base = np.zeros((h, w, 3), dtype=np.float32)
            base[..., ci % 3] = 0.8
            yy, xx = np.mgrid[0:h, 0:w]
            if ci % 3 == 0:
                base *= (((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (min(w, h) / 3) ** 2)[..., None]
            elif ci % 3 == 1:
                base *= ((abs(xx - w / 2) < w / 4) & (abs(yy - h / 2) < h / 4))[..., None]
            else:
                base *= ((xx // 4) % 2 == 0)[..., None]
            arr = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
            img = Image.fromarray((arr * 255).astype(np.uint8))
            ext, mode = formats[(ci * per_class + i) % len(formats)]
            img = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.Palette.ADAPTIVE)
            img.save(d / f"{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_backbone():
    from edgedd.backbones.loader import load_backbone

    return load_backbone(TINY["name"], TINY["weights"], input_size=TINY["input_size"], resize_size=TINY["resize_size"])


def tiny_distill_args(data, out, *extra) -> list[str]:
    return [
        "distill",
        str(data),
        "--backbone",
        "test_vit",
        "--weights",
        "random",
        "--out",
        str(out),
        "--crop-res",
        "32",
        "--syn-res",
        "32",
        "--num-workers",
        "0",
        "--golden-epochs",
        "2",
        "--golden-views",
        "2",
        "--preview-every",
        "0",
        "-q",
        *extra,
    ]


def distill_tiny(data: Path, run: Path, config, stage1_config) -> dict:
    """The library's distill on a made-up folder: the tiny random-init test_vit at 32 px on the CPU,
    no workers, no progress (the in-process twin of tiny_distill_args)."""
    from edgedd.distillation.pipeline import RunOptions, distill

    return distill(
        str(data),
        "test_vit",
        run,
        weights="random",
        config=config,
        stage1_config=stage1_config,
        options=RunOptions(device="cpu", num_workers=0, progress=False),
        crop_res=32,
        syn_res=32,
    )


@pytest.fixture(scope="session")
def packed(tmp_path_factory):
    """A distilled run on the made-up folder and its bundle (same backbone), built once."""
    from edgedd.core.config import DistillConfig, StageIConfig
    from edgedd.export.pack import PackConfig, pack

    root = tmp_path_factory.mktemp("packed")
    old = {k: os.environ.get(k) for k in ("EDGEDD_CACHE_DIR", "EDGEDD_PROGRESS")}
    os.environ.update(EDGEDD_CACHE_DIR=str(root / "cache"), EDGEDD_PROGRESS="0")
    try:
        data = make_image_folder(root / "data")
        heldout = make_image_folder(root / "heldout", seed=1)
        run = root / "run"
        distill_tiny(
            data,
            run,
            DistillConfig(ipc=2, iterations=30),
            StageIConfig(golden_views=4, golden_epochs=10, golden_lr=1e-2),
        )
        bundle = root / "bundle"
        result = pack(run, bundle, config=PackConfig(views=8, projector_epochs=100), device="cpu")
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {"data": data, "heldout": heldout, "run": run, "bundle": bundle, "result": result, "root": root}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Tiny CLI distills built once for the tests that only read them (or copy them first): a
    finished 2-step run and a run stopped after 2 of 4 steps, on a made-up folder. Tests that
    write into a run directory copy it (``copy_run``)."""
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    root = tmp_path_factory.mktemp("tiny_run")
    old = {k: os.environ.get(k) for k in ("EDGEDD_CACHE_DIR", "EDGEDD_PROGRESS")}
    os.environ.update(EDGEDD_CACHE_DIR=str(root / "cache"), EDGEDD_PROGRESS="0")
    try:
        data = make_image_folder(root / "data")
        for out, extra in (
            (root / "run", ("--iterations", "2")),
            (root / "half", ("--iterations", "4", "--stop-after", "2")),
        ):
            r = CliRunner().invoke(app, tiny_distill_args(data, out, *extra))
            assert r.exit_code == 0, r.output
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {"data": data, "run": root / "run", "half": root / "half"}


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ----------------------------------------------------------------------------- tests/hostile/


@pytest.fixture
def bundle(packed, tmp_path) -> Path:
    """A private copy of the session's packed bundle, free to damage."""
    b = tmp_path / "bundle"
    shutil.copytree(packed["bundle"], b)
    return b


_OPENED: list = []


@pytest.fixture
def opened():
    """Every path opened while a test runs (one audit hook for the whole session: hooks cannot be removed)."""
    from _crafted import OpenedPaths

    if not _OPENED:
        _OPENED.append(OpenedPaths())
    return _OPENED[0]
