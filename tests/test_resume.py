"""Kill a real `edgedd distill` process with SIGKILL, several times, then --resume it: the final
synthetic set is bit-identical to an uninterrupted run, and no checkpoint is ever half-written.
The run starts from noise, so its pyramid grows (and Adam restarts) at the extension steps
6, 12, ..., 30; each kill lands at the first checkpoint (every 5 steps) past the previous kill, so
the resumed processes start from grown pyramids and the last one still has extensions ahead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_distill_args
from safetensors import safe_open
from safetensors.torch import load_file

from edgedd.distillation.pyramid import extension_steps

ITERATIONS, EXTEND_EVERY, SYN_RES = 60, 6, 32  # SYN_RES: tiny_distill_args' --syn-res


def _cmd(data, out, *extra):
    args = tiny_distill_args(
        data,
        out,
        "--ipc",
        "2",
        "--iterations",
        str(ITERATIONS),
        "--checkpoint-every",
        "5",
        "--seed",
        "7",
        "--init",
        "noise",
        "--extend-every",
        str(EXTEND_EVERY),
        *extra,
    )
    return [sys.executable, "-m", "edgedd", *args]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")  # same thread count in every process
    return env


def _checkpoint_step(path: Path) -> int:
    """Open and fully read the checkpoint; any partial file would fail here."""
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            f.get_tensor(k)
        return int(f.metadata()["step"])


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(image_folder, tmp_path):
    ref = tmp_path / "uninterrupted"
    uninterrupted = subprocess.Popen(
        _cmd(image_folder, ref), env=_env()
    )  # beside the killed runs: it shares nothing with them
    _wait_for(ref / "checkpoint.safetensors", uninterrupted)  # ... but Stage I's cache, written by then

    out = tmp_path / "killed"
    ckpt = out / "checkpoint.safetensors"
    steps_at_kill = []
    extra: tuple[str, ...] = ()
    for _ in range(3):
        proc = subprocess.Popen(_cmd(image_folder, out, *extra), env=_env(), stderr=subprocess.PIPE)
        last = steps_at_kill[-1] if steps_at_kill else 0
        deadline = time.monotonic() + 120
        # wait until this process has written a checkpoint past the last kill, then kill at once
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if ckpt.exists() and _checkpoint_step(ckpt) > last:
                    break
            except Exception:
                pass  # another writer's rename in flight cannot produce this; re-check below
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "summary.json").exists(), "the run finished before it could be killed"
        steps_at_kill.append(_checkpoint_step(ckpt))  # loads whole after a SIGKILL at any moment
        assert list(out.glob("checkpoint*")) == [ckpt]
        extra = ("--resume",)
    assert steps_at_kill == sorted(steps_at_kill) and steps_at_kill[-1] < ITERATIONS
    ext = extension_steps(ITERATIONS, SYN_RES, EXTEND_EVERY)
    assert ext[0] < steps_at_kill[-1] < ext[-1], (ext, steps_at_kill)  # resumed grown, and still growing after

    done = subprocess.run(
        _cmd(image_folder, out, "--resume", "--json"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert uninterrupted.wait(timeout=300) == 0
    assert summary["resumed_from_step"] == steps_at_kill[-1] > 0
    a, b = load_file(ref / "synthetic.safetensors"), load_file(out / "synthetic.safetensors")
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    assert (ref / "synthetic.safetensors").read_bytes() == (out / "synthetic.safetensors").read_bytes()
    assert not ckpt.exists() and not list(out.glob(".*.tmp"))


def test_resume_refuses_a_checkpoint_of_another_run(image_folder, tmp_path):
    """A checkpoint whose fingerprint does not match the run is refused, not silently used."""
    from edgedd.core.errors import EdgeddError
    from edgedd.distillation.checkpoint import adam, load_checkpoint, save_checkpoint
    from edgedd.distillation.pyramid import Pyramid

    g = torch.Generator().manual_seed(0)
    pyr = Pyramid.init(2, 8, g)
    save_checkpoint(
        tmp_path / "c.safetensors", step=3, pyr=pyr, opt=adam(pyr.levels, 1e-3), gen=g, run_fp="run-a", loss=0.5
    )
    with pytest.raises(EdgeddError, match="belongs to another run"):
        load_checkpoint(
            tmp_path / "c.safetensors", run_fp="run-b", syn_res=8, lr=1e-3, gen=torch.Generator(), device="cpu"
        )
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(EdgeddError, match="unreadable"):
        load_checkpoint(
            tmp_path / "bad.safetensors", run_fp="run-a", syn_res=8, lr=1e-3, gen=torch.Generator(), device="cpu"
        )
