"""examples/demo.py's starting-set bundle: a copy of the run whose set is its step-0 images, so the
demo packs and checks the real images the synthetic set replaces exactly as it packs the set."""

from __future__ import annotations

import torch
from conftest import load_script
from safetensors.torch import load_file


def _demo():
    return load_script("examples/demo.py")


def test_starting_set_run_is_a_run_whose_set_is_the_step0_images(packed, tmp_path):
    from edgedd.distillation.rundir import load_run

    run = packed["run"]
    before = (run / "synthetic.safetensors").read_bytes()
    start = _demo().starting_set_run(run, tmp_path / "start")
    initial = load_file(run / "initial.safetensors")
    loaded, original = load_run(start), load_run(run)
    assert torch.equal(loaded.images.float(), initial["images"].float())
    assert torch.equal(loaded.labels, initial["labels"])
    assert not torch.equal(loaded.images.float(), original.images.float())  # Stage II moved the set
    assert torch.equal(loaded.golden_weight, original.golden_weight)  # the same classifier to inherit
    assert (run / "synthetic.safetensors").read_bytes() == before  # the source run is untouched
