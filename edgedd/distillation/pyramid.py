"""The synthetic set: each image a multi-scale pyramid of learnable levels (METHOD.md, Stage II).

    image = sigmoid(2 * K_dec( sum_l upsample_bilinear(level_l, syn_res) ))

with levels at resolutions 1, 2, 4, ... up to ``syn_res`` and ``K_dec`` the fixed
colour-decorrelation matrix applied per pixel. Low levels carry global colour and layout, high
levels detail, so optimising all of them jointly is a well-conditioned way to make images.

Growth: start at the 1x1 level (Gaussian noise); each extension scales the old levels by
``old_count / new_count``, adds a new noise level divided by ``new_count`` and (in the caller)
resets the optimiser. The reference extends every 200 iterations; :func:`extension_steps` keeps
that but never spends more than the first half of a run growing, so a short run still reaches full
resolution.

Real initialisation (``--init real``, :meth:`Pyramid.from_images`): every level at once, the
coarse ones zero and the finest holding the image's pre-sigmoid value,

    level_top = K_dec^-1 logit(clamp(x, eps, 1 - eps)) / 2,

so ``decode`` gives back x (to the clamp) and the optimiser starts from a real image that every
backbone can read, not from noise only A's features give meaning to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgedd.host.rng import draw_seed, randn_rows

# Lucid/Olah colour-correlation square root, normalised by its largest column norm.
_COLOR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
COLOR_DECORRELATION = _COLOR_CORRELATION / _COLOR_CORRELATION.norm(dim=0).max()


def level_resolutions(syn_res: int) -> list[int]:
    """1, 2, 4, ... and finally ``syn_res`` itself (which need not be a power of two)."""
    res, out = 1, []
    while res < syn_res:
        out.append(res)
        res *= 2
    out.append(syn_res)
    return out


def extension_steps(iterations: int, syn_res: int, extend_every: int = 200) -> list[int]:
    """Step at which extension e (0-based) happens, before that step's update.

    step_e = min(extend_every * (e + 1), floor((e + 1) * iterations / (2 * n_ext)))
    Reference (5000 its, 256 px, every 200): 200, 400, ..., 1600.
    """
    n_ext = len(level_resolutions(syn_res)) - 1
    return [min(extend_every * (e + 1), ((e + 1) * iterations) // (2 * n_ext)) for e in range(n_ext)]


def decode(levels: list[torch.Tensor], syn_res: int) -> torch.Tensor:
    """Pyramid levels -> (N, 3, syn_res, syn_res) pixels in (0, 1)."""
    x = sum(
        F.interpolate(lv, size=(syn_res, syn_res), mode="bilinear", align_corners=False, antialias=False)
        if lv.shape[-1] != syn_res
        else lv
        for lv in levels
    )
    k = COLOR_DECORRELATION.to(x.device, x.dtype)
    x = torch.einsum("ij,njhw->nihw", k, x)
    return torch.sigmoid(2 * x)


class Pyramid:
    """The learnable levels of N synthetic images, coarsest first.

    A pyramid may hold only rows [lo, hi) of the N images (one rank's shard, see
    :mod:`edgedd.host.distributed`); its noise draws are addressable by row (:mod:`edgedd.host.rng`), so a
    shard holds exactly the rows of the whole pyramid grown from the same generator.
    """

    def __init__(
        self, levels: list[torch.Tensor], syn_res: int, rows: tuple[int, int] | None = None, total: int | None = None
    ):
        self.levels = [lv.detach().requires_grad_(True) for lv in levels]
        self.syn_res = syn_res
        self.rows = rows or (0, levels[0].shape[0])
        self.total = total if total is not None else self.rows[1]

    @classmethod
    def init(
        cls, n: int, syn_res: int, gen: torch.Generator, device=None, rows: tuple[int, int] | None = None
    ) -> Pyramid:
        device = device or gen.device
        lo, hi = rows or (0, n)
        first = randn_rows(draw_seed(gen), n, lo, hi, (3, 1, 1), device)
        return cls([first], syn_res, (lo, hi), n)

    @classmethod
    def from_images(
        cls, images: torch.Tensor, rows: tuple[int, int] | None = None, total: int | None = None, eps: float = 0.01
    ) -> Pyramid:
        """All levels of ``images`` (n, 3, S, S) in [0, 1]: zeros below, the inverse of ``decode`` on top.
        ``rows``/``total``: the rows of a larger set these images are (one rank's shard)."""
        syn_res = images.shape[-1]
        x = images.to(torch.float64).clamp(eps, 1 - eps)
        top = torch.einsum("ij,njhw->nihw", torch.linalg.inv(COLOR_DECORRELATION).to(x.device), torch.logit(x) / 2)
        levels = [torch.zeros(images.shape[0], 3, r, r, device=images.device) for r in level_resolutions(syn_res)[:-1]]
        return cls(levels + [top.float()], syn_res, rows, total)

    @property
    def resolutions(self) -> list[int]:
        return [lv.shape[-1] for lv in self.levels]

    @property
    def full(self) -> bool:
        return self.levels[-1].shape[-1] == self.syn_res

    def extend(self, gen: torch.Generator) -> None:
        """Add the next level: the pre-sigmoid sum is scaled by old/new and noise/new is added."""
        if self.full:
            return
        old, new = len(self.levels), len(self.levels) + 1
        res = level_resolutions(self.syn_res)[old]
        dev, dt = self.levels[0].device, self.levels[0].dtype
        noise = randn_rows(draw_seed(gen), self.total, *self.rows, (3, res, res), dev, dt)
        levels = [lv.detach() * (old / new) for lv in self.levels] + [noise / new]
        self.levels = [lv.requires_grad_(True) for lv in levels]

    def grow(self, step: int, ext_steps: list[int], gen: torch.Generator) -> bool:
        """Add every level due by ``step``; True if any was added (the caller resets Adam)."""
        due = 1 + sum(1 for s in ext_steps if s <= step)
        grew = False
        while len(self.levels) < due and not self.full:
            self.extend(gen)
            grew = True
        return grew

    def decode(self) -> torch.Tensor:
        return decode(self.levels, self.syn_res)
