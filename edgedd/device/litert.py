"""``--runtime litert``: a bundle's ``.tflite`` graphs (``pack --litert``) through LiteRT's interpreter
(the ``ai-edge-litert`` package, an optional device dependency: ``pip install ai-edge-litert``).

The same closed world as the ONNX graphs: each file is read once by :func:`graphs.read_graph`
(bare name, regular file, no symlink, sha256 checked on the bytes) and the *same bytes* go to the
interpreter (``model_content``), never the path. A ``.tflite`` FlatBuffer holds its weights (LiteRT
has no external-data tensors to refuse). :class:`LiteRTSession` gives an interpreter the few
methods of an onnxruntime session the device code calls (``get_inputs``, ``run``,
``get_providers``), so every check runs unchanged; the graphs are converted at a fixed batch, so
a batch runs as that many fixed-size calls (the streaming use a phone makes of them). onnxruntime's
per-run time limit (ortrun) cannot stop an interpreter call: LiteRT has no cancellation flag.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edgedd.core.errors import EdgeddError

PACKAGE = "ai-edge-litert"
TFLITE_IDENTIFIER = b"TFL3"  # the FlatBuffer file identifier of a .tflite model, bytes 4..8


def interpreter_class():
    """LiteRT's Interpreter, or one line saying how to install it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise EdgeddError(
            f"--runtime litert needs the {PACKAGE} package ({e})", f"pip install {PACKAGE}, or use --runtime onnx"
        ) from None
    return Interpreter


class LiteRTSession:
    """One ``.tflite`` graph behind an onnxruntime-session-like interface (one input, one output)."""

    def __init__(self, data: bytes, name: str, threads: int | None = None):
        Interpreter = interpreter_class()
        if data[4:8] != TFLITE_IDENTIFIER:
            raise EdgeddError(
                f"{name} is not a LiteRT (.tflite) model", "the bundle was altered; re-copy it or re-run edgedd pack"
            )
        try:
            self.interp = Interpreter(model_content=data, num_threads=threads)
            self.interp.allocate_tensors()
            self._in, self._out = self.interp.get_input_details(), self.interp.get_output_details()
        except Exception as e:  # LiteRT's own errors (ValueError, RuntimeError)
            raise EdgeddError(
                f"LiteRT cannot load {name} ({type(e).__name__})",
                f"check the {PACKAGE} version (see the bundle's meta)",
            ) from None
        if len(self._in) != 1 or len(self._out) != 1:
            raise EdgeddError(
                f"{name} has {len(self._in)} inputs and {len(self._out)} outputs, not one each",
                "the bundle was altered; re-copy it or re-run edgedd pack",
            )
        self.batch = int(self._in[0]["shape"][0])
        self.name = name

    def get_inputs(self):
        return [SimpleNamespace(name=self._in[0]["name"], shape=list(self._in[0]["shape"]))]

    def get_providers(self) -> list[str]:
        return ["LiteRT interpreter"]

    def run(self, _outputs, feeds: dict, _options=None) -> list[np.ndarray]:
        (x,) = feeds.values()
        want = tuple(self._in[0]["shape"][1:])
        if tuple(x.shape[1:]) != want:
            raise EdgeddError(
                f"{self.name} takes inputs of shape {want}, got {tuple(x.shape[1:])}", "report this as a bug"
            )
        out = []
        for s in range(0, len(x), self.batch):  # fixed-size calls; the last one padded with zeros
            chunk = x[s : s + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *want), chunk.dtype)])
            self.interp.set_tensor(
                self._in[0]["index"], _to_input(np.ascontiguousarray(chunk, np.float32), self._in[0])
            )
            self.interp.invoke()
            out.append(_from_output(np.array(self.interp.get_tensor(self._out[0]["index"])), self._out[0])[:n])
        y = np.concatenate(out) if out else np.zeros((0, *self._out[0]["shape"][1:]), np.float32)
        if not np.isfinite(y).all():
            raise EdgeddError(
                f"LiteRT gave non-finite outputs for {self.name}",
                "the bundle may be altered; re-copy it or re-run edgedd pack",
            )
        return [y]


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """A float batch as the graph's input: itself, or quantised (q = round(x / scale) + zero_point,
    clipped to the integer type) where the converter made the input integer (an int8 graph)."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _from_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """The graph's output as float32: dequantised, (q - zero_point) * scale, where it is integer."""
    if y.dtype.kind == "f":
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
