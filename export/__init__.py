"""edgedd.export: the ONNX side (host models -> device files).

This folder is the repository's ``export/`` and installs as ``edgedd.export`` (see
``pyproject.toml``'s ``package-dir``): :mod:`.pack` (``edgedd pack``: the bundle), :mod:`.onnx_graphs`
(ONNX export, parity, int8), :mod:`.edge_path` (the device's path measured on the host) and
:mod:`.projector` (the packed projector's fit).
"""
