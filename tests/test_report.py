"""RUN/metrics.jsonl (one line per Stage II step, consistent with the checkpoint on --resume) and
`edgedd report` (one self-contained HTML page), read back with a real HTML parser."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import copy_run, make_image_folder, tiny_distill_args
from typer.testing import CliRunner

from edgedd.cli.host import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)"  # a class folder name: user data, must reach the page as text


def invoke(args):
    return CliRunner().invoke(app, args, env={"EDGEDD_PROGRESS": "0"})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class Page(HTMLParser):
    """Every start tag with its attributes, the text, and the <tr>s of each <table> in order."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []  # cells' text per <tr>
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def imgs(self, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if t == "img" and (cls is None or cls in (a.get("class") or "").split())]


def decoded_png(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(PNG_MAGIC)
    return data


def check_self_contained(html_text: str) -> Page:
    page = Page(html_text)
    assert page.imgs(), "no images"
    for a in page.imgs():
        decoded_png(a["src"])
    # nothing fetched from anywhere: no scripts, links, iframes or remote URLs
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    for _, attrs in page.tags:
        for k in ("src", "href"):
            assert not attrs.get(k) or attrs[k].startswith("data:"), attrs[k]
    return page


# ----------------------------------------------------------------------------- metrics.jsonl


def test_metrics_jsonl_every_step_and_consistent_after_resume(image_folder, tmp_path):
    common = ("--ipc", "2", "--iterations", "9", "--preview-every", "3", "--checkpoint-every", "2", "--seed", "3")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert invoke(tiny_distill_args(image_folder, whole, *common)).exit_code == 0
    r = invoke(tiny_distill_args(image_folder, cut, *common, "--stop-after", "5"))
    assert r.exit_code == 0, r.stderr
    assert [m["step"] for m in metrics(cut)] == [1, 2, 3, 4, 5]
    # what a SIGKILL between a checkpoint and the next can leave: lines past it, a torn last line
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"loss": 1.0, "resolution": 32, "seconds": 9.0, "step": 6}\n{"loss": 2.0, "reso')
    r = invoke(tiny_distill_args(image_folder, cut, *common, "--resume", "--json"))
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["resumed_from_step"] == 5

    for run in (whole, cut):
        rows = metrics(run)
        assert [m["step"] for m in rows] == list(range(1, 10))
        assert all(set(m) <= {"step", "loss", "resolution", "seconds", "flow_cosine"} for m in rows)
        assert [m["step"] for m in rows if "flow_cosine" in m] == list(
            range(1, 10)
        )  # 9 steps: every one (at least 10 points)
        assert all(-1 <= m["flow_cosine"] <= 1 for m in rows if "flow_cosine" in m)
        res = [m["resolution"] for m in rows]
        assert res == sorted(res) and res[-1] == 32
        secs = [m["seconds"] for m in rows]
        assert secs == sorted(secs) and secs[0] > 0
        s = json.loads((run / "summary.json").read_text())
        assert rows[-1]["loss"] == pytest.approx(s["final_loss"], rel=1e-6)
        assert rows[-1]["flow_cosine"] == pytest.approx(s["flow_cosine"], abs=1e-6)
    # the flow-cosine forwards draw nothing from the run's generator: resumed == uninterrupted
    assert (whole / "synthetic.safetensors").read_bytes() == (cut / "synthetic.safetensors").read_bytes()
    assert (whole / "initial.safetensors").read_bytes() == (cut / "initial.safetensors").read_bytes()  # kept on resume
    assert (
        json.loads((cut / "summary.json").read_text())["copy_ratio_start"]
        == json.loads((whole / "summary.json").read_text())["copy_ratio_start"]
    )
    assert [m["loss"] for m in metrics(whole)] == [m["loss"] for m in metrics(cut)]
    assert not list(cut.glob(".*.tmp"))


def test_metrics_flow_cosine_at_least_ten_times_in_any_run():
    from edgedd.distillation.metrics import flow_every

    for iterations in (1, 7, 10, 100, 1001, 5000):
        points = [s for s in range(1, iterations + 1) if s % flow_every(iterations) == 0 or s == iterations]
        assert len(points) >= min(10, iterations) and points[-1] == iterations
    assert flow_every(100) == 10 and flow_every(3) == 1


# ----------------------------------------------------------------------------- edgedd report


@pytest.fixture
def evil_run(tmp_path):
    data = make_image_folder(tmp_path / "evil", classes=(EVIL, "a&b", "plain"))
    run = tmp_path / "run"
    r = invoke(tiny_distill_args(data, run, "--ipc", "2", "--iterations", "6", "--preview-every", "2"))
    assert r.exit_code == 0, r.stderr
    return data, run


def test_report_html_is_self_contained_with_images_plots_table_and_escaped_names(evil_run, tmp_path):
    data, run = evil_run
    held = make_image_folder(tmp_path / "held", classes=(EVIL, "a&b", "plain"), seed=5)
    ev = invoke(
        [
            "evaluate",
            str(run),
            "--test-data",
            str(held),
            "--mode",
            "normal",
            "--mode",
            "ci",
            "--seeds",
            "2",
            "--epochs",
            "2",
            "--baselines",
            "--train-data",
            str(data),
            "--json",
            "-q",
        ]
    )
    assert ev.exit_code == 0, ev.stderr
    (tmp_path / "eval.json").write_text(ev.stdout)

    r = invoke(["report", str(run), "--eval", str(tmp_path / "eval.json"), "--json"])
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    out = json.loads(r.stdout)
    assert out["schema"] == "edgedd.report/1" and out["report"] == str(run / "report.html")
    assert out["images"] == 6 and out["plots"] == ["loss", "flow_cosine"] and out["metrics_steps"] == 6
    text = (run / "report.html").read_text(encoding="utf-8")
    assert out["bytes"] == len(text.encode("utf-8")) and not list(run.glob(".*.tmp"))
    page = check_self_contained(text)

    # the images: one row per class, its name at the head of the row, one tile per synthetic image, class-major
    tiles = page.imgs("tile")
    assert [a["alt"] for a in tiles] == [EVIL, EVIL, "a&b", "a&b", "plain", "plain"]
    import io

    from PIL import Image

    assert all(Image.open(io.BytesIO(decoded_png(a["src"]))).size == (96, 96) for a in tiles)  # 32 px, upscaled x3
    assert sum(t.strip() == EVIL for t in page.text) == 1  # the row's head, as text
    assert ("div", {"class": "grid classes", "id": "synthetic"}) in page.tags
    assert sum(a.get("class") == "classrow" for _, a in page.tags) == 3
    # what the set holds: the copy ratio's line and table (the result and its starting set, both spaces)
    assert any("copy ratio median" in t for t in page.text)
    assert {row[0] for row in page.rows if len(row) == 7} >= {"result", "starting set (step 0)"}
    # the two plots, real PNGs of a plot's size
    plots = {a["id"]: a for a in page.imgs("plot")}
    assert set(plots) == {"plot-loss", "plot-flow_cosine"}
    for a in plots.values():
        w, h = Image.open(io.BytesIO(decoded_png(a["src"]))).size
        assert w >= 400 and h >= 200
    # the class name is escaped everywhere: the parser saw no <script>, the raw text never appears
    assert EVIL not in text and "&lt;script&gt;alert(1)" in text and "a&amp;b" in text
    # the accuracy table: one row per mode and baseline, top-1 as "mean ± std"
    res = json.loads((tmp_path / "eval.json").read_text())
    names = {row[0]: row for row in page.rows if row}
    for m in ("normal", "ci"):
        row = names[f"sfm_sub_probe ({m})"]
        assert row[1] == f"{100 * res['modes'][m]['top1_mean']:.2f} ± {100 * res['modes'][m]['top1_std']:.2f}"
        assert row[3] == "2"
    for b in ("random", "centroids", "neighbors", "kcentre", "herding", "full"):
        assert f"baseline: {b}" in names
    assert "starting set, step 0 (normal)" in names and any("stage-II gain" in t for t in page.text)
    # the run's summary and the landing figures
    assert (
        names["method"][1] == "sfm_sub_probe" and names["images per class (IPC)"][1] == "2" and names["steps"][1] == "6"
    )
    assert names["golden classifier"][1].startswith("converged recipe; held-out top-1")
    assert "golden top-1, centre view" in names

    # a stalled head is marked in its row
    res["modes"]["ci"]["stalled"] = True
    from edgedd.evaluation.report import write_report

    write_report(run, eval=res, out=tmp_path / "stalled.html")
    page = Page((tmp_path / "stalled.html").read_text())
    assert names["sfm_sub_probe (ci)"][-1] == ""
    assert {row[0]: row for row in page.rows if row}["sfm_sub_probe (ci)"][-1] == "STALLED: did not train"


def test_report_with_deploy_check_and_bundle(packed, tmp_path):
    from edgedd.device.checks import deploy_check
    from edgedd.evaluation.report import write_report

    dc = deploy_check(packed["bundle"], data=packed["heldout"])
    (tmp_path / "check.json").write_text(json.dumps({"schema": "edgedd.deploy-check/1", **dc}))
    r = invoke(
        [
            "report",
            str(packed["run"]),
            "--deploy-check",
            str(tmp_path / "check.json"),
            "--bundle",
            str(packed["bundle"]),
            "--out",
            str(tmp_path / "r.html"),
            "--json",
        ]
    )
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    out = json.loads(r.stdout)
    assert out["deploy_check"] is True and out["bundle"] == str(packed["bundle"]) and out["evaluation"] is False
    page = check_self_contained((tmp_path / "r.html").read_text())
    rows = [row for row in page.rows if len(row) == 3 and row[0] in ("PASS", "FAIL")]
    assert [(row[0] == "PASS", row[1]) for row in rows] == [(c["ok"], c["name"]) for c in dc["checks"]]
    text = "".join(page.text)
    assert f"Deploy check: {'PASSED' if dc['ok'] else 'FAILED'}" in text
    assert "host: synthetic top-1, packed projector" in text and "edge backbone" in text
    # the library call with the result dict gives the same page
    assert (
        write_report(packed["run"], deploy_check=dc, bundle=packed["bundle"], out=tmp_path / "r2.html")["images"]
        == out["images"]
    )


def test_report_refusals_are_one_line(tiny_run, tmp_path):
    half, run = tiny_run["half"], tiny_run["run"]  # read only: every call here is refused before writing
    for argv, needle in (
        (["report", str(half)], "is not a finished edgedd run"),
        (["report", str(tmp_path / "nope")], "does not exist"),
    ):
        r = invoke(argv)
        assert r.exit_code == 1 and r.stdout == "", (argv, r.stdout)
        assert r.stderr.startswith("error: ") and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (
            r.stderr
        )
    assert not (half / "report.html").exists()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "edgedd.predict/1", "predictions": []}))
    for opt, f, needle in (
        ("--eval", "bad.json", "not readable JSON"),
        ("--eval", "other.json", "not an edgedd.evaluate/1 result"),
        ("--deploy-check", "other.json", "not an edgedd.deploy-check/1 result"),
    ):
        r = invoke(["report", str(run), opt, str(tmp_path / f)])
        assert r.exit_code == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (run / "report.html").exists()


def test_report_without_metrics_still_renders(tiny_run, tmp_path):
    """A run made before metrics.jsonl existed: images and summary, a note instead of the curves."""
    from edgedd.evaluation.report import write_report

    run = copy_run(tiny_run["run"], tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    out = write_report(run)
    assert out["plots"] == [] and out["metrics_steps"] == 0 and Path(out["report"]) == run / "report.html"
    page = check_self_contained((run / "report.html").read_text())
    assert len(page.imgs("tile")) == 3 and "no metrics.jsonl" in "".join(page.text)
