"""Graphs that verify but answer wrongly, and inputs that grow memory.

Each wrong graph is the bundle's own graph with a few onnx.helper nodes appended to its output,
written back and re-signed with the project's writer (correct sha256 in a correctly hashed
artifact), so only the output check can stop it. Every case: exit 1, one line naming the graph
and what it returned, nothing on stdout (no partial answer, no NaN token)."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import numpy as np
import onnx
import pytest
from _crafted import one_line_error, resign
from onnx import helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.errors import EdgeddError
from edgedd.device import accuracy, infer, inputs
from edgedd.device import bundle as device_bundle


def _wrap_output(bundle, role: str, nodes_for, key: str | None = None) -> str:
    """Append ``nodes_for(raw, out)`` -> (nodes, initializers) after ``role``'s graph output and re-sign
    (the device's sidecars, which an earlier test's deploy-check may have left in the shared bundle, removed)."""
    for p in [*bundle.glob("projector.*.safetensors"), *bundle.glob("runtime.*.json")]:
        p.unlink()
    key = key or role
    a = device_bundle.open_bundle(bundle).meta["onnx"][key]
    path = bundle / a["file"]
    m = onnx.load_model_from_string(path.read_bytes())
    out = m.graph.output[0].name
    raw = out + "_raw"
    for node in m.graph.node:
        node.output[:] = [raw if o == out else o for o in node.output]
    nodes, inits = nodes_for(raw, out)
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(inits)
    m.graph.output[0].type.tensor_type.ClearField("shape")  # the declared shape would name the lie; leave it open
    data = m.SerializeToString()
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    resign(bundle, lambda meta: meta["onnx"][key].__setitem__("sha256", sha))
    return a["file"]


def _scale(factor: float):
    def nodes(raw, out):
        return [helper.make_node("Mul", [raw, "k"], [out])], [
            numpy_helper.from_array(np.array(factor, np.float32), "k")
        ]

    return nodes


def _slice(axis: int, end: int):
    def nodes(raw, out):
        consts = [
            numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s0", 0), ("s1", end), ("ax", axis))
        ]
        return [helper.make_node("Slice", [raw, "s0", "s1", "ax"], [out])], consts

    return nodes


def _images(packed, n: int = 3) -> list[str]:
    return [str(p) for p in sorted((packed["heldout"] / "circle").iterdir())[:n]]


def _refused_everywhere(bundle, packed, words, predict_words=()):
    """predict of three images (text and --json) and deploy-check --data (text and --json) each give
    one line with ``words`` (predict's also with ``predict_words``; deploy-check's first run is its self-test)."""
    imgs = _images(packed)
    for argv in (
        ["predict", str(bundle), *imgs],
        ["predict", str(bundle), *imgs, "--json"],
        ["deploy-check", str(bundle), "--data", str(packed["heldout"])],
        ["deploy-check", str(bundle), "--data", str(packed["heldout"]), "--json"],
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # numpy's floating-point warnings must not leak either
            r = CliRunner().invoke(app, argv)
        one_line_error(r, *words, *(predict_words if argv[0] == "predict" else ()))
        assert "Warning" not in r.output and "nan" not in r.stdout.lower(), r.output
    with pytest.raises(EdgeddError):
        device_bundle.Bundle.open(bundle).predict(imgs)


def test_a_backbone_answering_one_row_for_three_images(bundle, packed):
    name = _wrap_output(bundle, "backbone", _slice(0, 1))
    d = device_bundle.open_bundle(bundle).meta["edge"]["features"]
    _refused_everywhere(
        bundle, packed, [f"backbone graph {bundle / name} returned shape (1, {d}) for "], ["for 3 input row(s)"]
    )


def test_a_backbone_dropping_rows_only_in_larger_batches_stops_deploy_check_data(bundle, packed):
    """Right for deploy-check's own small batches (self-test, synthetic set), wrong for --data's:
    before, a matmul traceback in the data path."""
    a = device_bundle.open_bundle(bundle).artifact
    k = max(len(a["selftest.inputs"]), len(a["synthetic.images"]))
    n = sum(1 for p in packed["heldout"].rglob("*") if p.is_file())
    assert k < n <= infer.BATCH
    name = _wrap_output(bundle, "backbone", _slice(0, k))
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(
            app, ["deploy-check", str(bundle), "--data", str(packed["heldout"]), "--no-fine-tune", *extra]
        )
        one_line_error(r, f"backbone graph {bundle / name} returned shape ({k}, ", f"for {n} input row(s)")


def test_a_backbone_answering_nan(bundle, packed):
    name = _wrap_output(bundle, "backbone", _scale(float("nan")))
    _refused_everywhere(bundle, packed, [f"backbone graph {bundle / name} returned NaN or infinite values"])


def test_a_classifier_sliced_to_two_logits_for_three_classes(bundle, packed):
    assert len(device_bundle.open_bundle(bundle).class_names) == 3
    name = _wrap_output(bundle, "classifier", _slice(1, 2))
    _refused_everywhere(
        bundle,
        packed,
        [f"classifier graph {bundle / name} returned shape ", ", 2) for "],
        ["(3, 2) for 3 input row(s), not (3, 3)"],
    )


def test_a_backbone_answering_1e38_overflows_into_a_check_not_a_warning(bundle, packed):
    _wrap_output(bundle, "backbone", _scale(1e38))
    _refused_everywhere(bundle, packed, ["returned NaN or infinite values on inputs up to |", "e+38|"])
    b = device_bundle.Bundle.open(bundle)  # a device-fitted projector (numpy, not a graph) overflows the same way
    b.projector = (np.ones_like(b.artifact["projector.weight"]), np.zeros_like(b.artifact["projector.bias"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            EdgeddError, match=r"device-fitted projector overflowed on the features of the backbone graph .*e\+38"
        ):
            b.predict(_images(packed))


def test_a_two_megabyte_class_name_is_refused_in_one_short_line(bundle, packed):
    resign(bundle, lambda meta: meta["class_names"].__setitem__(0, "x" * 2_000_000))
    for argv in (
        ["predict", str(bundle), *_images(packed, 1)],
        ["inspect", str(bundle)],
        ["deploy-check", str(bundle)],
    ):
        err = one_line_error(CliRunner().invoke(app, argv), "2000000 characters long, more than 256")
        assert len(err) < 1000, len(err)


def _many_images(root, n: int):
    """``n`` small PNGs in two of the bundle's class folders (one file written, then copied)."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        c = ("circle", "square")[i % 2]
        dst = root / c / f"{i}.png"
        if i < 2:
            (root / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(dst)
        else:
            shutil.copy(root / c / f"{i % 2}.png", dst)
        files.append(str(dst))
    return files


def test_memory_is_bounded_by_the_batch_not_the_input_count(bundle, tmp_path, monkeypatch):
    """predict, Bundle.predict and deploy-check --data decode, run and score BATCH images at a time:
    when the first batch reaches the backbone, at most BATCH images have been decoded, and no graph
    is ever fed more than BATCH rows (counted, not timed)."""
    n = 3 * infer.BATCH + 5
    files = _many_images(tmp_path / "many", n)
    decoded, fed = [0], []
    real_canvas, real_run = inputs.load_canvas, infer.run_checked

    def counting_canvas(*a, **k):
        decoded[0] += 1
        return real_canvas(*a, **k)

    def counting_run(b, role, x):
        if role == "backbone":
            fed.append((len(x), decoded[0]))
        return real_run(b, role, x)

    monkeypatch.setattr(inputs, "load_canvas", counting_canvas)
    monkeypatch.setattr(accuracy, "load_canvas", counting_canvas)
    monkeypatch.setattr(infer, "run_checked", counting_run)
    for label, go in (
        ("predict", lambda: CliRunner().invoke(app, ["predict", str(bundle), *files, "--json"])),
        ("Bundle.predict", lambda: device_bundle.Bundle.open(bundle).predict(files)),
        (
            "deploy-check --data",
            lambda: CliRunner().invoke(
                app, ["deploy-check", str(bundle), "--data", str(tmp_path / "many"), "--no-fine-tune", "--json"]
            ),
        ),
    ):
        decoded[0], fed[:] = 0, []
        r = go()
        if label == "predict":
            assert r.exit_code == 0 and len(json.loads(r.stdout)["predictions"]) == n, r.stderr
        if label == "deploy-check --data":
            assert r.exit_code in (0, 3) and f"on {n} images" in r.stdout, r.output
        data_runs = [f for f in fed if f[1] > 0]  # deploy-check's own synthetic runs decode no files
        assert data_runs and data_runs[0][1] <= infer.BATCH, (label, data_runs[:3])
        assert max(rows for rows, _ in fed) <= infer.BATCH, label
        assert decoded[0] == n, label
