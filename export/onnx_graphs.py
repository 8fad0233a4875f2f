"""Host models -> ONNX graphs, each checked by ``onnx.checker`` (full) and against torch.

* backbone: ``torch.onnx.export`` (dynamo exporter) with a dynamic batch axis; the image size is
  fixed at the edge input size (a declared dynamic image size is only real for models built with
  ``dynamic_img_size=True``, so edgedd does not declare one).
* projector / classifier: a single ``Gemm`` (y = x W^T + b) written with ``onnx.helper``:
  tiny, deterministic, no exporter needed.

Every graph carries metadata props (``edgedd.*``: role, model, preprocessing, version).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgedd.backbones.forward import plain_attention
from edgedd.core.errors import EdgeddError
from edgedd.host.rng import torch_generator

OPSET = 18
PARITY_BATCHES = (1, 3)


def _with_metadata(model: onnx.ModelProto, meta: dict) -> onnx.ModelProto:
    del model.metadata_props[:]
    for k in sorted(meta):
        v = meta[k]
        model.metadata_props.append(
            onnx.StringStringEntryProto(
                key=f"edgedd.{k}", value=v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            )
        )
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


def cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An fp32 CPU copy in eval mode, for the exporter and for torch's side of ORT parity.

    A copy because ``.float()``/``.cpu()``/``.eval()`` change a module in place and return it: the
    caller's model would end up on the CPU (or be moved back under the CPU work) when it lives on
    another device, and in eval mode when it was training.
    """
    return copy.deepcopy(model).float().cpu().eval()


def export_backbone(model: torch.nn.Module, input_size: int, meta: dict) -> bytes:
    """Exports a copy (``cpu_copy``): the model passed in is left as it was."""
    model = cpu_copy(model)
    x = torch.randn(2, 3, input_size, input_size)
    with warnings.catch_warnings(), plain_attention(model):  # the graph the exporter takes; host runs use fused
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=OPSET,
                input_names=["images"],
                output_names=["features"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                verbose=False,
                optimize=True,
            )
        except Exception as e:
            raise EdgeddError(
                f"cannot export {meta.get('model')} to ONNX ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                "pick an edge backbone that torch.export supports (e.g. a timm ViT or ResNet)",
            ) from e
    proto = _with_metadata(_strip_nondeterminism(prog.model_proto), meta)
    return proto.SerializeToString(deterministic=True)


def linear_graph(weight: np.ndarray, bias: np.ndarray, input_name: str, output_name: str, meta: dict) -> bytes:
    """y = x W^T + b for x (batch, D_in); W (D_out, D_in) as torch.nn.Linear stores it."""
    d_out, d_in = weight.shape
    node = helper.make_node("Gemm", [input_name, "weight", "bias"], [output_name], transB=1)
    graph = helper.make_graph(
        [node],
        meta.get("role", "linear"),
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", d_out])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), "weight"),
            numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return _with_metadata(model, meta).SerializeToString(deterministic=True)


def check(data: bytes, name: str) -> None:
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as e:
        raise EdgeddError(
            f"the exported {name} graph fails onnx.checker ({str(e).splitlines()[0][:200]})", "report this as a bug"
        ) from e


def parity(
    data: bytes,
    torch_fn,
    input_shape: tuple[int, ...],
    name: str,
    tol: float = 1e-4,
    seed: int = 0,
    batches: tuple[int, ...] = PARITY_BATCHES,
) -> dict:
    """max |ORT - torch| / (1 + max |torch|) at each batch size (a static graph: its own); raises above ``tol``.
    ``data``: an ONNX or an ORT-format graph (onnxruntime reads both from bytes)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    g = torch_generator("parity", seed)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, *input_shape, generator=g)
        with torch.no_grad():
            ref = torch_fn(x).float().numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise EdgeddError(
                f"the {name} graph gives shape {got.shape} for batch {b}, torch {ref.shape}", "report this as a bug"
            )
        worst = max(worst, float(np.abs(got - ref).max() / (1.0 + np.abs(ref).max())))
    if worst > tol:
        raise EdgeddError(
            f"the {name} graph differs from torch by {worst:.2e} (tolerance {tol:g})", "report this as a bug"
        )
    return {"batches": list(batches), "max_rel_error": worst}


class _DropPreprocessAdvice:
    """A logging filter for the one message onnxruntime's quantizer logs on every call whose model
    lacks its pre-processing mark: advice to run that shape-inference pre-processing.
    ``quantize_int8`` runs it, so the advice is noise wherever it still appears (a model whose mark
    the optimiser dropped, an onnxruntime that checks differently). Every other record passes."""

    PREFIX = "Please consider to run pre-processing before quantization"

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.PREFIX)


INT8_MODE = "static-qdq-per-channel"
CALIBRATION_BATCH = 16
# How many calibration inputs: MinMax keeps every intermediate tensor of every calibration input
# until it computes the ranges (tens of MB per 224-px input for EfficientNet-Lite0; bench/RESULTS.md,
# bench/lite_int8.py), so the count is bounded by pixels as well: 64 inputs at 224 px, up to 256 at
# small sizes.
CALIBRATION_MAX = 256
CALIBRATION_PIXELS = 64 * 224 * 224


def calibration_count(input_size: int) -> int:
    """The most calibration inputs ``quantize_int8`` should get for a graph of this input size."""
    return max(1, min(CALIBRATION_MAX, CALIBRATION_PIXELS // (input_size * input_size)))


def quantize_int8(data: bytes, calibration: np.ndarray) -> bytes:
    """Static int8 quantisation with onnxruntime, QDQ format: int8 weights per output channel,
    uint8 activations whose ranges (MinMax) are calibrated by running ``calibration`` -- float32
    inputs (N, 3, S, S) for a backbone, normalised exactly as the graph's input -- through the graph.

    Why static and not dynamic: onnxruntime runs this graph with QLinearConv, which has a fast int8
    CPU kernel; dynamic quantisation (activations quantised at run time) becomes ConvInteger, which
    has none, and per-tensor weight scales distort EfficientNet's depthwise convolutions
    (bench/lite_int8.py, bench/RESULTS.md: dynamic 10-20x slower than fp32 at feature cosine
    0.55-0.92; static 1.7-2.0x faster at 0.95-0.98).

    The result is deterministic for the same ``data`` and ``calibration`` (fixed batches, MinMax,
    doc strings stripped); the graph keeps ``data``'s ``edgedd.*`` metadata and adds
    ``edgedd.quantization`` (mode, number of calibration inputs). Memory: MinMax keeps every calibration
    batch's intermediate tensors until the end, so the caller bounds N.
    """
    import logging
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim < 2 or not len(calibration) or not np.isfinite(calibration).all():
        raise EdgeddError(
            f"int8 calibration needs a batch of finite inputs, got shape {calibration.shape}", "report this as a bug"
        )
    source = onnx.load_from_string(data)
    input_name = source.graph.input[0].name

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self):
            s = next(self.batches, None)
            return None if s is None else {input_name: calibration[s : s + CALIBRATION_BATCH]}

    # The quantizer logs through the root logger (logging.warning), which also installs a stderr
    # handler on first use: filter that one message, and leave the root logger's handlers as found.
    root = logging.getLogger()
    handlers, drop = list(root.handlers), _DropPreprocessAdvice()
    root.addFilter(drop)
    try:
        # onnxruntime's quantizer reads and writes paths (and its calibrator saves an augmented
        # model beside them): all of it lives and dies in one temporary directory
        with tempfile.TemporaryDirectory(prefix="edgedd-int8-") as tmp:
            src, pre, dst = (Path(tmp) / f for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
            src.write_bytes(data)
            # shape inference + graph optimisation (BatchNorm folding): ranges are then calibrated
            # on the tensors the quantised graph really has
            quant_pre_process(str(src), str(pre))
            quantize_static(
                str(pre),
                str(dst),
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
            )
            model = onnx.load(str(dst))
    finally:
        root.removeFilter(drop)
        root.handlers[:] = handlers
    meta = {p.key: p.value for p in source.metadata_props}
    meta["edgedd.quantization"] = json.dumps(
        {"mode": INT8_MODE, "calibration_inputs": len(calibration)}, sort_keys=True
    )
    del model.metadata_props[:]
    for k in sorted(meta):
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=meta[k]))
    model.producer_name, model.producer_version = source.producer_name, source.producer_version
    return _strip_nondeterminism(model).SerializeToString(deterministic=True)
