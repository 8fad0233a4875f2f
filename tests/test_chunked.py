"""The memory-bounded (chunked) SFM step gives the one-pass step's pixel gradients."""

import pytest
import torch

from edgedd.backbones.forward import backbone_autocast as _autocast
from edgedd.core.config import DistillConfig
from edgedd.distillation.chunked import chunked_step
from edgedd.distillation.losses import flow
from edgedd.distillation.pyramid import Pyramid
from edgedd.distillation.stage2 import feature_loss, sfm_step_loss


@pytest.mark.parametrize(
    "method, augs, chunk", [("sfm", 1, 1), ("sfm", 1, 4), ("sfm", 3, 5), ("sfm_decouple", 2, 7), ("sfm_anchor", 2, 3)]
)
def test_chunked_gradients_equal_one_pass(tiny_backbone, method, augs, chunk):
    model, info = tiny_backbone
    c, ipc = 3, 3
    cfg = DistillConfig(method=method, ipc=ipc, augs_per_batch=augs, syn_res=32, crop_res=32)
    g = torch.Generator().manual_seed(0)
    pyr = Pyramid.init(c * ipc, 32, g)
    for _ in range(3):
        pyr.extend(g)
    centres = torch.randn(c, info.num_features, generator=g)
    f_real = flow(centres)

    def grads(fn):
        for lv in pyr.levels:
            lv.grad = None
        gen = torch.Generator().manual_seed(42)  # the same augmentation draws for both
        loss = fn(gen)
        return loss.item(), [lv.grad.clone() for lv in pyr.levels]

    def one_pass(gen):
        loss = sfm_step_loss(model, pyr.decode(), cfg, info, gen, f_real, centres)
        loss.backward()
        return loss

    def chunked(gen):
        return chunked_step(
            model,
            pyr,
            cfg,
            info,
            gen,
            lambda z: feature_loss(z, cfg, f_real, centres),
            chunk,
            _autocast(torch.device("cpu"), False),
        )

    l1, g1 = grads(one_pass)
    l2, g2 = grads(chunked)
    assert abs(l1 - l2) < 1e-6
    for a, b in zip(g1, g2, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_distill_with_chunks_matches_one_pass(image_folder, tmp_path):
    import json

    from conftest import tiny_distill_args
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    res = {}
    for chunk in ("0", "2"):
        r = CliRunner().invoke(
            app,
            tiny_distill_args(
                image_folder, tmp_path / chunk, "--ipc", "2", "--iterations", "8", "--chunk-size", chunk, "--json"
            ),
        )
        assert r.exit_code == 0, r.stderr
        res[chunk] = json.loads(r.stdout)
    assert res["2"]["chunk_size"] == 2 and res["0"]["chunk_size"] == 0
    assert abs(res["0"]["final_loss"] - res["2"]["final_loss"]) < 1e-3
