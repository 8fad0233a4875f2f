"""What a non-editable `pip install` gets: every sub-package is listed, export/ installs as
edgedd.export (no top-level `export`), and the shipped weights are package data."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edgedd").rglob("__init__.py")}
    assert on_disk <= listed, f"not in [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert cfg["package-dir"]["edgedd.export"] == "export" and "export" not in listed
    assert (ROOT / "export" / "__init__.py").is_file()
    assert "edgedd.weights" in listed and any("weights/*.safetensors" in g for g in cfg["package-data"]["edgedd"])
