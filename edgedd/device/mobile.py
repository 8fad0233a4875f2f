"""Execution providers and mobile readiness: which providers this onnxruntime has, and how much
of a graph a phone accelerator would take, as onnxruntime's own mobile checker computes it.

The figures come from ``onnxruntime.tools.mobile_helpers.usability_checker`` run as a library
(the functions behind ``python -m onnxruntime.tools.check_onnx_model_mobile_usability``), never
re-implemented here: the graph is optimised at onnxruntime's basic level first, as the checker
does, then each provider's supported-operator table is applied with fixed input sizes required
(what the provider needs to take a node). That module imports the ``onnx`` package (and
``onnxruntime.tools`` imports torch where torch is installed), which a device install lacks, so
on a device the figures are "not available" with the reason, and deploy-check reports the ones
pack recorded on the host instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnxruntime as ort

REMOTE_ONLY = ("AzureExecutionProvider",)  # present in the list, but runs nothing on this device
# checker name -> (the function's provider table, or None for NNAPI's); the three the checker reports
TARGETS = {
    "NNAPI": None,
    "CoreML MLProgram": "coreml_supported_mlprogram_ops.md",
    "CoreML NeuralNetwork": "coreml_supported_neuralnetwork_ops.md",
}


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has that run on this device, in its priority order."""
    return [p for p in ort.get_available_providers() if p not in REMOTE_ONLY]


def readiness(data: bytes) -> dict:
    """``{"available": True, "targets": {name: {nodes, supported_nodes, partitions, supported_pct,
    suitability}}}`` for one serialised ONNX graph, or ``{"available": False, "reason": ...}``
    where onnxruntime's checker cannot be imported or fails."""
    try:
        from onnxruntime.tools.mobile_helpers import usability_checker as uc
        from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model
    except Exception as e:  # ImportError on a device install; anything its imports raise elsewhere
        return {
            "available": False,
            "reason": f"onnxruntime.tools.mobile_helpers cannot be imported ({type(e).__name__}: {str(e)[:120]})",
        }
    try:
        with tempfile.TemporaryDirectory(prefix="edgedd-mobile-") as tmp:
            src, opt = Path(tmp) / "model.onnx", Path(tmp) / "model.opt.onnx"
            src.write_bytes(data)
            optimize_model(src, opt, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(opt).model_with_shape_info
            targets = {}
            for name, table in TARGETS.items():
                info = (
                    uc.check_nnapi_partitions(model, True)
                    if table is None
                    else uc.check_coreml_partitions(model, True, table)
                )
                targets[name] = {
                    "nodes": info.num_nodes,
                    "supported_nodes": info.num_supported_nodes,
                    "partitions": info.num_partitions,
                    "supported_pct": round(100.0 * info.num_supported_nodes / max(info.num_nodes, 1), 1),
                    "suitability": info.suitability().name,
                }
    except Exception as e:  # the checker's own failures: a figure it cannot compute is not reported
        return {
            "available": False,
            "reason": f"onnxruntime's mobile checker failed ({type(e).__name__}: {str(e)[:120]})",
        }
    return {"available": True, "targets": targets}
