"""Run code as on a device install: in a subprocess where importing torch, timm, torchvision, onnx or
matplotlib raises ModuleNotFoundError, as it does where they are not installed. The one such harness
of the tests (tests/test_device_light.py, tests/test_cli_conventions.py)."""

from __future__ import annotations

import json
import subprocess
import sys

BLOCKED = ("torch", "timm", "torchvision", "onnx", "matplotlib")  # the host install's packages

PRELUDE = rf"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a device install)", name=name)

sys.meta_path.insert(0, _Block())
"""

# Runs `edgedd ARGV` for each ARGV in the JSON list argv[1]; prints RESULT {codes, heavy, edgedd}: the exit
# codes, the blocked packages that got imported anyway (none, unless the blocker failed) and the edgedd modules loaded.
_CLI = (
    PRELUDE
    + r"""
import json
from edgedd.cli.host import main

codes = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["edgedd", *argv]
    try:
        main()
        codes.append(0)
    except SystemExit as e:
        codes.append(e.code or 0)
print("RESULT " + json.dumps({"codes": codes, "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED)),
                              "edgedd": sorted(m for m in sys.modules if m.split(".")[0] == "edgedd")}))
"""
)


def run_blocked(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c PRELUDE+code *args``: the code runs with the host packages unimportable."""
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + code, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def run_cli_blocked(argvs: list[list[str]], timeout: float = 300) -> tuple[dict, subprocess.CompletedProcess]:
    """Run the edgedd commands ``argvs`` one after another in one blocked process: (RESULT, the process)."""
    r = subprocess.run([sys.executable, "-c", _CLI, json.dumps(argvs)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and "RESULT " in r.stdout, r.stderr[-3000:]
    return json.loads(r.stdout.rsplit("RESULT ", 1)[1]), r
