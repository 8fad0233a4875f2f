"""Stage II's checkpoint (``rundir.CHECKPOINT`` in a run directory): the pyramid, Adam's state,
the generator all randomness comes from and the step, so that a resumed run ends bit-identical to
an uninterrupted one, with any number of ranks."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from edgedd.core import atomic
from edgedd.core.errors import EdgeddError
from edgedd.core.stio import torch_serialize as save
from edgedd.host.distributed import SINGLE, Dist

from .pyramid import Pyramid, level_resolutions
from .rundir import RUN_FORMAT


def adam(levels, lr):
    # foreach=False: the plain per-tensor path, the same arithmetic on every device and resume.
    return torch.optim.Adam(levels, lr=lr, foreach=False)


def save_checkpoint(
    path: Path,
    *,
    step: int,
    pyr: Pyramid,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    run_fp: str,
    loss: float,
    group: Dist = SINGLE,
) -> None:
    """Full tensors (every rank's rows, streamed to rank 0), written by rank 0 alone: a checkpoint
    does not know how many ranks made it, so any number can resume it."""
    tensors = {}
    for i, lv in enumerate(pyr.levels):
        tensors[f"level.{i}"] = group.rows_to_main(lv.detach(), pyr.total)
        st = opt.state.get(lv, {})
        if st:  # Adam's state is per element: sharded like the level it belongs to
            tensors[f"adam.{i}.exp_avg"] = group.rows_to_main(st["exp_avg"], pyr.total)
            tensors[f"adam.{i}.exp_avg_sq"] = group.rows_to_main(st["exp_avg_sq"], pyr.total)
            tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    if not group.main:
        return
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    tensors["rng"] = gen.get_state().cpu()  # the same on every rank: all draw the same sequence
    meta = {
        "format": str(RUN_FORMAT),
        "step": str(step),
        "run_fingerprint": run_fp,
        "levels": str(len(pyr.levels)),
        "loss": repr(loss),
        "ranks": str(group.world),
    }
    atomic.write_bytes(path, save(tensors, metadata=meta))


def _checkpoint_problem(meta: dict, tensors: dict, syn_res: int, total: int | None, gen: torch.Generator) -> str | None:
    """What is wrong with a checkpoint of the right run, or None: what save_checkpoint writes, in
    names, dtypes, shapes and finite values, so load_checkpoint can use it without another check."""
    try:
        step, n_levels, _ = int(meta["step"]), int(meta["levels"]), float(meta["loss"])
    except (KeyError, TypeError, ValueError):
        return "metadata step / levels / loss missing or not numbers"
    res = level_resolutions(syn_res)
    if step < 0 or not 1 <= n_levels <= len(res):
        return f"step {step} / {n_levels} levels out of range"
    rng = tensors.get("rng")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != gen.get_state().shape:
        return "rng state missing, or from another kind of device"
    level0 = tensors.get("level.0")
    rows = total if total is not None else (level0.shape[0] if level0 is not None and level0.dim() else -1)
    adam = "adam.0.step" in tensors
    for i in range(n_levels):
        want = {f"level.{i}": (rows, 3, res[i], res[i])}
        if adam:
            want |= {
                f"adam.{i}.exp_avg": want[f"level.{i}"],
                f"adam.{i}.exp_avg_sq": want[f"level.{i}"],
                f"adam.{i}.step": (1,),
            }
        for k, shape in want.items():
            t = tensors.get(k)
            if t is None or t.dtype != torch.float32 or tuple(t.shape) != shape:
                return f"{k} missing or not float32 {shape}"
    for k, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            return f"non-finite values in {k}"
    return None


def load_checkpoint(
    path: Path,
    *,
    run_fp: str,
    syn_res: int,
    lr: float,
    gen: torch.Generator,
    device,
    group: Dist = SINGLE,
    rows: tuple[int, int] | None = None,
    total: int | None = None,
):
    """Rank 0 reads the file; every rank gets its own rows of each tensor, re-sharded for the
    current number of ranks. Returns (step, pyramid, optimizer, loss)."""

    def read():
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise EdgeddError(
                f"checkpoint {path} is unreadable ({type(e).__name__})",
                "delete it to restart the run, or pass --overwrite",
            ) from None
        if meta.get("run_fingerprint") != run_fp:
            raise EdgeddError(f"checkpoint {path} belongs to another run", "pass --overwrite to start over")
        problem = _checkpoint_problem(meta, tensors, syn_res, total, gen)
        if problem:  # a damaged or edited checkpoint: one line, never NaN images or a traceback later
            raise EdgeddError(
                f"checkpoint {path} is damaged ({problem})", "delete it to restart the run, or pass --overwrite"
            )
        return meta, tensors

    meta, tensors = group.on_main(read) or ({}, {})
    header = json.loads(
        group.broadcast_text(
            json.dumps(
                {
                    "meta": meta,
                    "shapes": {k: list(v.shape) for k, v in tensors.items()},
                    "dtypes": {k: str(v.dtype) for k, v in tensors.items()},
                }
            )
        )
    )
    meta, shapes = header["meta"], header["shapes"]
    dtypes = {k: getattr(torch, v.removeprefix("torch.")) for k, v in header["dtypes"].items()}
    total = total if total is not None else shapes["level.0"][0]
    rows = rows or (0, total)

    def rows_of(key):
        return group.rows_from_main(tensors.get(key), total, tuple(shapes[key][1:]), dtypes[key], device)

    n_levels = int(meta["levels"])
    pyr = Pyramid([rows_of(f"level.{i}") for i in range(n_levels)], syn_res, rows, total)
    opt = adam(pyr.levels, lr)
    if "adam.0.step" in shapes:
        opt.load_state_dict(
            {
                "state": {
                    i: {
                        "step": torch.tensor(float(tensors[f"adam.{i}.step"].item()) if group.main else 0.0),
                        "exp_avg": rows_of(f"adam.{i}.exp_avg"),
                        "exp_avg_sq": rows_of(f"adam.{i}.exp_avg_sq"),
                    }
                    for i in range(n_levels)
                },
                "param_groups": opt.state_dict()["param_groups"],
            }
        )
        for st in opt.state.values():  # the step count is rank 0's (the same for every level)
            group.broadcast_(st["step"])
    state = tensors["rng"] if group.main else gen.get_state()
    gen.set_state(group.broadcast_(state.clone()).cpu() if group.enabled else state)
    return int(meta["step"]), pyr, opt, float(meta["loss"])
