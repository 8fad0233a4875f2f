"""pack --out / --overwrite against directories that are not bundles, and a killed pack's leftovers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from _crafted import one_line_error
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.device import artifact as art


def test_overwrite_refuses_a_directory_without_a_bundle(packed, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("\\chapter{Five years}")
    r = CliRunner().invoke(app, ["pack", str(packed["run"]), "--out", str(precious), "--overwrite"])
    one_line_error(r, "holds no edgedd bundle", "--overwrite will not replace it")
    assert (precious / "thesis.tex").read_text() == "\\chapter{Five years}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no temporary left either


def test_overwrite_refuses_a_fake_artifact_and_a_bundle_with_foreign_files(packed, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / art.ARTIFACT_FILE).write_text("my notes, unluckily named")
    one_line_error(
        CliRunner().invoke(app, ["pack", str(packed["run"]), "--out", str(fake), "--overwrite"]),
        "holds no edgedd bundle",
    )
    assert (fake / art.ARTIFACT_FILE).read_text() == "my notes, unluckily named"

    mixed = tmp_path / "mixed"
    shutil.copytree(packed["bundle"], mixed)
    (mixed / "thesis.tex").write_text("keep me")
    one_line_error(
        CliRunner().invoke(app, ["pack", str(packed["run"]), "--out", str(mixed), "--overwrite"]),
        "plus other files (thesis.tex)",
    )
    assert (mixed / "thesis.tex").read_text() == "keep me" and (mixed / art.ARTIFACT_FILE).is_file()

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line_error(
        CliRunner().invoke(app, ["pack", str(packed["run"]), "--out", str(a_file), "--overwrite"]), "is a file"
    )
    assert a_file.read_text() == "x"


def test_overwrite_replaces_a_bundle_and_removes_a_killed_packs_temporaries(packed, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(packed["bundle"], out)
    (out / "projector.finetuned.safetensors").write_bytes(b"an old fit")  # bundle files are replaceable
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".b.{dead}.tmp-x1y2"  # what make_temp_dir names it; its writer is gone
    stale.mkdir()
    (stale / "backbone.onnx").write_bytes(b"half written")
    stale_old = tmp_path / f".b.{dead}.tmp-x1y2.old"  # killed between the two renames
    stale_old.mkdir()
    live = tmp_path / f".b.{os.getpid()}.tmp-live"  # a writer that is still running (this process)
    live.mkdir()
    mine = tmp_path / ".b.notes"  # a user's own hidden directory
    mine.mkdir()
    r = CliRunner().invoke(
        app, ["pack", str(packed["run"]), "--out", str(out), "--overwrite", "--projector-epochs", "100"]
    )
    assert r.exit_code == 0, r.stderr
    assert not stale.exists() and not stale_old.exists()
    assert live.is_dir() and mine.is_dir()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in packed["bundle"].iterdir() if "finetuned" not in p.name
    )
    assert (out / art.ARTIFACT_FILE).read_bytes() == (packed["bundle"] / art.ARTIFACT_FILE).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".b.notes", live.name, "b"])


def test_an_edited_copy_ratio_in_summary_ships_no_copy_ratio(packed, tmp_path):
    """summary.json is the user's file: a copy ratio the artifact schema would refuse is left out of
    the bundle (older artifacts have none either), never a traceback or an unloadable bundle."""
    import json

    run = tmp_path / "run"
    shutil.copytree(packed["run"], run)
    s = json.loads((run / "summary.json").read_text())
    s["copy_ratio"]["spaces"]["pixels"]["median"] = -5
    (run / "summary.json").write_text(json.dumps(s))
    r = CliRunner().invoke(app, ["pack", str(run), "--out", str(tmp_path / "b"), "--projector-epochs", "20"])
    assert r.exit_code == 0, r.stderr
    assert "copy_ratio" not in art.read(tmp_path / "b" / art.ARTIFACT_FILE).meta
    assert "copy_ratio" in art.read(packed["bundle"] / art.ARTIFACT_FILE).meta  # the unedited run's bundle has it
