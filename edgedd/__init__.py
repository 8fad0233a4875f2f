"""edgedd: dataset distillation on frozen self-supervised backbones, packaged for the edge.

The Python API (docs/API.md), the same library functions the ``edgedd`` commands call:

* host side (needs the ``host`` extra: torch, timm, onnx): :func:`edgedd.distill` with
  :class:`DistillConfig`, :class:`StageIConfig` and :class:`RunOptions`; :func:`edgedd.evaluate`
  (``edgedd.evaluate.evaluate_run``) with :class:`EvalConfig`; :func:`edgedd.pack` with
  :class:`PackConfig`;
* device side (numpy, onnxruntime, Pillow): :class:`edgedd.Bundle`, ``Bundle.open(path)`` then
  ``.predict(images)``.

Every name is imported on first use (PEP 562), so ``import edgedd`` imports neither torch nor
onnxruntime, and ``edgedd.Bundle`` never imports torch.
Which edgedd modules the device side may import: ``edgedd.device.DEVICE_MODULES``.

``edgedd.distill`` and ``edgedd.evaluate`` are also the submodules ``edgedd/distill.py`` and
``edgedd/evaluate.py`` (``from edgedd.distill import RunOptions`` keeps working): those two modules
are made callable, ``edgedd.distill(...)`` calling ``edgedd.distill.distill`` and
``edgedd.evaluate(...)`` calling ``edgedd.evaluate.evaluate_run``.
"""

from __future__ import annotations

import importlib
import sys
import types

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

# name -> (module, attribute); attribute None: the (callable) submodule itself
_LAZY = {
    "distill": ("edgedd.distill", None),
    "evaluate": ("edgedd.evaluate", None),
    "pack": ("edgedd.export.pack", "pack"),
    "DistillConfig": ("edgedd.config", "DistillConfig"),
    "StageIConfig": ("edgedd.config", "StageIConfig"),
    "RunOptions": ("edgedd.distill", "RunOptions"),
    "EvalConfig": ("edgedd.evaluate", "EvalConfig"),
    "PackConfig": ("edgedd.export.pack", "PackConfig"),
    "Bundle": ("edgedd.device.runtime", "Bundle"),
}
# submodule -> the function calling it runs
_CALLABLE_SUBMODULES = {"distill": "distill", "evaluate": "evaluate_run"}


class _CallableModule(types.ModuleType):
    """A submodule that is also the API function it is named after (see the module docstring)."""

    def __call__(self, *args, **kwargs):
        return getattr(self, _CALLABLE_SUBMODULES[self.__name__.rsplit(".", 1)[1]])(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        return inspect.signature(getattr(self, _CALLABLE_SUBMODULES[self.__name__.rsplit(".", 1)[1]]))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # The import system binds a loaded submodule here (edgedd.distill = <module>), whichever
        # import loaded it first: the two API submodules become callable at that moment.
        if name in _CALLABLE_SUBMODULES and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    if attr is not None:
        globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
