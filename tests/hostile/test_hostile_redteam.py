"""Cases a red-team pass found outside the suites by topic: a data set too small for a held-out
slice, and graphs with outputs a bundle never has."""

from __future__ import annotations

from types import SimpleNamespace

from edgedd.device import schema


def test_a_run_without_a_held_out_slice_packs_a_bundle_the_device_accepts():
    from export.edge_path import expectations, heldout_real

    # what stage I records when every class is too small to hold images out (3 images a class)
    run = SimpleNamespace(stage1={"golden": {"heldout_images": 0, "heldout_top1": float("nan")}})
    held, missing = heldout_real(run, None, None, max_images=0)
    ref = expectations(run, held, missing, None, None, None, None)
    assert held is None and ref["golden_heldout_images"] is None and ref["golden_heldout_top1"] is None
    schema._host_figures(
        ref
    )  # before: "golden_heldout_images is 0, not a positive integer or null" on every device command


def test_a_report_on_a_run_with_a_non_utf8_class_name(packed, tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from edgedd.cli.host import app

    run = tmp_path / "run"
    shutil.copytree(packed["run"], run)
    meta = json.loads((run / "synthetic.json").read_text())
    meta["class_names"][0] = "\udcff\udcfeclass"  # a class folder named by the bytes ff fe, as os.fsdecode holds it
    (run / "synthetic.json").write_text(json.dumps(meta))
    r = CliRunner().invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output  # before: UnicodeEncodeError traceback, no page
    assert "\\udcff\\udcfeclass" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_stored_threads_beyond_this_devices_cpus_are_ignored(bundle, packed, monkeypatch):
    import json
    import os

    from typer.testing import CliRunner

    from edgedd.cli.host import app
    from edgedd.device import artifact as art
    from edgedd.device import sidecar

    image = str(next((packed["heldout"] / "square").iterdir()))
    a = art.read(bundle / art.ARTIFACT_FILE)
    body = {
        "artifact_sha256": a.file_sha256,
        "backbone": "fp32",
        "backbone_sha256": a.meta["onnx"]["backbone"]["sha256"],
    }
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for threads, used in (
        (2, 2),
        (3, None),
        (1024, None),
    ):  # before: 1024 was used, and predict took minutes on 2 cores
        sidecar.settings_path(bundle, "fp32").write_text(json.dumps({**body, "intra_op_threads": threads}))
        r = CliRunner().invoke(app, ["predict", str(bundle), image, "--json"])
        assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["threads"] == used, (threads, r.stderr)


def _extra_output(bundle):
    import hashlib

    import onnx
    from _crafted import resign
    from onnx import TensorProto, helper

    path = bundle / "backbone.onnx"
    m = onnx.load_model_from_string(path.read_bytes())
    m.graph.node.append(helper.make_node("Identity", [m.graph.output[0].name], ["extra"]))
    extra = helper.make_tensor_value_info("extra", TensorProto.FLOAT, None)
    m.graph.output.append(extra)
    data = m.SerializeToString()
    path.write_bytes(data)
    resign(bundle, lambda meta: meta["onnx"]["backbone"].__setitem__("sha256", hashlib.sha256(data).hexdigest()))


def test_a_graph_with_an_extra_output_is_refused(bundle, packed):
    from _crafted import one_line_error
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    for p in [*bundle.glob("projector.*.safetensors"), *bundle.glob("runtime.*.json")]:
        p.unlink()
    image = str(next((packed["heldout"] / "square").iterdir()))
    _extra_output(bundle)  # before: accepted, the second output computed and dropped on every run
    for argv in (["predict", str(bundle), image], ["deploy-check", str(bundle)]):
        one_line_error(CliRunner().invoke(app, argv), "backbone.onnx has 1 input(s) and 2 output(s)")
