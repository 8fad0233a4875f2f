"""The copy ratio (edgedd.core.copyratio, edgedd.distillation.copies): near-copies of training images read as such,
images that are not copies read as far, and the streaming minima equal the brute-force ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedd.core.copyratio import NEAR_COPY, Nearest, headline, ratios, sample_references, summarise


def _brute(q, x, skip=None):
    d = np.sqrt(((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1))
    if skip is not None:
        d[np.arange(len(q)), skip] = np.inf
    return d.min(1)


def test_streaming_minima_equal_brute_force_and_skip_self():
    rng = np.random.default_rng(0)
    x = rng.random((50, 12)).astype(np.float32)
    q = rng.random((7, 12)).astype(np.float32)
    syn, ref = Nearest(q), Nearest(x[[3, 9, 40]], ids=np.array([3, 9, 40]))
    for lo in range(0, 50, 16):  # batches of 16, the last one short
        syn.update(x[lo : lo + 16], np.arange(lo, min(lo + 16, 50)))
        ref.update(x[lo : lo + 16], np.arange(lo, min(lo + 16, 50)))
    np.testing.assert_allclose(syn.distances(), _brute(q, x), rtol=1e-4, atol=1e-4)
    full = ((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(syn.arg, full.argmin(1))  # where each minimum is, in stream positions
    np.testing.assert_allclose(ref.distances(), _brute(x[[3, 9, 40]], x, skip=[3, 9, 40]), rtol=1e-4, atol=1e-4)
    assert (ref.distances() > 0).all()  # its own row was skipped


def test_references_are_seeded_bounded_and_sorted():
    a, b = sample_references(5000, seed=1), sample_references(5000, seed=1)
    assert np.array_equal(a, b) and len(a) == 1000 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, sample_references(5000, seed=2))
    assert len(sample_references(10, seed=0)) == 10


def test_degenerate_scale_gives_no_ratio():
    assert ratios(np.array([0.1]), np.array([np.inf]))[0] is None  # one real image: no nearest other
    assert ratios(np.array([0.1]), np.array([0.0, 0.0]))[0] is None  # all real images equal
    cr = summarise({"pixels": np.array([0.1])}, {"pixels": np.array([np.inf])})
    assert cr["spaces"]["pixels"]["median"] is None and "not defined" in headline(cr)


def test_summary_counts_near_copies_and_headline_says_so():
    cr = summarise(
        {"pixels": np.array([0.0, 0.1, 2.0]), "features": np.array([1.0, 1.0, 1.0])},
        {"pixels": np.array([1.0, 1.0, 1.0]), "features": np.array([0.5, 0.5])},
    )
    assert cr["spaces"]["pixels"]["below"] == 2 and cr["spaces"]["pixels"]["median"] == pytest.approx(0.1)
    assert cr["spaces"]["features"]["below"] == 0 and cr["spaces"]["features"]["median"] == pytest.approx(2.0)
    assert "2/3 images < 0.5" in headline(cr) and "2 near-copies" in headline(cr)
    assert headline(None) == "copy ratio not recorded"
    assert (
        headline({"spaces": {"pixels": {"median": "x"}}}) == "copy ratio unreadable"
    )  # crafted metadata: no traceback


def test_copies_of_training_images_read_as_copies_and_noise_does_not(image_folder, tiny_backbone):
    from edgedd.core.images import open_dataset
    from edgedd.distillation.copies import measure
    from edgedd.host.data import CanvasDataset

    model, info = tiny_backbone
    source = open_dataset(str(image_folder))
    pp = info.preprocess
    data = CanvasDataset(source, pp.resize_size, pp.interpolation)
    real = torch.from_numpy(np.stack([data[i][0] for i in range(0, len(source), 3)])).permute(0, 3, 1, 2).float() / 255
    gen = torch.Generator().manual_seed(0)
    sets = {
        "copies": real,
        "noise": torch.rand(real.shape, generator=gen),
        "shifted": torch.roll(real, shifts=(11, 13), dims=(2, 3)).flip(3),
    }
    r = measure(model, info, source, sets, seed=0, device=torch.device("cpu"), batch_size=5, amp=False, progress=False)
    for space in ("pixels", "features"):
        assert r["copies"]["spaces"][space]["max"] < NEAR_COPY and r["copies"]["spaces"][space]["below"] == len(real)
        assert r["noise"]["spaces"][space]["min"] >= 1 and r["noise"]["spaces"][space]["below"] == 0
    assert r["shifted"]["spaces"]["pixels"]["min"] >= 1  # moved and mirrored: no longer a copy pixel by pixel
    assert r["copies"]["reference_images"] == len(source)
    assert "near-copies of training images" in headline(r["copies"]) and "no near-copies" in headline(r["noise"])


def test_the_artifact_check_refuses_what_pack_must_not_ship():
    from edgedd.device.schema import copy_ratio_problem

    good = summarise(
        {"pixels": np.array([0.1, 0.2]), "features": np.array([1.0, 2.0])},
        {"pixels": np.array([1.0]), "features": np.array([1.0])},
    )
    good["spaces"] = {k: {kk: vv for kk, vv in v.items() if kk != "ratios"} for k, v in good["spaces"].items()}
    assert copy_ratio_problem(good, 2) is None
    assert "images" in copy_ratio_problem(good, 3)  # not this set's figures
    assert copy_ratio_problem([1], 2) is not None and copy_ratio_problem({"spaces": []}, 2) is not None
    bad = {**good, "spaces": {"pixels": {**good["spaces"]["pixels"], "median": -1.0}}}
    assert "median" in copy_ratio_problem(bad, 2)
