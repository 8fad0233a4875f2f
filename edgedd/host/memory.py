"""Working memory of a phase: peak minus the level just before it.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU (Linux): the
process's resident high-water mark VmHWM, reset by writing 5 to /proc/self/clear_refs, so the
framework's fixed footprint and earlier phases (Stage I) do not hide the difference. Elsewhere:
None (not measured).
"""

from __future__ import annotations

from pathlib import Path


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """glibc keeps freed heap for reuse; a phase could then grow into it without raising RSS.
    Hand it back first (benchmarks also set MALLOC_MMAP_THRESHOLD_ so big tensors are mmapped)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# For subprocesses that measure memory: large blocks are mmapped and returned to the OS on free.
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


class PhaseMemory:
    """Working memory of one phase. A measurement nested inside it (one step of the phase, see
    :meth:`nested`) resets the same high-water mark, so the phase first keeps its peak so far."""

    def __init__(self, device):
        self.device = device
        self.before_mb: float | None = None
        self._carried_mb: float | None = None  # the phase's peak before a nested reset

    def _high_water_mb(self) -> float | None:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _status_kb("VmHWM")
        return hwm / 1024 if hwm is not None else None

    def start(self) -> None:
        import torch

        self._carried_mb = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        _release_free_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            rss = _status_kb("VmRSS")
            self.before_mb = rss / 1024 if rss is not None else None
        except OSError:
            self.before_mb = None

    def nested(self) -> PhaseMemory:
        """Start a measurement inside this phase (e.g. of one step); this phase's peak is kept."""
        if self.before_mb is not None:
            if self.device.type == "cuda":
                import torch

                torch.cuda.synchronize(self.device)
            now = self._high_water_mb()
            if now is not None:
                self._carried_mb = max(now, self._carried_mb or 0.0)
        inner = PhaseMemory(self.device)
        inner.start()
        return inner

    def peak_mb(self) -> dict:
        if self.before_mb is None:
            return {"kind": None, "before_mb": None, "peak_mb": None, "working_mb": None}
        kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_hwm"
        peak = self._high_water_mb()
        if peak is not None and self._carried_mb is not None:
            peak = max(peak, self._carried_mb)
        return {
            "kind": kind,
            "before_mb": self.before_mb,
            "peak_mb": peak,
            "working_mb": None if peak is None else max(0.0, peak - self.before_mb),
        }


class SavedTensors:
    """Bytes autograd keeps for the backward inside a ``with`` block, once per storage, grouped
    by ``stage`` (assign it while the block runs). Storages of ``exclude`` (e.g. the weights,
    which exist before the step) are not counted. Used by the memory benchmarks."""

    def __init__(self, exclude=()):
        self.stage = "all"
        self._skip = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: dict[int, tuple[str, int]] = {}
        self._hooks = None

    def _pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self._skip and ptr not in self._seen:
            self._seen[ptr] = (self.stage, t.untyped_storage().nbytes())
        return t

    def __enter__(self) -> SavedTensors:
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def mb(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, nbytes in self._seen.values():
            out[stage] = out.get(stage, 0.0) + nbytes / 2**20
        return out
