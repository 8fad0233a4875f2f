"""Run directories (issue 13, items 7 and 9): one distill (and one pack) per output at a time,
and a damaged run directory or checkpoint is one line for distill --resume, evaluate and pack.

Before: run A and run B (--overwrite, started 2 s later) both exited 0 and left run.json and Stage I
from B with the synthetic set and summary from A, which evaluate accepted; a damaged synthetic.json,
summary.json or safetensors file gave a traceback."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from _crafted import one_line_error
from _rundirs import distill, distill_args, rewrite, tree
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.lock import LOCK_FILE


def _hold(path):
    """Take the lock as a running edgedd would (run A), from this test process."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture
def finished(packed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(packed["run"], run)
    return run


def test_a_second_distill_on_a_locked_run_dir_fails_at_once(packed, finished, tmp_path):
    fd = _hold(finished / LOCK_FILE)
    before = tree(finished)
    try:  # run B is a real second process; with --overwrite it would have deleted A's files
        t0 = time.monotonic()
        b = subprocess.run(
            [sys.executable, "-m", "edgedd", *distill_args(packed["data"], finished, "--overwrite")],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
        )
        assert b.returncode == 1 and b.stdout == "" and "Traceback" not in b.stderr, b.stderr[-2000:]
        assert b.stderr.count("\n") == 1 and b.stderr.startswith(
            f"error: --out {finished} is in use by another edgedd process (pid {os.getpid()})"
        )
        assert time.monotonic() - t0 < 60  # at once: no model loaded, no wait
        # in-process too, with --resume and without options
        for extra in ((), ("--resume",)):
            one_line_error(
                distill(packed["data"], finished, *extra), "is in use by another edgedd process", f"pid {os.getpid()}"
            )
        assert tree(finished) == before  # A's files untouched, its lock file included
    finally:
        os.close(fd)


def test_two_real_distills_on_one_out(image_folder, tmp_path):
    out = tmp_path / "run"
    a = subprocess.Popen(
        [sys.executable, "-m", "edgedd", *distill_args(image_folder, out, "--iterations", "100000")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "stage1.json").exists() and a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.poll() is None, a.stderr.read()
        b = CliRunner().invoke(app, distill_args(image_folder, out, "--overwrite"))
        one_line_error(b, f"--out {out} is in use by another edgedd process (pid {a.pid})")
        assert json.loads((out / "run.json").read_text())["identity"]["distill"]["iterations"] == 100000  # still A's
    finally:
        a.kill()
        a.wait()
    # A was killed: the kernel dropped its lock, and its leftover lock file stops nobody
    assert (out / LOCK_FILE).exists()
    r = distill(image_folder, out, "--overwrite", "--json")
    assert r.exit_code == 0, r.stderr
    assert not (out / LOCK_FILE).exists()  # removed by the run that held it


def test_the_lock_file_is_not_foreign_and_a_failed_start_leaves_nothing(image_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / LOCK_FILE).write_text("12345\n")  # left by a killed run: not "not empty / not a run directory"
    r = distill(image_folder, empty)
    assert r.exit_code == 0, r.stderr
    assert (empty / "summary.json").is_file() and not (empty / LOCK_FILE).exists()
    # a directory that is not ours gets no lock file written into it
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    one_line_error(distill(image_folder, foreign), "is not empty and is not an edgedd run directory")
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    # a run that fails after taking the lock on a new --out leaves no directory behind
    new = tmp_path / "new"
    one_line_error(distill(image_folder, new, "--weights", str(tmp_path / "missing.safetensors")))
    assert not new.exists()
    # a lock "file" that is a symlink is not followed
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / LOCK_FILE).symlink_to(victim)
    one_line_error(distill(image_folder, linked), "cannot create the lock file")
    assert victim.read_text() == "precious"


def test_pack_on_a_locked_bundle_fails_at_once(packed, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(packed["bundle"], out)
    before = tree(out)
    fd = _hold(tmp_path / ".bundle.edgedd.lock")
    try:
        for extra in ((), ("--overwrite",)):
            r = CliRunner().invoke(app, ["pack", str(packed["run"]), "--out", str(out), *extra])
            if not extra:
                one_line_error(r, "already exists")  # refused before the lock matters
            else:
                one_line_error(r, f"--out {out} is in use by another edgedd process (pid {os.getpid()})")
        r = CliRunner().invoke(
            app, ["pack", str(packed["run"]), "--out", str(tmp_path / "other"), "--projector-epochs", "10"]
        )
        assert r.exit_code == 0, r.stderr  # another bundle is not locked
    finally:
        os.close(fd)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".bundle.edgedd.lock",
        "bundle",
        "other",
    ]  # pack's own lock file removed


# ----------------------------------------------------------------------------- damaged run directories (item 9)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


DAMAGE = {
    "truncated synthetic.json": (lambda r: _truncate(r / "synthetic.json"), "synthetic.json is not valid JSON"),
    "summary.json not UTF-8": (
        lambda r: (r / "summary.json").write_bytes(b'{"a": "\xff"}'),
        "summary.json is not valid JSON",
    ),
    "run.json a list": (lambda r: (r / "run.json").write_text("[]"), "run.json is not a JSON object"),
    "class names an int": (
        lambda r: (r / "synthetic.json").write_text(
            json.dumps({**json.loads((r / "synthetic.json").read_text()), "class_names": 3})
        ),
        "no list of class names",
    ),
    "no preprocess": (
        lambda r: (r / "synthetic.json").write_text(
            json.dumps(
                {
                    **json.loads((r / "synthetic.json").read_text()),
                    "backbone": {"name": "x", "weights": "y", "weights_sha256": "z"},
                }
            )
        ),
        "malformed preprocess",
    ),
    "truncated synthetic.safetensors": (
        lambda r: _truncate(r / "synthetic.safetensors"),
        "synthetic.safetensors is not a valid safetensors file",
    ),
    "garbage golden": (
        lambda r: (r / "golden_classifier.safetensors").write_bytes(b"\xff" * 64),
        "golden_classifier.safetensors",
    ),
    "images 3-D": (
        lambda r: rewrite(r / "synthetic.safetensors", lambda t: t.update(images=t["images"][0].contiguous())),
        "no (N, 3, R, R) float images",
    ),
    "label out of range": (
        lambda r: rewrite(r / "synthetic.safetensors", lambda t: t["labels"].__setitem__(0, 7)),
        "labels (N,) in [0, 3)",
    ),
    "golden replaced": (
        lambda r: rewrite(r / "golden_classifier.safetensors", lambda t: t["weight"].zero_()),
        "golden_classifier.safetensors does not match its checksum",
    ),
    "stats negated": (
        lambda r: rewrite(r / "stats.safetensors", lambda t: t.update(centres=-t["centres"])),
        "stats.safetensors does not match its checksum",
    ),
    "synthetic.json a FIFO": (
        lambda r: ((r / "synthetic.json").unlink(), os.mkfifo(r / "synthetic.json")),
        "synthetic.json is not a regular file",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_is_one_line_for_pack_and_evaluate(case, finished, packed, tmp_path, tmp_path_factory, opened):
    damage, words = DAMAGE[case]
    damage(finished)
    for argv in (
        ["pack", str(finished), "--out", str(tmp_path / "bundle")],
        ["evaluate", str(finished), "--test-data", str(packed["heldout"]), "--seeds", "1", "-q"],
    ):
        with opened:
            r = CliRunner().invoke(app, argv)
        one_line_error(r, f"run directory {finished} is damaged", words)
        assert not (tmp_path / "bundle").exists()
        from _rundirs import outside

        assert outside(opened.seen, tmp_path_factory.getbasetemp(), finished, packed["heldout"]) == [], argv


def _stopped(image_folder, out):
    r = distill(image_folder, out, "--stop-after", "2", "--checkpoint-every", "1")
    assert r.exit_code == 0 and (out / "checkpoint.safetensors").exists(), r.stderr
    return out / "checkpoint.safetensors"


def _ckpt_meta(path, **changes):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from edgedd.core.stio import torch_serialize

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    path.write_bytes(torch_serialize(load_file(path), {**meta, **changes}))


CHECKPOINTS = {
    "truncated": (_truncate, "is unreadable"),
    "levels not a number": (lambda p: _ckpt_meta(p, levels="many"), "not numbers"),
    "too many levels": (lambda p: _ckpt_meta(p, levels="40"), "out of range"),
    "no rng": (lambda p: rewrite(p, lambda t: t.pop("rng")), "rng state missing"),
    "wrong level shape": (
        lambda p: rewrite(p, lambda t: t.update({"level.0": torch.zeros(5, 3, 1, 1)})),
        "level.0 missing or not float32 (3, 3, 1, 1)",
    ),
    "adam state missing": (lambda p: rewrite(p, lambda t: t.pop("adam.0.exp_avg")), "adam.0.exp_avg missing"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_damaged_checkpoint_is_one_line_for_resume(case, image_folder, tmp_path):
    ckpt = _stopped(image_folder, tmp_path / "run")
    damage, words = CHECKPOINTS[case]
    damage(ckpt)
    kept = ckpt.read_bytes()
    one_line_error(distill(image_folder, tmp_path / "run", "--resume"), f"checkpoint {ckpt}", words)
    assert ckpt.read_bytes() == kept and not (tmp_path / "run" / "synthetic.safetensors").exists()


def test_a_damaged_run_json_on_resume_is_one_line(image_folder, tmp_path):
    out = tmp_path / "run"
    _stopped(image_folder, out)
    (out / "run.json").write_text('{"identity": 5, "fingerprint": [')
    one_line_error(distill(image_folder, out, "--resume"), "already holds a different run")
    (out / "run.json").write_text('{"identity": 5}')
    one_line_error(distill(image_folder, out, "--resume"), "already holds a different run")


INITIAL_DAMAGE = {
    "truncated": (
        lambda r: _truncate(r / "initial.safetensors"),
        "initial.safetensors is not a valid safetensors file",
    ),
    "another shape": (
        lambda r: rewrite(r / "initial.safetensors", lambda t: t.update(images=t["images"][:1].contiguous())),
        "initial.safetensors has no finite images",
    ),
    "NaN": (
        lambda r: rewrite(r / "initial.safetensors", lambda t: t["images"].view(-1).__setitem__(0, float("nan"))),
        "initial.safetensors has no finite images",
    ),
    "labels shuffled": (
        lambda r: rewrite(r / "initial.safetensors", lambda t: t.update(labels=t["labels"].flip(0).contiguous())),
        "initial.safetensors has not the result's labels",
    ),
}


@pytest.mark.parametrize("case", list(INITIAL_DAMAGE))
def test_a_damaged_starting_set_is_one_line_for_evaluate(case, finished, packed):
    damage, words = INITIAL_DAMAGE[case]
    damage(finished)
    r = CliRunner().invoke(
        app, ["evaluate", str(finished), "--test-data", str(packed["heldout"]), "--seeds", "1", "-q"]
    )
    one_line_error(r, f"run directory {finished} is damaged", words)
    r = CliRunner().invoke(
        app,
        ["evaluate", str(finished), "--test-data", str(packed["heldout"]), "--seeds", "1", "-q", "--no-starting-set"],
    )
    assert r.exit_code == 0, r.stderr


def test_a_run_without_a_starting_set_evaluates_without_it(finished, packed):
    """Runs made before initial.safetensors existed: no starting-set rows, no gain, no error."""
    (finished / "initial.safetensors").unlink()
    r = CliRunner().invoke(
        app, ["evaluate", str(finished), "--test-data", str(packed["heldout"]), "--seeds", "1", "-q", "--json"]
    )
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert "starting_set" not in out and "stage2_gain" not in out and out["copy_ratio"] is not None
