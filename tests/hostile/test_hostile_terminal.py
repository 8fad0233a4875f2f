"""Names shown, never acted on: class names and file names with ANSI escapes, newlines and
non-UTF-8 bytes are printed escaped (edgedd.core.terminal.printable, in every CLI printer), also under
a strict UTF-8 stdout; --json keeps them exact. And resolutions that would ask for gigabytes are
usage errors."""

from __future__ import annotations

import json
import os
import shutil

from _crafted import resign, run_cli
from _rundirs import cache_entry, distill, rewrite
from conftest import tiny_distill_args
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.config import MAX_RESOLUTION
from edgedd.core.terminal import printable
from edgedd.distillation.rundir import STATS_FILE

EVIL = "circle\x1b]0;owned\x07\x1b[2J\nforged line\udcff"  # retitle, clear screen, a new line, a non-UTF-8 byte
STRICT = {"LC_ALL": "C", "PYTHONIOENCODING": "utf-8:strict"}


def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable("plain é 名") == "plain é 名"
    assert printable(EVIL) == "circle\\x1b]0;owned\\x07\\x1b[2J\\nforged line\\xff"
    assert printable("a\tb\nc\x1b", keep="\n\t") == "a\tb\nc\\x1b"
    assert printable("\u2028\x85\x7f") == "\\u2028\\x85\\x7f"


def test_class_and_file_names_print_escaped_and_json_keeps_them(bundle, packed, tmp_path):
    resign(bundle, lambda meta: meta["class_names"].__setitem__(0, EVIL))
    img = os.path.join(os.fsencode(tmp_path), b"ph\xf6to\x1b[31m.png")  # a Latin-1 file name with an escape in it
    shutil.copy(next((packed["heldout"] / "square").iterdir()), img)
    img = os.fsdecode(img)
    for env in ({}, STRICT):
        p = run_cli(["predict", bundle, img, "--top-k", "3"], env=env)
        assert p.returncode == 0, p.stderr
        assert p.stdout.count("\n") == 1 and "\x1b" not in p.stdout + p.stderr and p.stderr == "", (p.stdout, p.stderr)
        assert p.stdout.startswith(printable(img) + "\t") and printable(EVIL) in p.stdout
        q = run_cli(["inspect", bundle], env=env)
        assert (
            q.returncode == 0
            and "\x1b" not in q.stdout
            and f"classes (3): {printable(EVIL)}, square, stripes\n" in q.stdout
        ), q.stdout
    j = CliRunner().invoke(app, ["predict", str(bundle), img, "--top-k", "3", "--json"])
    assert EVIL in [t["label"] for t in json.loads(j.stdout)["predictions"][0]["top"]]  # exact in JSON


def test_errors_quoting_a_name_stay_one_escaped_line(bundle, tmp_path):
    data = tmp_path / "data"
    (data / "bad\x1b[31mclass").mkdir(parents=True)
    (data / "bad\x1b[31mclass" / "x.png").write_bytes(b"")
    r = run_cli(["deploy-check", bundle, "--data", data], env=STRICT)
    err = r.stderr.strip()
    assert (
        r.returncode == 1
        and err.startswith("error: ")
        and "\n" not in err
        and "\x1b" not in err
        and "bad\\x1b[31mclass" in err
    ), err


def test_the_damaged_cache_warning_escapes_a_crafted_cache_path(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDD_CACHE_DIR", str(tmp_path / "cache\x1b[2J\nforged line"))
    assert distill(image_folder, tmp_path / "run1").exit_code == 0
    entry = cache_entry()
    rewrite(entry / STATS_FILE, lambda t: t["sums"].neg_())  # checksum as saved: a damaged entry, warned about
    r = distill(image_folder, tmp_path / "run2")
    # before: printed raw, the escape cleared the screen and the newline forged a second line
    assert r.exit_code == 0 and r.stderr.count("\n") == 1 and "\x1b" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"warning: the Stage I files in {printable(str(entry))} are damaged"), r.stderr


def test_huge_resolutions_are_usage_errors(image_folder, tmp_path):
    for opt in ("--crop-res", "--syn-res"):
        args = tiny_distill_args(image_folder, tmp_path / "o")
        args[args.index(opt) + 1] = "100000"
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output and str(MAX_RESOLUTION) in r.stderr, (
            r.exit_code,
            r.output,
        )
    for args in (
        ["evaluate", str(tmp_path), "--test-data", str(image_folder), "--eval-crop-res", "100000"],
        ["pack", str(tmp_path), "--out", str(tmp_path / "b"), "--edge-crop-res", "100000"],
    ):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and str(MAX_RESOLUTION) in r.stderr, (args, r.output)
    assert not (tmp_path / "o").exists()
