"""The device side never imports torch, timm or torchvision: deploy-check, predict, inspect and
export-data (of an ImageFolder) run in a process where importing them raises."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

SCRIPT = r"""
import importlib.abc, json, sys
HEAVY = ("torch", "timm", "torchvision")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is blocked on the device")

sys.meta_path.insert(0, Block())
from edgedd.cli import main

codes = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["edgedd", *argv]
    try:
        main()
        codes.append(0)
    except SystemExit as e:
        codes.append(e.code or 0)
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
print("RESULT " + json.dumps({"codes": codes, "heavy": loaded}))
"""


def test_device_commands_run_without_torch(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    img = str(sorted((packed["heldout"] / "stripes").iterdir())[0])
    argvs = [
        ["deploy-check", str(bundle), "--data", str(packed["heldout"]), "--json"],
        ["predict", str(bundle), img, "--json"],
        ["inspect", str(bundle)],
        ["deploy-check", str(bundle), "--no-fine-tune"],
        ["export-data", str(packed["heldout"]), str(tmp_path / "exported")],  # an ImageFolder source needs no host install
    ]
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(argvs)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.rsplit("RESULT ", 1)[1])
    assert result == {"codes": [0, 0, 0, 0, 0], "heavy": []}, r.stderr
    assert sorted(p.name for p in (tmp_path / "exported").iterdir() if not p.name.startswith(".")) == ["circle", "square", "stripes"]
    report, _ = json.JSONDecoder().raw_decode(r.stdout)  # the first --json object printed
    assert report["ok"] and "data_top1" in report


def test_blocker_really_blocks():
    """The harness itself: a host import fails under the blocker (else the test above proves nothing)."""
    code = SCRIPT.split("from edgedd.cli import main")[0] + "\ntry:\n    import torch\nexcept ImportError:\n    print('blocked')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "blocked"


API_SCRIPT = r"""
import json, sys
sys.modules["torch"] = None  # a device install: import torch raises
import edgedd
after_import = sorted(m for m in ("torch", "timm", "onnxruntime") if m in sys.modules and sys.modules[m] is not None)
b = edgedd.Bundle.open(sys.argv[1])
top = b.predict(sys.argv[2], top_k=2)
print(json.dumps({"after_import": after_import, "classes": b.classes, "top": top,
                  "heavy": sorted(m for m in ("torch", "timm", "torchvision") if sys.modules.get(m) is not None)}))
"""


def test_python_api_on_a_device_imports_no_torch(packed, tmp_path):
    """`import edgedd` loads neither torch nor onnxruntime; edgedd.Bundle opens and predicts without torch."""
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    img = str(sorted((packed["heldout"] / "stripes").iterdir())[0])
    r = subprocess.run([sys.executable, "-c", API_SCRIPT, str(bundle), img], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["after_import"] == [] and out["heavy"] == [] and out["classes"] == ["circle", "square", "stripes"]
    assert len(out["top"]) == 2 and out["top"][0][0] in out["classes"]
