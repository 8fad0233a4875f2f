"""edgedd.memory: a step measured inside a phase must not lose the phase's own peak."""

from pathlib import Path

import pytest
import torch

from edgedd.memory import PhaseMemory


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
