"""Two real processes under torchrun (gloo, CPU) give the single-process results.

Stage I: the same sums and counts (all-reduced float64; summation order differs, so to 1e-12) and
the same golden classifier (trained on rank 0 over the gathered features). Stage II: the same
synthetic images after the same steps, with the pyramid sharded over the ranks (and chunked
inside a rank), and a checkpoint written by 2 ranks resumed by 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_distill_args
from safetensors import safe_open
from safetensors.torch import load_file

# --init noise: the pyramid grows in these 6 steps, so every extension's noise rows are drawn per shard
STEPS = (
    "--ipc",
    "2",
    "--init",
    "noise",
    "--iterations",
    "6",
    "--batch-size",
    "4",
    "--no-cache",
    "--checkpoint-every",
    "0",
    "--seed",
    "3",
    "--json",
)


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    return env


def _single(data, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "edgedd", *tiny_distill_args(data, out, *STEPS, *extra)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _torchrun(data, out, *extra, ranks=2):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "edgedd",
        *tiny_distill_args(data, out, *STEPS, *extra),
    ]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _ok(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # rank 0 alone prints the summary


@pytest.mark.slow
def test_two_ranks_equal_one_process(image_folder, tmp_path):
    one = _ok(_single(image_folder, tmp_path / "one"))
    two = _ok(_torchrun(image_folder, tmp_path / "two", "--chunk-size", "2"))
    assert one["ranks"] == 1 and two["ranks"] == 2 and two["chunk_size"] == 2

    s1, s2 = load_file(tmp_path / "one" / "stats.safetensors"), load_file(tmp_path / "two" / "stats.safetensors")
    assert torch.equal(s1["counts"], s2["counts"]) and int(s1["counts"].sum()) == 18
    torch.testing.assert_close(s2["sums"], s1["sums"], rtol=1e-12, atol=1e-12)
    g1, g2 = (
        load_file(tmp_path / "one" / "golden_classifier.safetensors"),
        load_file(tmp_path / "two" / "golden_classifier.safetensors"),
    )
    torch.testing.assert_close(g2["weight"], g1["weight"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g2["bias"], g1["bias"], rtol=1e-4, atol=1e-5)

    y1, y2 = (
        load_file(tmp_path / "one" / "synthetic.safetensors"),
        load_file(tmp_path / "two" / "synthetic.safetensors"),
    )
    assert torch.equal(y1["labels"], y2["labels"])
    assert (y1["images"] - 0.5).abs().max() > 0.01  # the images moved away from grey: not a vacuous match
    torch.testing.assert_close(y2["images"], y1["images"], rtol=0, atol=1e-4)
    assert abs(one["final_loss"] - two["final_loss"]) < 1e-4


@pytest.mark.slow
def test_checkpoint_of_two_ranks_resumes_on_one(image_folder, tmp_path):
    ref = _ok(_single(image_folder, tmp_path / "ref"))
    out = tmp_path / "split"
    part = _ok(_torchrun(image_folder, out, "--stop-after", "4"))
    assert part == {**part, "finished": False, "step": 4, "ranks": 2}
    with safe_open(out / "checkpoint.safetensors", framework="pt") as f:
        assert f.metadata()["ranks"] == "2" and f.metadata()["step"] == "4"
        assert (
            f.get_tensor("level.0").shape[0] == 6 and f.get_tensor("adam.0.exp_avg").shape[0] == 6
        )  # every rank's rows
    assert not (out / "synthetic.safetensors").exists()
    done = _ok(_single(image_folder, out, "--resume"))
    assert done["resumed_from_step"] == 4 and done["ranks"] == 1
    a, b = load_file(tmp_path / "ref" / "synthetic.safetensors"), load_file(out / "synthetic.safetensors")
    torch.testing.assert_close(b["images"], a["images"], rtol=0, atol=1e-4)
    assert abs(ref["final_loss"] - done["final_loss"]) < 1e-4


@pytest.mark.slow
def test_bad_input_under_torchrun_is_one_line_once(image_folder, tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = _torchrun(image_folder, tmp_path / "a_file")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --out {tmp_path / 'a_file'} is a file. pass a directory path."]  # said once, by rank 0
