"""bench/change_spectrum.py's band split: a pattern's energy lands in the band of its frequency."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_script


@pytest.fixture
def cs():
    return load_script("bench/change_spectrum.py")


@pytest.mark.parametrize(("cycles", "band"), [(2, 0), (6, 1), (10, 2), (30, 4)])
def test_a_cosine_lands_in_its_band(cs, cycles, band):
    r = 73
    wave = torch.cos(2 * math.pi * cycles * torch.arange(r) / r)
    x = wave[None, None, None, :].expand(2, 3, r, r)  # constant along rows: frequency (0, cycles)
    shares = cs.band_shares(x)
    assert shares[band] == pytest.approx(1.0, abs=1e-9)
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)
