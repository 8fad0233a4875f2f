"""``pack --litert``: the edge path as LiteRT (``.tflite``) graphs, converted with ``litert-torch``.

An optional host extra (``pip install edgedd[litert]``): nothing else in edgedd imports it, and a
pack without ``--litert`` never does. Each graph is converted at the fixed batch of the static
ONNX backbone (LiteRT's delegates, like NNAPI and CoreML, want fixed shapes), checked against
torch with LiteRT's own interpreter (``ai-edge-litert``, which litert-torch installs), and hashed
in the artifact's ``litert`` section. The int8 backbone uses LiteRT's PT2E quantiser (static,
per-channel symmetric int8 weights, activations calibrated on the same synthetic views as the
ONNX int8 graph); its difference from torch is recorded, not bounded (int8 is not within 1e-3),
and deploy-check --runtime litert --int8 judges it on the device like the ONNX int8 graph.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch

from edgedd.core.errors import EdgeddError

EXTRA = "pip install 'edgedd[litert]' (litert-torch)"


def _litert():
    try:
        import litert_torch
    except Exception as e:  # ImportError, or what its own imports raise on an unsupported torch
        raise EdgeddError(
            f"pack --litert needs the litert-torch package ({type(e).__name__}: {str(e)[:160]})",
            EXTRA + ", or pack without --litert",
        ) from None
    return litert_torch


def _progress_to_stderr():
    """litert-torch prints its conversion progress on stdout, which edgedd keeps for results (--json)."""
    return contextlib.redirect_stdout(sys.stderr)


def _content(model) -> bytes:
    """The .tflite bytes of a converted model (``LiteRTModel.model_content``)."""
    content = model.model_content
    return bytes(content() if callable(content) else content)


def convert(module: torch.nn.Module, sample: torch.Tensor, name: str) -> bytes:
    """fp32 ``module`` traced at ``sample``'s shape -> .tflite bytes."""
    litert_torch = _litert()
    try:
        with _progress_to_stderr():
            return _content(litert_torch.convert(module.eval(), (sample,)))
    except Exception as e:
        raise EdgeddError(
            f"litert-torch cannot convert the {name} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})",
            "pack without --litert (the ONNX graphs do not need it)",
        ) from e


def convert_int8(module: torch.nn.Module, sample: torch.Tensor, calibration: np.ndarray, name: str) -> bytes:
    """Static int8 through LiteRT's PT2E quantiser, calibrated on ``calibration`` (N, 3, S, S), in batches of
    ``sample``'s size.
    """
    litert_torch = _litert()
    try:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        graph = torch.export.export(module.eval(), (sample,)).module()
        prepared = prepare_pt2e(graph, quantizer)
        b = len(sample)
        with torch.no_grad():
            for s in range(0, len(calibration) - b + 1, b):
                prepared(torch.from_numpy(calibration[s : s + b]))
        quantized = convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(quantized)
        with _progress_to_stderr():
            return _content(
                litert_torch.convert(quantized, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
            )
    except EdgeddError:
        raise
    except Exception as e:
        raise EdgeddError(
            f"litert-torch cannot quantise the {name} to int8 ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})",
            "pack without --int8 or without --litert",
        ) from e


def parity(data: bytes, torch_fn, sample: torch.Tensor, name: str, tol: float = 1e-3) -> dict:
    """max |LiteRT - torch| / (1 + max |torch|) on ``sample``; raises above ``tol`` (None: record only)."""
    from edgedd.device.litert import LiteRTSession  # the device's own runner: float in, float out

    got = LiteRTSession(data, name).run(None, {"x": sample.numpy()})[0]
    with torch.no_grad():
        ref = torch_fn(sample).float().numpy()
    err = float(np.abs(got - ref).max() / (1.0 + np.abs(ref).max()))
    if tol is not None and err > tol:
        raise EdgeddError(
            f"the LiteRT {name} differs from torch by {err:.2e} (tolerance {tol:g})",
            "pack without --litert, or report this as a bug",
        )
    return {"batches": [len(sample)], "max_rel_error": err}


def version() -> str:
    return str(getattr(_litert(), "__version__", "unknown"))
