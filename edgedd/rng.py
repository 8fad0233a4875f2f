"""Random draws addressable by row: any slice of a long random array, without drawing the rest.

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

from typing import Callable

import torch

BLOCK = 64
_MASK = (1 << 64) - 1


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
    base_seed: int, total: int, start: int, stop: int, device, draw: Callable[[int, torch.Generator], object], cat: Callable[[list], object]
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


def randn_rows(base_seed: int, total: int, start: int, stop: int, shape: tuple, device, dtype=torch.float32) -> torch.Tensor:
    """Rows [start, stop) of a (total, *shape) standard-normal array."""
    return block_rows(
        base_seed, total, start, stop, device,
        lambda k, g: torch.randn((k, *shape), generator=g, device=device, dtype=dtype),
        lambda parts: torch.cat([v[lo:hi] for v, lo, hi in parts]) if parts else torch.empty((0, *shape), device=device, dtype=dtype),
    )
