"""The device side of edgedd: imports only numpy, onnxruntime and safetensors (Pillow to decode
image files). Never torch or timm.

What a device may import
------------------------
:data:`DEVICE_MODULES` is every edgedd module a device install (numpy, onnxruntime, safetensors,
Pillow, typer) may import, and the rule for each is the same: it imports only the standard
library, those packages and other modules of this list, at top level or lazily inside a function.
``edgedd.device`` stands for this package and every module in it. The one exception is
``edgedd.cli``: its host commands (distill, evaluate, pack, report) import host modules, lazily,
inside the command. ``tests/test_device_boundary.py`` checks the rule on the source (every import,
lazy ones included); ``tests/test_device_light.py`` runs the device commands and ``edgedd.Bundle``
with torch, timm, torchvision, onnx and matplotlib unimportable.
"""

DEVICE_MODULES = (
    "edgedd",  # the package: every public name is imported lazily (edgedd.Bundle from edgedd.device.runtime)
    "edgedd.__main__",
    "edgedd.cli",
    "edgedd.cli_app",  # the app and its conventions, shared by edgedd.cli and edgedd.cli_device
    "edgedd.cli_device",  # deploy-check, predict, inspect, export-data
    "edgedd.config",  # standard library only; the CLI's option choices and defaults
    "edgedd.errors",
    "edgedd.terminal",
    "edgedd.paths",
    "edgedd.atomic",
    "edgedd.stio",
    "edgedd.images",
    "edgedd.copyratio",  # numpy only: the copy ratio's figures and the one line inspect and deploy-check print
    "edgedd.device",  # and every module under it
)
