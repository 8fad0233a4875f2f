"""torch.distributed for edgedd: who this process is, and the few collectives the stages need.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); edgedd joins
the process group itself: NCCL when the run's device is CUDA, gloo on CPU. One process per GPU;
rank r uses ``cuda:LOCAL_RANK``. Without those variables (or with WORLD_SIZE=1) everything below
is a no-op on one process, so the single-process code path *is* the distributed one at W = 1.

What is sharded and what is exchanged (see docs/DISTRIBUTED.md):

* Stage I: image batches round-robin over ranks; class sums (float64) and counts all-reduced;
  the augmented-view features all-gathered batch by batch so rank 0 trains the golden
  classifier on exactly the single-process feature array.
* Stage II (SFM): pyramid rows sharded contiguously; per step the (N, D) image features are
  all-gathered (the SFM loss needs every class centre), every rank forms the same loss and
  back-propagates dL/dZ through its own rows only.
* Checkpoints and results: rows streamed to rank 0 block by block (point-to-point), so no rank
  ever holds another rank's full shard on the GPU; resume streams them back out, re-sharded for
  the current number of ranks.

No collective uses pickle: text travels as uint8 tensors.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as tdist

from edgedd.core.errors import EdgeddError

T = TypeVar("T")
SEND_BLOCK_ROWS = 256


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of rank ``rank``: contiguous, sizes differing by at most one."""
    return n * rank // world, n * (rank + 1) // world


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    comm_device: torch.device = torch.device("cpu")  # where collective tensors must live

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    # ------------------------------------------------------------------ small collectives

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def all_reduce_sum_(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            y = x.to(self.comm_device)
            tdist.all_reduce(y)
            x.copy_(y)
        return x

    def broadcast_(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.enabled:
            y = x.to(self.comm_device).contiguous()
            tdist.broadcast(y, src)
            x.copy_(y)
        return x

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self.comm_device)
        tdist.all_reduce(t)
        return bool(t.item())

    def broadcast_flag(self, flag: bool, src: int = 0) -> bool:
        """Rank ``src``'s ``flag`` (ignored elsewhere) on every rank."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([int(bool(flag)) if self.rank == src else 0], device=self.comm_device)
        tdist.broadcast(t, src)
        return bool(t.item())

    def broadcast_text(self, text: str | None, src: int = 0) -> str:
        """``text`` from rank ``src`` (ignored elsewhere) on every rank."""
        if not self.enabled:
            return text or ""
        data = (text or "").encode() if self.rank == src else b""
        n = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
        tdist.broadcast(n, src)
        buf = torch.zeros(int(n.item()), dtype=torch.uint8, device=self.comm_device)
        if self.rank == src and len(data):
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if len(buf):
            tdist.broadcast(buf, src)
        return bytes(buf.cpu().tolist()).decode()

    def all_gather_text(self, items: list[str]) -> list[str]:
        """Every rank's list of strings, concatenated in rank order, on every rank."""
        if not self.enabled:
            return list(items)
        joined = "\n".join(s.replace("\n", " ") for s in items)
        data = joined.encode()
        sizes = self.all_gather_rows(
            torch.tensor([[len(data), len(items)]], dtype=torch.int64, device=self.comm_device)
        )
        width = int(sizes[:, 0].max().item())
        buf = torch.zeros(1, max(width, 1), dtype=torch.uint8, device=self.comm_device)
        if data:
            buf[0, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.comm_device)
        every = self.all_gather_rows(buf).cpu()
        out: list[str] = []
        for r in range(self.world):
            size, count = int(sizes[r, 0]), int(sizes[r, 1])
            if count:
                out.extend(bytes(every[r, :size].tolist()).decode().split("\n"))
        return out

    def all_gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` (same trailing shape, any row count) in rank order."""
        if not self.enabled:
            return x
        rows = torch.tensor([x.shape[0]], dtype=torch.int64, device=self.comm_device)
        counts = [torch.zeros_like(rows) for _ in range(self.world)]
        tdist.all_gather(counts, rows)
        counts = [int(c.item()) for c in counts]
        top = max(counts)
        padded = torch.zeros((top, *x.shape[1:]), dtype=x.dtype, device=self.comm_device)
        padded[: x.shape[0]] = x.detach().to(self.comm_device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        tdist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(x.device)

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """Every rank's ``x`` (same trailing shape, any row count) concatenated in rank order on
        rank 0, on ``x``'s device; None on the other ranks (point to point: only rank 0 receives)."""
        if not self.enabled:
            return x
        if not self.main:
            tdist.send(torch.tensor([x.shape[0]], dtype=torch.int64, device=self.comm_device), dst=0)
            if x.shape[0]:
                tdist.send(x.detach().to(self.comm_device).contiguous(), dst=0)
            return None
        parts = [x.detach()]
        for r in range(1, self.world):
            rows = torch.empty(1, dtype=torch.int64, device=self.comm_device)
            tdist.recv(rows, src=r)
            buf = torch.empty((int(rows.item()), *x.shape[1:]), dtype=x.dtype, device=self.comm_device)
            if buf.shape[0]:
                tdist.recv(buf, src=r)
            parts.append(buf.to(x.device))
        return torch.cat(parts)

    # ------------------------------------------------------------------ rows to / from rank 0

    def rows_to_main(self, x: torch.Tensor, total: int) -> torch.Tensor | None:
        """The (total, ...) tensor whose rows are sharded as :func:`shard`, assembled on rank 0's
        CPU (None elsewhere). Streamed in blocks of SEND_BLOCK_ROWS rows."""
        if not self.enabled:
            return x.detach().cpu()
        out = torch.empty((total, *x.shape[1:]), dtype=x.dtype) if self.main else None
        for r in range(self.world):
            lo, hi = shard(total, r, self.world)
            for s in range(lo, hi, SEND_BLOCK_ROWS):
                e = min(s + SEND_BLOCK_ROWS, hi)
                if r == 0 and self.main:
                    out[s:e] = x[s - lo : e - lo].detach().cpu()
                elif self.rank == r:
                    tdist.send(x[s - lo : e - lo].detach().to(self.comm_device).contiguous(), dst=0)
                elif self.main:
                    buf = torch.empty((e - s, *x.shape[1:]), dtype=x.dtype, device=self.comm_device)
                    tdist.recv(buf, src=r)
                    out[s:e] = buf.cpu()
        return out

    def rows_from_main(
        self, full: torch.Tensor | None, total: int, shape: tuple, dtype: torch.dtype, device
    ) -> torch.Tensor:
        """This rank's rows of a (total, *shape) tensor that only rank 0 holds (on its CPU)."""
        lo, hi = shard(total, self.rank, self.world)
        if not self.enabled:
            return full[lo:hi].to(device)
        mine = torch.empty((hi - lo, *shape), dtype=dtype, device=device)
        for r in range(self.world):
            rlo, rhi = shard(total, r, self.world)
            for s in range(rlo, rhi, SEND_BLOCK_ROWS):
                e = min(s + SEND_BLOCK_ROWS, rhi)
                if r == 0 and self.main:
                    mine[s - rlo : e - rlo] = full[s:e].to(device)
                elif self.main:
                    tdist.send(full[s:e].to(self.comm_device).contiguous(), dst=r)
                elif self.rank == r:
                    buf = torch.empty((e - s, *shape), dtype=dtype, device=self.comm_device)
                    tdist.recv(buf, src=0)
                    mine[s - rlo : e - rlo] = buf.to(device)
        return mine

    # ------------------------------------------------------------------ errors

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; an EdgeddError there is raised on every rank (one message)."""
        message = ""
        result = None
        if self.main:
            try:
                result = fn()
            except EdgeddError as e:
                if not self.enabled:
                    raise
                message = f"{e.problem}\x00{e.fix or ''}"
        message = self.broadcast_text(message)
        if message:
            problem, fix = message.split("\x00", 1)
            raise on_all_ranks(EdgeddError(problem, fix or None))
        return result


SINGLE = Dist()


def on_all_ranks(err: EdgeddError) -> EdgeddError:
    """Mark an error every rank raises alike, so the CLI prints it once (rank 0), not W times."""
    err.all_ranks = True
    return err


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (if any) and return this rank's Dist and device.

    ``device`` is the run's resolved device; on CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return SINGLE, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise EdgeddError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) on this node",
                "start at most one process per GPU (torchrun --nproc-per-node <number of GPUs>)",
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise EdgeddError(
            f"distributed runs need CUDA (NCCL) or CPU (gloo) devices, not {device.type}",
            "pass --device cuda or --device cpu",
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not tdist.is_initialized():
        # Long timeout: rank 0 alone trains the golden classifier and writes files while the others wait.
        tdist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return Dist(rank, world, local, device if backend == "nccl" else torch.device("cpu")), device


def teardown(d: Dist) -> None:
    if d.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
