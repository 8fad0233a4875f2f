"""sfm_sub's per-image target on the step's own views (``sub_target="views"``, stage2.PairedTargets):
the clusters it draws from, the same view applied to the real member as to the synthetic image,
the draw fixed by the step's seed, and a tiny end-to-end distill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedd.core.config import AugmentConfig, DistillConfig
from edgedd.core.images import open_dataset
from edgedd.distillation.stage2 import PairedTargets, cluster_members
from edgedd.distillation.trainingset import TrainingFeatures
from edgedd.host.augment import StepDraws, apply_augment, normalize
from edgedd.host.data import CanvasDataset


def _features():
    """Two classes of 2-D features: class 0 in two tight groups, class 1 in one (so one cell empty)."""
    f = np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5], [9, 9], [9.1, 9], [9, 9.1]], dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    pos = np.array([2, 3, 5, 7, 8, 11, 12])  # dataset positions (unreadable ones skipped)
    return TrainingFeatures(pos=pos, labels=labels, feats=f)


def test_members_are_the_voronoi_cells_of_each_class_and_none_is_empty():
    sub = np.array([[0.05, 0], [5.05, 5], [9, 9], [100, 100]], dtype=np.float32)  # class-major, ipc 2
    members = cluster_members(_features(), sub, num_classes=2, ipc=2)
    assert [m.tolist() for m in members[:2]] == [[2, 3], [5, 7]]
    assert members[2].tolist() == [8, 11, 12]  # every class-1 image is nearer (9, 9) than (100, 100)
    # the far sub-centre's cell is empty: it takes the one image nearest it, never another class's
    assert len(members[3]) == 1 and members[3][0] in (8, 11, 12)


@pytest.fixture()
def folder_source(image_folder):
    return open_dataset(str(image_folder))


def _cfg(**kw):
    aug = AugmentConfig(crop_scale=(0.25, 1.0), noise_p=0.0, centre_p=0.5)
    return DistillConfig(ipc=2, syn_res=32, crop_res=32, amp=False, sub_target="views", augment=aug, **kw)


def _views_of(model, info, canvases, draws, cfg):
    with torch.no_grad():
        x = apply_augment(canvases, draws.params(0, len(canvases)), cfg.crop_res)
        return model(normalize(x, info.preprocess.mean, info.preprocess.std)).float()


def test_each_image_target_is_the_same_view_of_its_member(tiny_backbone, folder_source):
    """With one member per cluster, a synthetic set that is those members reads its targets exactly on
    every view (crops and flips included): the per-image term is 0 where the centre target is not."""
    model, info = tiny_backbone
    cfg = _cfg()
    pos = [0, 4, 7, 13]
    members = [np.array([p]) for p in pos]
    data = CanvasDataset(folder_source, cfg.syn_res, info.preprocess.interpolation)
    canvases = torch.from_numpy(np.stack([data[p][0] for p in pos])).permute(0, 3, 1, 2).float().div(255)
    paired = PairedTargets(model, info, cfg, folder_source, members, chunk=3)  # chunks of 3: 2 passes
    draws = StepDraws.draw(torch.Generator().manual_seed(5), len(pos), cfg.augment, cfg.crop_res, canvas=32)
    same = _views_of(model, info, canvases, draws, cfg)
    torch.testing.assert_close(paired(draws), same, rtol=1e-5, atol=1e-5)
    # another step's views of the same images give other features: the targets do follow the views
    other = StepDraws.draw(torch.Generator().manual_seed(6), len(pos), cfg.augment, cfg.crop_res, canvas=32)
    assert (paired(other) - same).abs().max() > 1e-3


def test_the_draw_is_fixed_by_the_step_seed_and_averages_members(tiny_backbone, folder_source):
    model, info = tiny_backbone
    members = [np.array([0, 1, 2, 3, 4, 5]), np.array([6, 7, 8, 9, 10, 11])]
    draws = StepDraws.draw(torch.Generator().manual_seed(1), 2, _cfg().augment, 32, canvas=32)
    one = PairedTargets(model, info, _cfg(), folder_source, members, chunk=0)
    torch.testing.assert_close(one(draws), one(draws))  # a resumed step draws the same members
    # another step seed draws other members for at least one image (6 members each, 8 seeds)
    seeds = [StepDraws.draw(torch.Generator().manual_seed(s), 2, _cfg().augment, 32, canvas=32) for s in range(8)]
    outs = [one(d) for d in seeds]
    assert any((o - outs[0]).abs().max() > 1e-3 for o in outs[1:])
    # the chunk size changes how many canvases are held, not which members are drawn
    torch.testing.assert_close(PairedTargets(model, info, _cfg(), folder_source, members, chunk=1)(draws), one(draws))
    # m members are averaged, not summed: singleton clusters read the same at m = 4 as at m = 1
    single = [m[:1] for m in members]
    torch.testing.assert_close(
        PairedTargets(model, info, _cfg(sub_members=4), folder_source, single, chunk=0)(draws),
        PairedTargets(model, info, _cfg(), folder_source, single, chunk=0)(draws),
    )


def test_views_target_runs_end_to_end_and_is_recorded(image_folder, tmp_path):
    from conftest import tiny_distill_args
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    r = CliRunner().invoke(
        app,
        tiny_distill_args(
            image_folder,
            tmp_path / "r",
            "--iterations",
            "3",
            "--ipc",
            "2",
            "--init",
            "coreset",
            "--sub-target",
            "views",
            "--sub-members",
            "2",
            "--json",
        ),
    )
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["config"]["sub_target"] == "views" and s["config"]["sub_members"] == 2
    assert np.isfinite(s["final_loss"])
