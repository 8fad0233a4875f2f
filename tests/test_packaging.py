"""What a non-editable `pip install` gets: every sub-package is listed, export/ installs as
edgedd.export (no top-level `export`), and the shipped weights are package data."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edgedd").rglob("__init__.py")}
    assert on_disk <= listed, f"not in [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert cfg["package-dir"]["edgedd.export"] == "export" and "export" not in listed
    assert (ROOT / "export" / "__init__.py").is_file()
    assert "edgedd.weights" in listed and any("weights/*.safetensors" in g for g in cfg["package-data"]["edgedd"])


def test_license_classifiers_and_typing_marker():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    text = (ROOT / "LICENSE").read_text()
    # PEP 639: an SPDX expression and the file; the TOML-table form is deprecated by setuptools
    assert project["project"]["license"] == "Apache-2.0" and project["project"]["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in project["project"]["classifiers"])  # PEP 639 forbids both
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    classifiers = project["project"]["classifiers"]
    assert "Operating System :: POSIX" in classifiers and "Typing :: Typed" in classifiers
    assert (ROOT / "edgedd" / "py.typed").is_file() and "py.typed" in project["tool"]["setuptools"]["package-data"][
        "edgedd"
    ]


NO_POSIX = r"""
import os, sys, tempfile
sys.modules["resource"] = None  # a platform without the resource module
del os.fchmod                   # ... and without fchmod
from edgedd.core.atomic import write_bytes
from edgedd.device.checks import peak_rss_mb
assert peak_rss_mb() is None
with tempfile.TemporaryDirectory() as d:
    write_bytes(os.path.join(d, "f"), b"x")
    assert open(os.path.join(d, "f"), "rb").read() == b"x"
print("ok")
"""


def test_device_side_runs_without_resource_and_fchmod():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", NO_POSIX], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr
