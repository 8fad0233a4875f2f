"""The coreset baselines of evaluate --baselines (edgedd.evaluation.baselines): k-centre spreads over a class,
herding tracks its mean, both pick distinct images of the right class and are reproducible."""

from __future__ import annotations

import torch

from edgedd.evaluation.baselines import select_herding, select_kcentre, select_random


def _two_clusters():
    """Class 0: a tight cluster of 20 points at the origin and one far outlier; class 1 elsewhere."""
    gen = torch.Generator().manual_seed(0)
    f0 = torch.cat([torch.randn(20, 4, generator=gen) * 0.01, torch.tensor([[10.0, 0, 0, 0]])])
    f1 = torch.randn(15, 4, generator=gen) * 0.01 + 5
    return torch.cat([f0, f1]), torch.tensor([0] * 21 + [1] * 15)


def test_kcentre_reaches_the_outlier_and_is_seeded():
    feats, labels = _two_clusters()
    pick = select_kcentre(feats, labels, 2, 2, torch.Generator().manual_seed(1))
    assert len(pick) == 4 and labels[pick].tolist() == [0, 0, 1, 1] and len(set(pick.tolist())) == 4
    assert 20 in pick[:2].tolist()  # farthest point: the outlier is one of class 0's two picks, whatever the first
    again = select_kcentre(feats, labels, 2, 2, torch.Generator().manual_seed(1))
    assert torch.equal(pick, again)
    # IPC above a class's size: all of it, each once
    every = select_kcentre(feats, labels, 2, 100, torch.Generator().manual_seed(0))
    assert sorted(every.tolist()) == list(range(36))


def test_herding_tracks_the_class_mean_better_than_random():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 8, generator=gen)
    labels = torch.zeros(200, dtype=torch.long)
    herd = select_herding(feats, labels, 1, 5)
    assert len(set(herd.tolist())) == 5
    err = lambda idx: float((feats[idx].mean(0) - feats.mean(0)).norm())  # noqa: E731
    randoms = [err(select_random(labels, 1, 5, torch.Generator().manual_seed(s))) for s in range(20)]
    assert err(herd) < min(randoms)
    assert torch.equal(herd, select_herding(feats, labels, 1, 5))  # deterministic
