"""edgedd: dataset distillation on frozen self-supervised backbones, packaged for the edge.

The Python API (docs/API.md), the same library functions the ``edgedd`` commands call:

* host side (needs the ``host`` extra: torch, timm, onnx): :func:`edgedd.distill` with
  :class:`DistillConfig`, :class:`StageIConfig` and :class:`RunOptions`; :func:`edgedd.evaluate`
  with :class:`EvalConfig`; :func:`edgedd.pack` with :class:`PackConfig`;
* device side (numpy, onnxruntime, Pillow): :class:`edgedd.Bundle`, ``Bundle.open(path)`` then
  ``.predict(images)``.

Every name is imported on first use (PEP 562), so ``import edgedd`` imports neither torch nor
onnxruntime, ``edgedd.Bundle`` never imports torch, and the configs (``edgedd.DistillConfig``,
``edgedd.EvalConfig``, ``edgedd.PackConfig``) come from :mod:`edgedd.core.config`, standard library
only. The layout and which package may import which: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "DistillConfig",
    "EvalConfig",
    "PackConfig",
    "RunOptions",
    "StageIConfig",
    "__version__",
    "distill",
    "evaluate",
    "pack",
]

# name -> (module, attribute)
_LAZY = {
    "distill": ("edgedd.distillation.pipeline", "distill"),
    "evaluate": ("edgedd.evaluation.evaluate", "evaluate_run"),
    "pack": ("edgedd.export.pack", "pack"),
    "DistillConfig": ("edgedd.core.config", "DistillConfig"),
    "StageIConfig": ("edgedd.core.config", "StageIConfig"),
    "RunOptions": ("edgedd.core.config", "RunOptions"),
    "EvalConfig": ("edgedd.core.config", "EvalConfig"),
    "PackConfig": ("edgedd.core.config", "PackConfig"),
    "Bundle": ("edgedd.device.bundle", "Bundle"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
