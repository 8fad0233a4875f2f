"""Every seeded random stream in edgedd, and random draws addressable by row.

Named streams (the rule)
------------------------
Every random stream in edgedd is named by ``(purpose string, seed[, index...])`` and made by
:func:`torch_generator` or :func:`numpy_generator`, both seeded with :func:`seed_for`; nothing
else calls ``manual_seed`` or ``np.random.default_rng`` on a seed. The one exception to naming is
the run's main generator, named by the plain seed: ``seed_for(seed) == seed``, so
``torch_generator(cfg.seed)`` is ``torch.Generator().manual_seed(cfg.seed)`` as it always was.
Any other tuple maps to the first 8 bytes of sha256(repr(parts)), little-endian, >> 1 (63 bits),
so two purposes, or two indices of one purpose, get unrelated streams, the same on any device.
Parts are plain ``str`` and ``int`` (a numpy integer has another repr: pass ``int(i)``).

    torch_generator("train", seed)                  an evaluation seed's probe views and order
    torch_generator("golden-init", seed, device=d)  the golden head's initial weights, drawn on d
    numpy_generator("golden-holdout", seed)         Stage I's held-out slice
    torch_generator("lgm-batch", seed, step)        LGM's real-image batch of one step

Two draws stay outside, documented where they are: timm's random init (``--weights random``)
reads the global torch generator, so edgedd.backbones.loader seeds it with ``torch.manual_seed(seed_for(
seed))``; and the embedded MNIST split (edgedd.core.images) is part of the data set's definition and
lives in a torch-free module the device side imports, so it keeps its fixed numpy seed.

Row-addressable draws
---------------------
A different mechanism, for long draws a rank or a chunk takes only part of (its block seeds are
splitmix64 of a base seed drawn from the run's generator, not named streams):

A whole-batch draw from one generator ties every value to the batch's size and order: a chunk of
the batch, or a rank that holds a shard of it, cannot reproduce its part without drawing all of
it first (for a 10,000-image pyramid level at 256 px that is 8 GB of noise). So a long draw is
cut into fixed blocks of ``BLOCK`` rows, and block b gets its own generator seeded by

    seed_b = splitmix64(base_seed + b)

where ``base_seed`` is one number drawn from the run's generator. Rows [start, stop) then come
from the blocks that overlap them, the same values whatever the chunk size or number of ranks;
the run's generator advances by exactly one draw per array, the same on every rank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch

BLOCK = 64
_MASK = (1 << 64) - 1


def seed_for(*parts) -> int:
    """The seed of the stream named ``parts``: a single int is itself (the run's main stream), any
    other tuple the first 8 bytes of sha256(repr(parts)), little-endian, >> 1."""
    if len(parts) == 1 and isinstance(parts[0], (int, np.integer)) and not isinstance(parts[0], bool):
        return int(parts[0])
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def torch_generator(*parts, device="cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed_for(*parts)``."""
    return torch.Generator(device=device).manual_seed(seed_for(*parts))


def numpy_generator(*parts) -> np.random.Generator:
    """A numpy generator seeded with ``seed_for(*parts)``."""
    return np.random.default_rng(seed_for(*parts))


def splitmix64(x: int) -> int:
    """A bijective 64-bit mixer (Steele et al.), so neighbouring block indices give unrelated seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) >> 1  # 63 bits: manual_seed takes any int, but keep it non-negative


def draw_seed(gen: torch.Generator) -> int:
    """One base seed from the run's generator (the same on every rank, which share its state)."""
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())


def block_generator(base_seed: int, block: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(splitmix64(base_seed + block))


def block_rows(
    base_seed: int,
    total: int,
    start: int,
    stop: int,
    device,
    draw: Callable[[int, torch.Generator], object],
    cat: Callable[[list], object],
):
    """Rows [start, stop) of a ``total``-row draw made block by block.

    ``draw(k, gen)`` draws k rows from ``gen``; ``cat(parts)`` joins sliced parts, each part being
    ``(value, lo, hi)``: rows lo..hi of the block's draw.
    """
    if not 0 <= start <= stop <= total:
        raise ValueError(f"rows [{start}, {stop}) outside [0, {total})")
    parts = []
    for b in range(start // BLOCK, -(-stop // BLOCK)):
        b0, b1 = b * BLOCK, min((b + 1) * BLOCK, total)
        value = draw(b1 - b0, block_generator(base_seed, b, device))
        parts.append((value, max(start, b0) - b0, min(stop, b1) - b0))
    return cat(parts)


def randn_rows(
    base_seed: int, total: int, start: int, stop: int, shape: tuple, device, dtype=torch.float32
) -> torch.Tensor:
    """Rows [start, stop) of a (total, *shape) standard-normal array."""
    return block_rows(
        base_seed,
        total,
        start,
        stop,
        device,
        lambda k, g: torch.randn((k, *shape), generator=g, device=device, dtype=dtype),
        lambda parts: (
            torch.cat([v[lo:hi] for v, lo, hi in parts])
            if parts
            else torch.empty((0, *shape), device=device, dtype=dtype)
        ),
    )
