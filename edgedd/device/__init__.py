"""The device side of edgedd: imports only numpy, onnxruntime and safetensors (Pillow to decode
image files). Never torch or timm.

What a device may import
------------------------
A module is device-safe when :func:`is_device_module` says so: the package ``edgedd`` itself (every
public name is imported lazily), ``edgedd.__main__``, and everything under the prefixes
:data:`DEVICE_PREFIXES`. A device-safe module imports only the standard library, numpy,
onnxruntime, safetensors, Pillow, typer and other device-safe modules, at top level or lazily inside
a function. The one exception is ``edgedd.cli.host``: its host commands (distill, evaluate, pack,
report) import host modules, lazily, inside the command. ``tests/test_device_boundary.py`` checks
the rule on the source (every import, lazy ones included); ``tests/test_device_light.py`` runs the
device commands and ``edgedd.Bundle`` with torch, timm, torchvision, onnx and matplotlib unimportable.

The modules of this package
---------------------------
Each idea lives in its own module; read them in this order:

    bundle     Bundle, open_bundle: the artifact and every graph verified, the sessions open
    inputs     images -> normalised edge inputs (``edgedd predict``'s preprocessing)
    infer      edge inputs -> backbone features -> logits -> probabilities
    finetune   the projector fitted on this device (the math), and its sidecar file
    accuracy   top-1 on a labelled folder; chance and the host's expected top-1
    sidecar    the files the device writes beside a bundle, one set per backbone variant
    latency    batch-1 latency, and the intra-op thread count deploy-check chooses
    checks     deploy_check: every check of ``edgedd deploy-check``, one step each
    predict    what ``edgedd predict`` and ``edgedd inspect`` answer
"""

DEVICE_PREFIXES = ("edgedd.core", "edgedd.device", "edgedd.cli")


def is_device_module(name: str) -> bool:
    """Whether the edgedd module ``name`` may be imported on a device install."""
    return name in ("edgedd", "edgedd.__main__") or any(name == p or name.startswith(p + ".") for p in DEVICE_PREFIXES)
