"""The device boundary, read from the source: every module of ``edgedd.device.is_device_module`` imports
only the standard library, the device install's packages and other modules of that list, at top
level or lazily inside a function; nothing in them imports torch, timm, torchvision, onnx or
matplotlib, even lazily. The one exception, listed here by name: edgedd.cli.host's host commands, which
import their host module inside the command after ``_need_host``. (tests/test_device_light.py runs
the device commands with the host packages blocked: the same rule, seen at run time.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from _blocker import BLOCKED

import edgedd
from edgedd.device import is_device_module

ROOT = Path(edgedd.__file__).parent
DEVICE_PACKAGES = {
    "numpy",
    "onnxruntime",
    "safetensors",
    "typer",
    "PIL",
}  # pyproject's base dependencies (pillow is PIL)
# Optional device packages: package -> the one device module that may import it, lazily (inside a
# function, so every other device path works without it). ai_edge_litert: --runtime litert.
OPTIONAL_DEVICE_PACKAGES = {"ai_edge_litert": "edgedd.device.litert"}

# edgedd.cli.host's host commands and the host module each imports (lazily, inside the command): exactly these.
CLI_HOST_IMPORTS = {
    ("distill", "edgedd.distillation.pipeline"),
    ("evaluate", "edgedd.evaluation.evaluate"),
    ("pack", "edgedd.export.pack"),
    ("report", "edgedd.evaluation.report"),
}
# edgedd/__init__'s lazy names (PEP 562) that load host modules; edgedd.Bundle and the configs do not.
PACKAGE_HOST_NAMES = {"distill", "evaluate", "pack"}


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split(".")[1:])
    for p in (base / "__init__.py", base.with_suffix(".py")):
        if p.is_file():
            return p
    return None  # also edgedd.export (installed from ./export): never a device module


def device_files() -> dict[str, Path]:
    """module name -> file, for every module of edgedd.device.is_device_module (edgedd.device: the package and every
    module in it).
    """
    files = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if is_device_module(".".join(parts)):
            files[".".join(parts)] = p
    assert {"edgedd", "edgedd.core.errors", "edgedd.device.bundle", "edgedd.cli.device"} <= set(files)
    return files


class Imports(ast.NodeVisitor):
    """Every import of one module: (enclosing top-level function or None, imported module, line)."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str | None, str, int]] = []
        self.function: str | None = None

    def visit_FunctionDef(self, node):
        outer = self.function
        self.function = outer or node.name  # nested functions count as their top-level function
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((self.function, alias.name, node.lineno))

    def visit_ImportFrom(self, node):
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module
        for alias in node.names:  # `from . import artifact`: the submodule is what is imported
            sub = f"{target}.{alias.name}"
            self.found.append(
                (self.function, sub if sub.startswith("edgedd.") and module_file(sub) else target, node.lineno)
            )

    def visit_Call(self, node):  # importlib.import_module("literal") / __import__("literal")
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            self.found.append((self.function, node.args[0].value, node.lineno))
        self.generic_visit(node)


def imports_of(name: str, path: Path) -> list[tuple[str | None, str, int]]:
    v = Imports(name, path.name == "__init__.py")
    v.visit(ast.parse(path.read_text(), str(path)))
    return v.found


def test_device_modules_import_only_the_device_side():
    problems, cli_host = [], set()
    for name, path in device_files().items():
        for function, target, line in imports_of(name, path):
            where = f"{path.relative_to(ROOT.parent)}:{line} ({'in ' + function + '()' if function else 'top level'})"
            top = target.split(".")[0]
            if top in BLOCKED:
                problems.append(f"{where} imports {target}: a host package, never on the device (not even lazily)")
            elif top == "edgedd":
                if is_device_module(target):
                    continue
                if name == "edgedd.cli.host" and (function, target) in CLI_HOST_IMPORTS:
                    cli_host.add((function, target))
                else:
                    problems.append(
                        f"{where} imports {target}, which is not device-safe (edgedd.device.is_device_module)"
                    )
            elif top in OPTIONAL_DEVICE_PACKAGES:
                if name != OPTIONAL_DEVICE_PACKAGES[top] or function is None:
                    problems.append(
                        f"{where} imports {target}: an optional device package, only {OPTIONAL_DEVICE_PACKAGES[top]} "
                        "may, inside a function"
                    )
            elif top not in sys.stdlib_module_names and top not in DEVICE_PACKAGES:
                problems.append(
                    f"{where} imports {target}: not the standard library nor a device package "
                    f"({', '.join(sorted(DEVICE_PACKAGES))})"
                )
    assert not problems, "the device side imports beyond its boundary:\n  " + "\n  ".join(problems)
    assert cli_host == CLI_HOST_IMPORTS  # a listed host import that is gone: take it off the list


def test_cli_host_imports_are_inside_host_commands():
    """Each host import of edgedd.cli.host is inside a ``[host]`` command, after its ``_need_host`` call, and
    no other function of the CLI calls those commands."""
    path = ROOT / "cli" / "host.py"
    tree = ast.parse(path.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    host_import_line = {f: line for f, t, line in imports_of("edgedd.cli.host", path) if (f, t) in CLI_HOST_IMPORTS}
    host = {f for f, _ in CLI_HOST_IMPORTS}
    for name in host:
        fn = functions[name]
        assert (ast.get_docstring(fn) or "").startswith("[host]"), f"cli.{name} is not marked [host]"
        need = [
            n.lineno for n in ast.walk(fn) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "_need_host"
        ]
        assert need and min(need) < host_import_line[name], (
            f"cli.{name} imports its host module before calling _need_host"
        )
    calls = {
        n.func.id
        for fn in functions.values()
        for n in ast.walk(fn)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert not calls & host, f"a CLI function calls the host command(s) {sorted(calls & host)}"


def test_package_lazy_names():
    """``import edgedd`` imports nothing; of its lazy names only the listed host ones leave the device side."""
    assert {k for k, (module, _) in edgedd._LAZY.items() if not is_device_module(module)} == PACKAGE_HOST_NAMES
    assert edgedd._LAZY["Bundle"][0] == "edgedd.device.bundle"


def test_device_packages_are_the_base_install():
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() for d in deps}
    assert {"PIL" if n == "pillow" else n for n in names} == DEVICE_PACKAGES


def test_the_checker_sees_lazy_imports(tmp_path):
    """The visitor itself: a lazy torch import inside a nested function, and relative imports, are found."""
    src = tmp_path / "m.py"
    src.write_text("from . import artifact\nfrom ..data import x\ndef f():\n    def g():\n        import torch.nn\n")
    found = {(f, t) for f, t, _ in imports_of("edgedd.device.m", src)}
    assert found == {(None, "edgedd.device.artifact"), (None, "edgedd.data"), ("f", "torch.nn")}


def test_the_new_runtime_modules_are_on_the_device_side():
    """--runtime ort / litert, the mobile checker and the .ort walker live under edgedd.device, so the
    rule above covers them (and the LiteRT package is imported only lazily, by its one module)."""
    files = device_files()
    for name in ("edgedd.device.mobile", "edgedd.device.ort_scan", "edgedd.device.litert"):
        assert name in files
    lazy = [
        (f, t)
        for f, t, _ in imports_of("edgedd.device.litert", files["edgedd.device.litert"])
        if t.startswith("ai_edge_litert")
    ]
    assert lazy and all(f is not None for f, _ in lazy)
