"""Host models -> ONNX graphs, each checked by ``onnx.checker`` (full) and against torch.

* backbone: ``torch.onnx.export`` (dynamo exporter) with a dynamic batch axis; the image size is
  fixed at the edge input size (a declared dynamic image size is only real for models built with
  ``dynamic_img_size=True``, so edgedd does not declare one).
* projector / classifier: a single ``Gemm`` (y = x W^T + b) written with ``onnx.helper``:
  tiny, deterministic, no exporter needed.

Every graph carries metadata props (``edgedd.*``: role, model, preprocessing, version).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgedd.backbones import plain_attention
from edgedd.errors import EdgeddError

OPSET = 18
PARITY_BATCHES = (1, 3)


def _with_metadata(model: onnx.ModelProto, meta: dict) -> onnx.ModelProto:
    del model.metadata_props[:]
    for k in sorted(meta):
        v = meta[k]
        model.metadata_props.append(onnx.StringStringEntryProto(key=f"edgedd.{k}", value=v if isinstance(v, str) else json.dumps(v, sort_keys=True)))
    model.producer_name, model.producer_version = "edgedd", str(meta.get("version", ""))
    return model


def _strip_nondeterminism(model: onnx.ModelProto) -> onnx.ModelProto:
    """Exporter doc strings carry source paths and stack traces; they are not part of the model."""
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for f in model.functions:
        f.doc_string = ""
        for node in f.node:
            node.doc_string = ""
            del node.metadata_props[:]
    return model


def export_backbone(model: torch.nn.Module, input_size: int, meta: dict) -> bytes:
    model = model.eval().float().cpu()
    x = torch.randn(2, 3, input_size, input_size)
    with warnings.catch_warnings(), plain_attention(model):  # the graph the exporter takes; host runs use fused
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=OPSET, input_names=["images"], output_names=["features"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},), verbose=False, optimize=True,
            )
        except Exception as e:
            raise EdgeddError(f"cannot export {meta.get('model')} to ONNX ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                              "pick an edge backbone that torch.export supports (e.g. a timm ViT or ResNet)") from e
    proto = _with_metadata(_strip_nondeterminism(prog.model_proto), meta)
    return proto.SerializeToString(deterministic=True)


def linear_graph(weight: np.ndarray, bias: np.ndarray, input_name: str, output_name: str, meta: dict) -> bytes:
    """y = x W^T + b for x (batch, D_in); W (D_out, D_in) as torch.nn.Linear stores it."""
    d_out, d_in = weight.shape
    node = helper.make_node("Gemm", [input_name, "weight", "bias"], [output_name], transB=1)
    graph = helper.make_graph(
        [node], meta.get("role", "linear"),
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", d_out])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), "weight"),
                     numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return _with_metadata(model, meta).SerializeToString(deterministic=True)


def check(data: bytes, name: str) -> None:
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as e:
        raise EdgeddError(f"the exported {name} graph fails onnx.checker ({str(e).splitlines()[0][:200]})", "report this as a bug") from e


def parity(data: bytes, torch_fn, input_shape: tuple[int, ...], name: str, tol: float = 1e-4, seed: int = 0) -> dict:
    """max |ORT - torch| / (1 + max |torch|) at two batch sizes; raises above ``tol``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in PARITY_BATCHES:
        x = torch.randn(b, *input_shape, generator=g)
        with torch.no_grad():
            ref = torch_fn(x).float().numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise EdgeddError(f"the {name} graph gives shape {got.shape} for batch {b}, torch {ref.shape}", "report this as a bug")
        worst = max(worst, float(np.abs(got - ref).max() / (1.0 + np.abs(ref).max())))
    if worst > tol:
        raise EdgeddError(f"the {name} graph differs from torch by {worst:.2e} (tolerance {tol:g})", "report this as a bug")
    return {"batches": list(PARITY_BATCHES), "max_rel_error": worst}


class _DropPreprocessAdvice:
    """A logging filter for the one message onnxruntime's quantizer logs on every call: advice to
    run its shape-inference pre-processing, which matters for static quantisation, not the dynamic
    (weight-only) kind used here. Every other record passes."""

    PREFIX = "Please consider to run pre-processing before quantization"

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.PREFIX)


def quantize_int8(data: bytes) -> bytes:
    """Dynamic (weight-only int8, activations quantised at run time) quantisation with onnxruntime."""
    import logging
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs through the root logger (logging.warning), which also installs a stderr
    # handler on first use: filter that one message, and leave the root logger's handlers as found.
    root = logging.getLogger()
    handlers, drop = list(root.handlers), _DropPreprocessAdvice()
    root.addFilter(drop)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(data)
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            model = onnx.load(str(dst))
    finally:
        root.removeFilter(drop)
        root.handlers[:] = handlers
    return model.SerializeToString(deterministic=True)
