"""edgedd.export: the ONNX side (host models -> device files).

This folder is the repository's ``export/`` and installs as ``edgedd.export`` (see
``pyproject.toml``'s ``package-dir``). ONNX export, parity validation and the bundle layout land
here with ``edgedd pack`` (issue 4); nothing here yet.
"""
