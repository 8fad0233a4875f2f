"""edgedd adapt's local folder is untrusted: bombs and odd files are skipped and counted; one class,
an unknown class, too many images, a missing or unreadable folder: one line, exit 1."""

from __future__ import annotations

import json
import os
import shutil

from _crafted import one_line_error
from test_hostile_images import _bomb
from typer.testing import CliRunner

from edgedd.cli.host import app


def _adapt(bundle, data, *extra):
    return CliRunner().invoke(app, ["adapt", str(bundle), "--data", str(data), *extra], env={"EDGEDD_PROGRESS": "0"})


def test_bombs_and_odd_files_are_skipped_and_counted(bundle, packed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(packed["heldout"], data)
    _bomb(data / "circle" / "zz_bomb.png")
    (data / "square" / "notes.png").write_text("not an image")
    (data / "square" / "readme.txt").write_text("ignored: not an image suffix")
    if hasattr(os, "mkfifo"):
        os.mkfifo(data / "stripes" / "pipe.png")  # a FIFO named like an image: never opened (it would block)
    r = _adapt(bundle, data, "--json")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output[-2000:]
    rep = json.loads(r.stdout)
    assert rep["skipped_images"] == 2 and rep["images"] == 18 and "skipped 2 unreadable" in r.stderr


def test_bad_local_folders_are_one_line(bundle, packed, tmp_path):
    one_line_error(_adapt(bundle, tmp_path / "absent"), "--data")
    shutil.copytree(packed["heldout"] / "circle", tmp_path / "one" / "circle")
    one_line_error(_adapt(bundle, tmp_path / "one"), "1 class", "at least two")
    shutil.copytree(packed["heldout"], tmp_path / "unknown")
    shutil.copytree(packed["heldout"] / "circle", tmp_path / "unknown" / "zebra")
    one_line_error(_adapt(bundle, tmp_path / "unknown"), "zebra", "not classes of this bundle")
    many = tmp_path / "many"
    for c in ("circle", "square"):
        (many / c).mkdir(parents=True)
        for i in range(1001):
            (many / c / f"{i}.png").write_bytes(b"")  # counted from the scan, never read
    one_line_error(_adapt(bundle, many), "2002 images", "more than adapt reads")
    one_line_error(_adapt(bundle, "embedded:mnist"), "embedded", "export-data")
