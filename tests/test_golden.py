"""Golden tensors: absolute outputs pinned in small files under tests/fixtures/golden/.

Every other numeric test compares two edgedd paths with each other (chunked vs one pass, two
ranks vs one, resumed vs uninterrupted), so a change that moves both sides passes them. These
compare against stored values instead, the way timm pins its models' outputs:

    views.safetensors      edgedd.host.rng block draws and the view sampler across the 64-row block boundary
    pyramid.safetensors    Pyramid.init / extend / grow / decode / from_images from fixed seeds
    losses.safetensors     flow, sfm_loss (both denominators), anchor_loss, decouple_loss and their
                           gradients, on stored feature tensors (inputs stored beside the outputs)
    distill.safetensors    5 steps of a tiny distill (test_vit, noise init, sfm_anchor): the Stage I
                           centres, the per-step losses and the synthetic images
    test_vit_32.safetensors  the tiny backbone's weights (float16) that distill run loads through
                           --weights FILE, so a change of timm's random init does not move it (an input:
                           written only when missing, never by the update switch)
    v1_0/                  a genuine format-1.0 artifact and the run directory it was packed from,
                           made by edgedd at c5e085a (the parent of 5e7a254, which introduced format
                           1.1); today's readers must open them (:func:`make_v1_0` says how they were made)

Regenerate (after reviewing why they moved) with ``EDGEDD_UPDATE_SNAPSHOTS=1``, the switch of
tests/test_cli.py's --help snapshots. A missing file is written (with a warning) on a developer's
machine; under CI (env ``CI`` set) a missing file fails, and so does the update switch: CI checks
goldens, it never writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
UPDATE = "EDGEDD_UPDATE_SNAPSHOTS"
WEIGHTS = GOLDEN / "test_vit_32.safetensors"
V1_0 = GOLDEN / "v1_0"
HOW = f"if the change is intended, rerun with {UPDATE}=1 and review the diff of tests/fixtures/golden/"


# ----------------------------------------------------------------------------- the golden store


def golden(name: str, make: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The stored tensors of ``GOLDEN/<name>.safetensors``; ``make()`` (re)writes them only under
    the update switch, or when the file is missing outside CI."""
    path = GOLDEN / f"{name}.safetensors"
    ci, update = os.environ.get("CI"), os.environ.get(UPDATE)
    if ci and update:
        pytest.fail(
            f"{UPDATE} is set under CI: goldens are regenerated on a developer's machine and committed, never in CI"
        )
    if update or not path.exists():
        if ci:
            pytest.fail(f"golden {path} is missing; generate it locally with {UPDATE}=1 and commit it")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in make().items()}, path)
        if not update:
            warnings.warn(f"wrote missing golden {path}: review and commit it", stacklevel=2)
    return load_file(path)


def assert_golden(
    name: str,
    actual: dict[str, torch.Tensor],
    stored: dict[str, torch.Tensor],
    atol: float,
    rtol: float = 0.0,
    keys: list[str] | None = None,
) -> None:
    """``actual`` equals the stored tensors (those named in ``keys``, default all) within atol + rtol * |stored|."""
    keys = sorted(stored) if keys is None else keys
    assert sorted(actual) == sorted(keys), f"golden {name}: tensors {sorted(actual)} != stored {sorted(keys)}"
    for k in keys:
        a, e = actual[k].detach().cpu(), stored[k]
        assert a.dtype == e.dtype and a.shape == e.shape, (
            f"golden {name}[{k}]: {a.dtype} {tuple(a.shape)} != stored {e.dtype} {tuple(e.shape)}"
        )
        if e.is_floating_point():
            torch.testing.assert_close(
                a, e, atol=atol, rtol=rtol, msg=lambda m, k=k: f"golden {name}[{k}] moved: {m}\n{HOW}"
            )
        else:
            assert torch.equal(a, e), (
                f"golden {name}[{k}] moved: {int((a != e).sum())} of {e.numel()} values differ\n{HOW}"
            )


# ----------------------------------------------------------------------------- 1. draws across the block boundary


def make_views() -> dict[str, torch.Tensor]:
    from edgedd.core.config import AugmentConfig
    from edgedd.host.augment import StepDraws, sample_views
    from edgedd.host.rng import BLOCK, draw_seed, randn_rows, splitmix64

    assert BLOCK == 64  # what the rows below straddle
    out: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(1234)
    seed = draw_seed(gen)
    out["base_seed"] = torch.tensor([seed], dtype=torch.int64)
    out["splitmix64"] = torch.tensor([splitmix64(seed + b) for b in range(3)], dtype=torch.int64)
    out["randn_rows_60_70"] = randn_rows(seed, 130, 60, 70, (3,), "cpu")  # blocks 0 and 1
    out["randn_rows_0_130"] = randn_rows(seed, 130, 0, 130, (2,), "cpu")  # blocks 0, 1 and the short block 2
    for sampler in ("torchvision", "reference"):
        v = sample_views(130, AugmentConfig(crop_sampler=sampler), torch.Generator().manual_seed(7))
        out[f"sample_views_{sampler}.boxes"], out[f"sample_views_{sampler}.flips"] = v.boxes, v.flips
    draws = StepDraws.draw(torch.Generator().manual_seed(11), 130, AugmentConfig(), 8)
    p = draws.params(60, 70)
    out["step_draws_60_70.boxes"], out["step_draws_60_70.flips"], out["step_draws_60_70.noise"] = (
        p.views.boxes,
        p.views.flips,
        p.noise,
    )
    return out


def test_golden_view_draws():
    stored = golden("views", make_views)
    actual = make_views()
    # integers (seeds, flips) exactly; float draws to 1e-6: any changed draw moves them by O(0.1)
    assert_golden("views", actual, stored, atol=1e-6, rtol=1e-6)
    # and rows 60..70 are what the whole draw holds there (the relative property the golden anchors)
    from edgedd.host.rng import randn_rows

    whole = randn_rows(int(stored["base_seed"]), 130, 0, 130, (3,), "cpu")
    assert torch.equal(whole[60:70], actual["randn_rows_60_70"])


# ----------------------------------------------------------------------------- 2. pyramid


def make_pyramid() -> dict[str, torch.Tensor]:
    from edgedd.distillation.pyramid import Pyramid, extension_steps

    out: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(5)
    pyr = Pyramid.init(2, 24, gen)  # 24: the last level is not a power of two (1, 2, 4, 8, 16, 24)
    out["init.level0"] = pyr.levels[0]
    out["init.decoded_corner"] = pyr.decode()[:, :, :2, :2]  # a 1x1 level decodes to one colour per image
    pyr.extend(gen)
    out["extend1.level0"], out["extend1.level1"] = pyr.levels
    out["extend1.decoded_corner"] = pyr.decode()[:, :, :4, :4]
    pyr.grow(10**6, extension_steps(100, 24), gen)  # all the rest
    for i, lv in enumerate(pyr.levels):
        out[f"full.level{i}"] = lv
    out["full.decoded"] = pyr.decode()
    img = torch.linspace(0, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8).flip(-1)
    real = Pyramid.from_images(img)
    out["from_images.top"] = real.levels[-1]
    out["from_images.decoded"] = real.decode()
    return {k: v.detach() for k, v in out.items()}


def test_golden_pyramid():
    stored = golden("pyramid", make_pyramid)
    assert_golden("pyramid", make_pyramid(), stored, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- 3. losses


def _loss_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    c, ipc, d = 3, 2, 5
    return {
        "in.z": torch.randn(c * ipc, d, generator=g, dtype=torch.float64),
        "in.centres_real": torch.randn(c, d, generator=g, dtype=torch.float64) + 0.5,
    }


def loss_outputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from edgedd.distillation.losses import anchor_loss, centre_separation, decouple_loss, flow, sfm_loss, synthetic_flow

    z0, mu = inputs["in.z"], inputs["in.centres_real"]
    out = {
        "flow_real": flow(mu),
        "flow_syn": synthetic_flow(z0, 3),
        "flow_syn_reference": synthetic_flow(z0, 3, "reference"),
        "centre_separation": centre_separation(mu),
    }
    f_real = out["flow_real"]
    for name, fn in {
        "sfm": lambda z: sfm_loss(z, f_real),
        "sfm_reference": lambda z: sfm_loss(z, f_real, "reference"),
        "anchor_beta10": lambda z: anchor_loss(z, f_real, mu, 10.0),
        "decouple_alpha03": lambda z: decouple_loss(z, mu, 0.3),
    }.items():
        z = z0.clone().requires_grad_(True)
        loss = fn(z)
        loss.backward()
        out[name], out[f"{name}.grad"] = loss.detach(), z.grad
    z32 = z0.float().requires_grad_(True)  # the float32 path distill takes
    out["sfm_float32"] = sfm_loss(z32, f_real.float()).detach()
    return out


def make_losses() -> dict[str, torch.Tensor]:
    inputs = _loss_inputs()
    return {**inputs, **{f"out.{k}": v for k, v in loss_outputs(inputs).items()}}


def test_golden_losses():
    stored = golden("losses", make_losses)
    inputs = {k: v for k, v in stored.items() if k.startswith("in.")}
    actual = {f"out.{k}": v for k, v in loss_outputs(inputs).items()}
    # float64 inputs: the outputs agree to rounding; float32 to its own
    assert_golden(
        "losses", {"out.sfm_float32": actual.pop("out.sfm_float32")}, stored, atol=1e-6, keys=["out.sfm_float32"]
    )
    assert_golden(
        "losses",
        actual,
        stored,
        atol=1e-10,
        rtol=1e-9,
        keys=[k for k in sorted(stored) if k.startswith("out.") and "float32" not in k],
    )


# ----------------------------------------------------------------------------- 4. five distill steps


def make_png_folder(root: Path) -> Path:
    """3 classes x 4 lossless 32 x 32 PNGs (no resize on load: the canvas is the file's pixels)."""
    from PIL import Image

    rng = np.random.RandomState(0)  # the legacy generator: its stream is frozen across numpy versions
    yy, xx = np.mgrid[0:32, 0:32]
    masks = [((xx - 16) ** 2 + (yy - 16) ** 2) < 100, (abs(xx - 16) < 8) & (abs(yy - 16) < 8), (xx // 4) % 2 == 0]
    for ci, name in enumerate(("circle", "square", "stripes")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            base = np.zeros((32, 32, 3))
            base[..., ci] = 0.8
            arr = np.clip(base * masks[ci][..., None] + rng.normal(0, 0.05, base.shape), 0, 1)
            Image.fromarray((arr * 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def tiny_weights() -> Path:
    """The stored test_vit weights (an input, so never rewritten by the update switch)."""
    if not WEIGHTS.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{WEIGHTS} is missing; it is made once on a developer's machine and committed, never under CI")
        from edgedd.backbones.loader import load_backbone

        model, _ = load_backbone("test_vit", "random", input_size=32, resize_size=32, seed=0)
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, WEIGHTS)
        warnings.warn(f"wrote missing backbone weights {WEIGHTS}: review and commit them", stacklevel=2)
    return WEIGHTS


def run_tiny_distill(root: Path) -> Path:
    from edgedd.core.config import DistillConfig, StageIConfig
    from edgedd.distillation.pipeline import RunOptions, distill

    data = make_png_folder(root / "data")
    out = root / "run"
    distill(
        str(data),
        "test_vit",
        out,
        weights=str(tiny_weights()),
        # the anchored loss these tensors were pinned with (sfm_sub_probe is the default since; its targets are
        # k-means on the same features); noise init: the 5 steps grow the pyramid 1 -> 32 px
        config=DistillConfig(method="sfm_anchor", ipc=1, iterations=5, init="noise"),
        stage1_config=StageIConfig(golden_views=2),
        options=RunOptions(
            device="cpu", num_workers=0, progress=False, preview_every=0, checkpoint_every=0, use_cache=False
        ),
        crop_res=32,
        syn_res=32,
    )
    return out


def distill_outputs(out: Path) -> dict[str, torch.Tensor]:
    syn, stats = load_file(out / "synthetic.safetensors"), load_file(out / "stats.safetensors")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "images": syn["images"],
        "labels": syn["labels"],
        "centres": stats["centres"].float(),
        "loss": torch.tensor([r["loss"] for r in rows], dtype=torch.float64),
        "resolution": torch.tensor([r["resolution"] for r in rows], dtype=torch.int64),
    }


def test_golden_tiny_distill(tmp_path):
    actual = distill_outputs(run_tiny_distill(tmp_path))
    stored = golden("distill", lambda: actual)
    # CPU float32 differs across machines in the last bits; a changed draw, loss or update moves
    # the images by far more than 1e-4 (5 Adam steps at lr 2e-3 on logits in the sigmoid's slope)
    assert_golden("distill", {"images": actual["images"]}, stored, atol=1e-4, keys=["images"])
    assert_golden("distill", {"centres": actual["centres"]}, stored, atol=1e-4, rtol=1e-4, keys=["centres"])
    # the losses (~75-165, float32: one ulp is 8e-6-1.5e-5) to 1e-5 relative
    assert_golden("distill", {"loss": actual["loss"]}, stored, atol=0, rtol=1e-5, keys=["loss"])
    assert_golden(
        "distill", {k: actual[k] for k in ("labels", "resolution")}, stored, atol=0, keys=["labels", "resolution"]
    )


# ----------------------------------------------------------------------------- 5. stio vs the safetensors library


STIO_CASES = {
    "float32_2d": {"a": np.arange(6, dtype=np.float32).reshape(2, 3) / 7},
    "float64_one": {"s": np.array([3.25])},
    "float16_and_int64": {"b": np.arange(3, dtype=np.int64) - 1, "w": np.linspace(-1, 1, 5).astype(np.float16)},
    "int8_int16_int32_odd": {
        "x": np.arange(-3, 4, dtype=np.int32),
        "y": np.arange(5, dtype=np.int16),
        "z": np.arange(7, dtype=np.int8),
    },
    "uint8_images": {"images": np.arange(2 * 3 * 5 * 5, dtype=np.uint8).reshape(2, 3, 5, 5)},
    "bool_and_empty_same_dtype": {"m": np.array([True, False, True])},
    "empty_float32": {"e": np.zeros((0, 4), np.float32), "f": np.ones((1, 4), np.float32)},
}


STIO_CASES["float64_scalar"] = {"s": np.array(3.25)}  # a 0-d array keeps its shape [] (it was once written as [1])


@pytest.mark.parametrize("case", sorted(STIO_CASES))
def test_stio_bytes_equal_the_safetensors_library(case):
    """Without metadata edgedd's writer makes the library's very bytes (name order equals the
    library's order here: it sorts by dtype alignment first, see test_stio_order_differs...)."""
    from safetensors.numpy import save

    from edgedd.core.stio import serialize

    tensors = STIO_CASES[case]
    assert serialize(tensors) == save(tensors)


def test_stio_order_differs_from_the_library_for_mixed_alignment():
    """Pinned divergence: the library writes larger-alignment dtypes first, edgedd strictly by name.
    Both files hold the same tensors and the library reads edgedd's."""
    from safetensors.numpy import load, save

    from edgedd.core.stio import serialize

    tensors = {"a": np.arange(3, dtype=np.uint8), "b": np.arange(3, dtype=np.float64)}
    ours = serialize(tensors)
    assert ours != save(tensors)
    assert ours[8:].startswith(b'{"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":')
    back = load(ours)
    assert sorted(back) == ["a", "b"] and all(np.array_equal(back[k], tensors[k]) for k in tensors)


# ----------------------------------------------------------------------------- 6. a format-1.0 artifact and run


def test_format_1_0_artifact_opens_today():
    from edgedd.device import artifact

    expected = json.loads((V1_0 / "expected.json").read_text())
    path = V1_0 / "edgedd.artifact.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected["file_sha256"], (
        "the stored 1.0 artifact itself changed"
    )
    a = artifact.read(path)  # verified and schema-validated by today's reader
    assert a.meta["format"] == "1.0" and artifact.FORMAT != "1.0"
    assert a.file_sha256 == expected["file_sha256"]
    assert a.meta["class_names"] == expected["class_names"]
    assert {k: list(v.shape) for k, v in a.tensors.items()} == expected["shapes"]
    assert {k: str(v.dtype) for k, v in a.tensors.items()} == expected["dtypes"]
    assert a.meta["edge"]["backbone"]["name"] == a.meta["distill"]["backbone"]["name"] == "test_vit"
    assert "golden_heldout_top1" not in a.meta.get("reference", {})  # what 1.1 added is absent, and that is fine
    assert a["synthetic.labels"].tolist() == expected["labels"]
    for k, v in expected["sums"].items():  # the tensors' values, not just their shapes
        assert float(np.asarray(a[k], np.float64).sum()) == pytest.approx(v, rel=1e-6, abs=1e-6), k


def test_format_1_0_run_directory_loads_today():
    from edgedd.device import artifact
    from edgedd.distillation.rundir import load_run

    expected = json.loads((V1_0 / "expected.json").read_text())
    run = load_run(V1_0 / "run")
    assert run.class_names == expected["class_names"] and run.ipc == expected["ipc"]
    assert run.labels.tolist() == expected["labels"]
    assert tuple(run.images.shape) == tuple(expected["shapes"]["synthetic.images"])
    assert run.backbone["name"] == "test_vit" and run.preprocess.input_size == 32
    assert run.summary["finished"] is True and run.stage1 != {}
    # the artifact was packed from this run: its images, labels and golden classifier are the run's
    a = artifact.read(V1_0 / "edgedd.artifact.safetensors")
    assert np.array_equal(a["synthetic.labels"], run.labels.numpy())
    assert (
        np.abs(a["synthetic.images"].astype(np.int16) - np.round(run.images.numpy() * 255).astype(np.int16)).max() <= 1
    )
    np.testing.assert_array_equal(a["classifier.weight"], run.golden_weight.numpy())
    np.testing.assert_array_equal(a["classifier.bias"], run.golden_bias.numpy())


def make_v1_0(old_checkout: Path, python: str = sys.executable) -> None:
    """How v1_0/ was made (run by hand; never by the tests: today's edgedd cannot write format 1.0).

        git worktree add --detach /tmp/edgedd-v10 5e7a254^     # c5e085a: the last commit at format 1.0
        # in tests/:
        python -c 'from pathlib import Path; import test_golden as t; t.make_v1_0(Path("/tmp/edgedd-v10"))'
        git worktree remove /tmp/edgedd-v10

    Distills 1 image per class of :func:`make_png_folder` with the stored test_vit weights and
    packs them with that commit's code; keeps the artifact (the ONNX graphs are ~1.2 MB of the
    backbone and are left out) and the run files ``load_run`` reads.
    """
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "edgedd-v10-make"
    shutil.rmtree(work, ignore_errors=True)
    data = make_png_folder(work / "data")
    script = f"""
import os, json
os.environ["EDGEDD_CACHE_DIR"] = {str(work / "cache")!r}; os.environ["EDGEDD_PROGRESS"] = "0"
from edgedd.core.config import DistillConfig, StageIConfig
from edgedd.distillation.pipeline import RunOptions, distill
from edgedd.device import artifact
from export.pack import PackConfig, pack
assert artifact.FORMAT == "1.0", artifact.FORMAT
distill({str(data)!r}, "test_vit", {str(work / "run")!r}, weights={str(WEIGHTS)!r}, \
config=DistillConfig(ipc=1, iterations=10),
        stage1_config=StageIConfig(golden_views=2), \
options=RunOptions(device="cpu", num_workers=0, progress=False, preview_every=0),
        crop_res=32, syn_res=32)
pack({str(work / "run")!r}, {str(work / "bundle")!r}, config=PackConfig(views=4, selftest_images=2), device="cpu")
"""
    subprocess.run(
        [python, "-c", script], check=True, cwd=old_checkout, env={**os.environ, "PYTHONPATH": str(old_checkout)}
    )
    shutil.rmtree(V1_0, ignore_errors=True)
    (V1_0 / "run").mkdir(parents=True)
    for f in (
        "synthetic.safetensors",
        "synthetic.json",
        "golden_classifier.safetensors",
        "stats.safetensors",
        "stage1.json",
        "summary.json",
        "run.json",
    ):
        shutil.copy2(work / "run" / f, V1_0 / "run" / f)
    shutil.copy2(work / "bundle" / "edgedd.artifact.safetensors", V1_0 / "edgedd.artifact.safetensors")
    from safetensors.numpy import load

    raw = (V1_0 / "edgedd.artifact.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    tensors = load(raw)
    meta = json.loads(header["__metadata__"]["edgedd.meta"])
    expected = {
        "made_by": "edgedd c5e085a (format 1.0), tests/test_golden.py make_v1_0",
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "class_names": meta["class_names"],
        "ipc": 1,
        "labels": tensors["synthetic.labels"].tolist(),
        "shapes": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "dtypes": {k: str(v.dtype) for k, v in sorted(tensors.items())},
        "sums": {k: float(np.asarray(v, np.float64).sum()) for k, v in sorted(tensors.items())},
    }
    (V1_0 / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(work, ignore_errors=True)
