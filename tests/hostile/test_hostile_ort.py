"""Bounded work in onnxruntime: a graph that never ends or asks for gigabytes, inside a bundle whose
hashes are right (re-signed), ends with one line (edgedd.device.ortrun)."""

from __future__ import annotations

import hashlib
import resource
import time

import numpy as np
from _crafted import one_line_error, one_line_error_proc, resign, run_cli
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.device import ortrun


def _model(nodes, inits, extra_inputs=()) -> bytes:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3, None, None])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, None)
    m = helper.make_model(
        helper.make_graph(nodes, "crafted", [x, *extra_inputs], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    return m.SerializeToString()


def endless_loop() -> bytes:
    """Loop(M = 10^12, cond = true) carrying the images through an Identity body: days of work."""
    it = helper.make_tensor_value_info("i", TensorProto.INT64, [])
    c, co = (helper.make_tensor_value_info(n, TensorProto.BOOL, []) for n in ("c", "co"))
    v, vo = (helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("v", "vo"))
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["co"]), helper.make_node("Identity", ["v"], ["vo"])],
        "body",
        [it, c, v],
        [co, vo],
    )
    inits = [numpy_helper.from_array(np.array(10**12, np.int64), "M"), numpy_helper.from_array(np.array(True), "T")]
    return _model([helper.make_node("Loop", ["M", "T", "images"], ["features"], body=body)], inits)


def eight_gib() -> bytes:
    """ConstantOfShape to 2^31 floats (8 GiB), summed."""
    shape = numpy_helper.from_array(np.array([2**31], np.int64), "shape")
    one = numpy_helper.from_array(np.array([1.0], np.float32))
    return _model(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one),
            helper.make_node("ReduceSum", ["big"], ["features"]),
        ],
        [shape],
    )


def _swap_backbone(bundle, model: bytes) -> None:
    (bundle / "backbone.onnx").write_bytes(model)
    resign(bundle, lambda meta: meta["onnx"]["backbone"].__setitem__("sha256", hashlib.sha256(model).hexdigest()))


def test_an_endless_loop_is_stopped_at_the_time_limit(bundle, monkeypatch):
    _swap_backbone(bundle, endless_loop())
    monkeypatch.setenv(ortrun.LIMIT_ENV, "0.5")
    t = time.monotonic()
    r = CliRunner().invoke(app, ["deploy-check", str(bundle)])
    took = time.monotonic() - t
    one_line_error(r, "backbone graph", "backbone.onnx", "time limit of 0.5 s", ortrun.LIMIT_ENV)
    assert took < 10, took


def test_the_time_limit_must_be_a_positive_number(bundle, monkeypatch):
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv(ortrun.LIMIT_ENV, bad)
        one_line_error(CliRunner().invoke(app, ["deploy-check", str(bundle)]), ortrun.LIMIT_ENV, "positive number")


def test_an_ordinary_bundle_runs_under_the_limit_and_the_watchdog_costs_little(packed, monkeypatch):

    from edgedd.device import bundle as device_bundle

    b = device_bundle.open_bundle(packed["bundle"])
    x = np.zeros((1, 3, 32, 32), np.float32)
    sess = b.sessions["backbone"]
    feeds = {sess.get_inputs()[0].name: x}
    for _ in range(20):  # warm-up
        ortrun.run(sess, feeds, "g")

    def best(f, n=200):
        return min(_timed(f) for _ in range(n))

    bare = best(lambda: sess.run(None, feeds))
    guarded = best(lambda: ortrun.run(sess, feeds, "g"))
    assert guarded - bare < 2e-4, (bare, guarded)  # well under the batch-1 latency the check reports
    assert ortrun._WATCHDOG._armed == {}  # every run disarmed its deadline


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def test_a_graph_asking_for_8_gib_gives_one_line_under_an_address_space_limit(bundle):
    _swap_backbone(bundle, eight_gib())
    gib2 = 2 << 30  # 2 GiB of address space: enough for the runtime, not for the graph
    p = run_cli(["deploy-check", bundle], limits=[(resource.RLIMIT_AS, gib2)], timeout=120)
    one_line_error_proc(p, "ran out of memory", "backbone graph")
