"""edgedd.host.memory: a step measured inside a phase must not lose the phase's own peak."""

from pathlib import Path

import pytest
import torch

from edgedd.host.memory import PhaseMemory


def _touch(mb: int) -> torch.Tensor:
    return torch.ones(mb * 2**20 // 4)  # written, so resident (and mmapped: freed back to the OS)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (RSS high-water mark)")
def test_nested_step_keeps_the_phase_peak():
    phase = PhaseMemory(torch.device("cpu"))
    phase.start()
    if phase.before_mb is None:
        pytest.skip("cannot reset the RSS high-water mark here")
    big = _touch(256)
    del big  # the phase's peak is now behind us
    step = phase.nested()  # resets the high-water mark for the step alone
    small = _touch(64)
    inner = step.peak_mb()
    del small
    outer = phase.peak_mb()
    assert 48 <= inner["working_mb"] < 200, inner  # the step saw its own 64 MB, not the phase's 256 MB
    assert outer["working_mb"] >= 240, outer  # the phase still reports the 256 MB
    assert outer["peak_mb"] >= inner["peak_mb"]


def test_saved_tensors_counts_storages_by_stage_and_skips_excluded():
    from edgedd.host.memory import SavedTensors

    x = torch.randn(256, 256, requires_grad=True)  # 0.25 MB
    w = torch.randn(256, 256)
    for exclude, want_a in (((w,), 0.0), ((), 0.25)):
        with SavedTensors(exclude=exclude) as saved:
            saved.stage = "a"
            y = x * w  # keeps w for d/dx
            saved.stage = "b"
            z = y.sigmoid()  # keeps its output z
            z * z  # keeps z twice more: one storage, counted once
        mb = saved.mb()
        assert mb.get("a", 0.0) == pytest.approx(want_a)
        assert mb["b"] == pytest.approx(0.25)
