"""The device side never imports torch, timm, torchvision, onnx or matplotlib: deploy-check, predict,
inspect, export-data (of an ImageFolder) and ``edgedd.Bundle`` run in a process where importing them
raises (tests/_blocker.py), and load only edgedd modules of ``edgedd.device.is_device_module``."""

from __future__ import annotations

import json
import shutil

from _blocker import BLOCKED, run_blocked, run_cli_blocked

from edgedd.device import is_device_module


def test_device_commands_run_without_torch(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    img = str(sorted((packed["heldout"] / "stripes").iterdir())[0])
    argvs = [
        ["deploy-check", str(bundle), "--data", str(packed["heldout"]), "--json"],
        ["predict", str(bundle), img, "--json"],
        ["inspect", str(bundle)],
        ["deploy-check", str(bundle), "--no-fine-tune"],
        [
            "export-data",
            str(packed["heldout"]),
            str(tmp_path / "exported"),
        ],  # an ImageFolder source needs no host install
        ["adapt", str(bundle), "--data", str(packed["heldout"])],
    ]
    result, r = run_cli_blocked(argvs)
    assert result["codes"] == [0, 0, 0, 0, 0, 0] and result["heavy"] == [], r.stderr
    assert "edgedd.device.adapt" in result["edgedd"] and "edgedd.device.adaptation" in result["edgedd"]
    assert [
        m for m in result["edgedd"] if not is_device_module(m)
    ] == []  # e.g. edgedd.host.data (lazy torch) stays out
    assert "edgedd.core.images" in result["edgedd"] and "edgedd.device.bundle" in result["edgedd"]
    assert sorted(p.name for p in (tmp_path / "exported").iterdir() if not p.name.startswith(".")) == [
        "circle",
        "square",
        "stripes",
    ]
    report, _ = json.JSONDecoder().raw_decode(r.stdout)  # the first --json object printed
    assert report["ok"] and "data_top1" in report


def test_blocker_really_blocks():
    """The harness itself: each host import fails under the blocker (else the tests here prove nothing)."""
    code = (
        "import importlib\nfor m in BLOCKED:\n    try:\n        importlib.import_module(m)\n    except "
        "ModuleNotFoundError as e:\n        print(e.name)\n"
    )
    assert run_blocked(code).stdout.split() == list(BLOCKED)


API_SCRIPT = r"""
import json, sys
import edgedd
after_import = sorted(m for m in ("torch", "timm", "onnxruntime") if m in sys.modules)
b = edgedd.Bundle.open(sys.argv[1])
top = b.predict(sys.argv[2], top_k=2)
print(json.dumps({"after_import": after_import, "classes": b.classes, "top": top,
                  "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED)),
                  "edgedd": sorted(m for m in sys.modules if m.split(".")[0] == "edgedd")}))
"""


def test_python_api_on_a_device_imports_no_torch(packed, tmp_path):
    """`import edgedd` loads neither torch nor onnxruntime; edgedd.Bundle opens and predicts without torch."""
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    img = str(sorted((packed["heldout"] / "stripes").iterdir())[0])
    r = run_blocked(API_SCRIPT, str(bundle), img)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["after_import"] == [] and out["heavy"] == [] and out["classes"] == ["circle", "square", "stripes"]
    assert [m for m in out["edgedd"] if not is_device_module(m)] == []
    assert len(out["top"]) == 2 and out["top"][0][0] in out["classes"]
