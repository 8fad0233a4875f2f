"""Stage I: the streaming pass equals a direct computation; the cache is keyed and reused."""

import os

import numpy as np
import torch

from edgedd.core.config import StageIConfig
from edgedd.core.images import load_canvas, open_dataset
from edgedd.distillation.stage1 import extract_features, stage1_cached
from edgedd.host.augment import center_crop, normalize


def test_streaming_centres_equal_direct_mean(image_folder, tiny_backbone, tmp_path):
    model, info = tiny_backbone
    src = open_dataset(image_folder)
    pp = info.preprocess
    cfg = StageIConfig(batch_size=4, golden_views=2)  # several batches, uneven last batch
    sums, counts, feats, labels, skipped = extract_features(
        model, info, src, cfg, torch.device("cpu"), tmp_path / "f.npy", num_workers=1, progress=False
    )
    assert skipped == []
    assert counts.tolist() == np.bincount(src.labels).tolist()
    # direct: decode each file, centre-crop, forward one at a time, mean per class in float64
    with torch.no_grad():
        z = torch.cat(
            [
                model(
                    normalize(
                        center_crop(
                            torch.from_numpy(np.array(load_canvas(p, pp.resize_size, pp.interpolation)))
                            .permute(2, 0, 1)[None]
                            .float()
                            / 255,
                            pp.input_size,
                        ),
                        pp.mean,
                        pp.std,
                    )
                )
                for p in src.paths
            ]
        ).double()
    direct = torch.stack([z[torch.from_numpy(src.labels == c)].mean(0) for c in range(src.num_classes)])
    torch.testing.assert_close(sums / counts[:, None], direct, rtol=1e-5, atol=1e-6)
    # the centre-crop slot of the cached features is the same thing
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(feats[:, 0])).double(), z, rtol=1e-4, atol=1e-5
    )  # float32, batch vs single
    assert feats.shape == (len(src), 3, info.num_features)


def test_stage1_cache_hit_and_miss(image_folder, tiny_backbone):
    model, info = tiny_backbone
    src = open_dataset(image_folder)
    cfg = StageIConfig(batch_size=8, golden_views=2, golden_epochs=2)
    first, cached = stage1_cached(model, info, src, cfg, torch.device("cpu"), progress=False)
    assert not cached
    again, cached = stage1_cached(model, info, src, cfg, torch.device("cpu"), progress=False)
    assert cached
    assert torch.equal(first.sums, again.sums) and torch.equal(first.weight, again.weight)
    # a changed file changes the dataset fingerprint: the cache must miss
    f = sorted((image_folder / "square").iterdir())[0]
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    _, cached = stage1_cached(model, info, open_dataset(image_folder), cfg, torch.device("cpu"), progress=False)
    assert not cached
    # and so does another Stage I config
    _, cached = stage1_cached(
        model,
        info,
        src,
        StageIConfig(batch_size=8, golden_views=2, golden_epochs=3),
        torch.device("cpu"),
        progress=False,
    )
    assert not cached


def test_golden_classifier_learns_separable_classes(image_folder, tiny_backbone):
    model, info = tiny_backbone
    src = open_dataset(image_folder)
    s1, _ = stage1_cached(
        model,
        info,
        src,
        StageIConfig(batch_size=8, golden_views=4, golden_epochs=10, golden_lr=1e-2),
        torch.device("cpu"),
        progress=False,
        use_cache=False,
    )
    assert s1.weight.shape == (3, info.num_features)
    # three colour-coded classes: far above chance (1/3) even on a random-init backbone
    assert s1.meta["golden_train_top1_centre_crop"] >= 0.8
