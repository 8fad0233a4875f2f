"""JSON nested deeper than the parser's recursion limit, in every file edgedd parses as JSON from a
bundle or a run directory: a few kilobytes of brackets, under every size cap, that used to end in a
RecursionError traceback. Each is refused in one line (or, for a metrics line, skipped and counted)."""

from __future__ import annotations

import json
import shutil

from _crafted import one_line_error
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.device import sidecar
from edgedd.distillation import metrics

DEEP = "[" * 3000 + "]" * 3000  # 6 KB; json's C parser gives up near a depth of 1000


def test_deeply_nested_runtime_settings_are_one_line(bundle, packed):
    image = str(next((packed["heldout"] / "square").iterdir()))
    sidecar.settings_path(bundle, "fp32").write_text(
        "[" * 2000 + "]" * 2000
    )  # 4,000 bytes: under the settings' size cap
    one_line_error(CliRunner().invoke(app, ["predict", str(bundle), image]), "not valid runtime settings", "damaged")


def test_a_deeply_nested_metrics_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(DEEP + "\n" + json.dumps({"step": 1, "loss": 0.5}) + "\n")
    rows, steps, skipped = metrics.read_metrics_sampled(path, max_points=50)
    assert steps == 1 and [r["step"] for r in rows] == [1] and skipped == {"not JSON": 1}


def test_deeply_nested_report_inputs_are_one_line(packed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(packed["run"], run)
    (tmp_path / "deep.json").write_text(DEEP)
    for opt in ("--eval", "--deploy-check"):
        r = CliRunner().invoke(
            app, ["report", str(run), opt, str(tmp_path / "deep.json"), "-o", str(tmp_path / "r.html")]
        )
        one_line_error(r, "not readable JSON")
    (run / "summary.json").write_text(DEEP)
    one_line_error(
        CliRunner().invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html")]), "summary", "not readable JSON"
    )
    assert not (tmp_path / "r.html").exists()
