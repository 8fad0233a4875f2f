"""A bundle is a closed world: graph names from the metadata, external data, the bytes onnxruntime gets.

Every crafted artifact here is re-signed (correct edgedd.sha256), so only the check under test can
stop it."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _crafted import one_line_error, resign
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.errors import EdgeddError
from edgedd.device import bundle as device_bundle
from edgedd.device import infer
from edgedd.device.onnx_scan import Malformed, uses_external_data


def _point_backbone_at(bundle, name, sha256=None):
    def edit(meta):
        if name is _DROP:
            meta["onnx"]["backbone"].pop("file")
        else:
            meta["onnx"]["backbone"]["file"] = name
        if sha256:
            meta["onnx"]["backbone"]["sha256"] = sha256

    resign(bundle, edit)


_DROP = object()


def test_graph_paths_outside_the_bundle_are_refused_alike(bundle, tmp_path, opened, packed):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(
        bundle / "backbone.onnx", outside / "backbone.onnx"
    )  # a valid graph: before, deploy-check PASSED with it
    good = hashlib.sha256((bundle / "backbone.onnx").read_bytes()).hexdigest()
    passwd = hashlib.sha256(open("/etc/passwd", "rb").read()).hexdigest() if os.path.exists("/etc/passwd") else good
    image = str(next((packed["heldout"] / "circle").iterdir()))
    cases = {
        "../outside/backbone.onnx": good,
        str(outside / "backbone.onnx"): good,
        "/etc/passwd": passwd,  # a right guess of the hash must not be confirmed
        "../nowhere/missing.onnx": good,
        "sub/backbone.onnx": good,
        "..\\outside\\backbone.onnx": good,
        "backbone.onnx\0.txt": good,
        "..": good,
        "": good,
        ".hidden.onnx": good,
        7: good,
        _DROP: good,
    }
    lines = set()
    for name, sha in cases.items():
        _point_backbone_at(bundle, name, sha)
        for argv in (["deploy-check", str(bundle)], ["predict", str(bundle), image]):
            with opened:
                r = CliRunner().invoke(app, argv)
            lines.add(one_line_error(r, "backbone graph", "other than a file name inside the bundle"))
            # nothing the crafted name points at was opened or listed, not even inside the bundle
            touched = [
                p
                for p in opened.seen
                if ".." in p
                or p.startswith("/etc/")
                or "nowhere" in p
                or "/sub/" in p
                or "\\" in p
                or (p.startswith(str(tmp_path)) and not p.startswith(str(bundle)))
            ]
            assert touched == [], (name, touched)
    assert len(lines) == 1, lines  # one message, whatever the path: no oracle


def test_a_symlinked_graph_is_refused(bundle, tmp_path):
    real = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "backbone.onnx", real)
    (bundle / "backbone.onnx").symlink_to(real)
    one_line_error(CliRunner().invoke(app, ["deploy-check", str(bundle)]), "backbone.onnx", "a symbolic link")


def test_a_graph_larger_than_protobuf_allows_is_refused_before_it_is_read(bundle):
    """A 3 GiB sparse backbone.onnx: one line from its size (reading it would take 3 GiB of memory)."""
    with open(bundle / "backbone.onnx", "r+b") as f:
        f.truncate(3 * 2**30)
    with pytest.raises(EdgeddError, match="backbone.onnx is 3221225472 bytes, more than an ONNX graph can be"):
        device_bundle.open_bundle(bundle)
    one_line_error(
        CliRunner().invoke(app, ["deploy-check", str(bundle)]), "backbone.onnx", "more than an ONNX graph can be"
    )


def test_each_graph_is_read_once_and_the_same_bytes_go_to_onnxruntime(bundle, monkeypatch, opened):
    got = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda model, **kw: got.append(model) or real(model, **kw))
    with opened:
        b = device_bundle.open_bundle(bundle)
    assert all(isinstance(m, bytes) for m in got) and len(got) == 4  # the three roles and the fixed-shape backbone
    for role, model in zip(device_bundle.ROLES + ("backbone_static",), got, strict=True):
        assert hashlib.sha256(model).hexdigest() == b.meta["onnx"][role]["sha256"]
    for f in (
        "backbone.onnx",
        "projector.onnx",
        "classifier.onnx",
        "backbone.static.onnx",
    ):  # once each, never again by path
        assert sum(p.endswith(f) for p in opened.seen) == 1, (f, opened.seen)
    # swapping a file after the check changes nothing: the sessions hold the hashed bytes
    shutil.copy(bundle / "classifier.onnx", bundle / "backbone.onnx")
    shutil.copy(bundle / "classifier.onnx", bundle / "backbone.static.onnx")
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert infer.backbone_features(b, x).shape[1] == b.artifact["projector.weight"].shape[1]


def _external_model(location: str, where: str = "initializer") -> bytes:
    """A tiny Add graph whose constant lives in an external file (as onnx.save_model(..., save_as_external_data)
    writes).
    """
    w = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 4])
    if where == "initializer":
        g = helper.make_graph([helper.make_node("Add", ["images", "w"], ["features"])], "g", [x], [y], [w])
    elif where == "constant in a subgraph":  # If(then: Constant(value=w))
        c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])
        then = helper.make_graph([helper.make_node("Constant", [], ["c"], value=w)], "then", [], [c])
        ok = helper.make_tensor_value_info("ok", TensorProto.BOOL, [])
        g = helper.make_graph(
            [
                helper.make_node("If", ["ok"], ["c"], then_branch=then, else_branch=then),
                helper.make_node("Add", ["images", "c"], ["features"]),
            ],
            "g",
            [x, ok],
            [y],
        )
    else:  # a sparse initializer whose values are external
        idx = numpy_helper.from_array(np.array([0], dtype=np.int64), "w_idx")
        w.dims[:] = [1]
        sp = helper.make_sparse_tensor(w, idx, [4])
        g = helper.make_graph(
            [helper.make_node("Add", ["images", "w"], ["features"])], "g", [x], [y], sparse_initializer=[sp]
        )
        g.sparse_initializer[0].values.name = "w"
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


@pytest.mark.parametrize("where", ["initializer", "constant in a subgraph", "sparse initializer"])
@pytest.mark.parametrize("location", ["secret.bin", "../outside/secret.bin", "/etc/passwd"])
def test_graphs_with_external_data_are_refused(bundle, tmp_path, monkeypatch, where, location):
    # onnxruntime loading from bytes resolves a relative location against the current directory:
    # put a "secret" there, so nothing but edgedd's own check stands between it and the output.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"root:x:0:0:secret")
    data = _external_model(location, where)
    assert uses_external_data(data)
    (bundle / "backbone.onnx").write_bytes(data)
    _point_backbone_at(bundle, "backbone.onnx", hashlib.sha256(data).hexdigest())
    one_line_error(CliRunner().invoke(app, ["deploy-check", str(bundle)]), "keeps tensors in external files")


def test_external_data_scan_on_real_graphs(packed):
    for f in ("backbone.onnx", "projector.onnx", "classifier.onnx"):
        data = (packed["bundle"] / f).read_bytes()
        assert not uses_external_data(data)
        m = onnx.load_from_string(data)  # the same graph with its largest initializer moved out
        big = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        onnx.external_data_helper.set_external_data(big, "weights.bin")
        big.ClearField("raw_data")
        big.data_location = TensorProto.EXTERNAL
        assert uses_external_data(m.SerializeToString())
    for junk in (b"\x0a\xff\xff\xff\xff\x0f", b"\x0b", b"\x3a\x05ab"):  # huge length, group, truncated
        with pytest.raises(Malformed):
            uses_external_data(junk)
