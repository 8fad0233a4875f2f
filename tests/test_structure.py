"""The shape of the code, re-measurable by anyone with Python's ast: small modules, short
functions, no import cycles (the architecture issue's must-show 1). The limits are the issue's:
a newcomer reads any function on one screen and any module in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def _modules() -> dict[str, Path]:
    """Module name -> file, for edgedd/ and export/ (installed as edgedd.export)."""
    out = {}
    for base, package in (("edgedd", "edgedd"), ("export", "edgedd.export")):
        for path in sorted((ROOT / base).rglob("*.py")):
            if base == "edgedd" and "export" in path.relative_to(ROOT / base).parts[:1]:
                continue  # a development symlink edgedd/export -> ../export: counted once, as export/
            parts = list(path.relative_to(ROOT / base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def test_no_long_functions_or_modules():
    long = []
    for name, path in _modules().items():
        src = path.read_text()
        if len(src.splitlines()) > MAX_MODULE_LINES:
            long.append(f"module {name}: {len(src.splitlines())} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"function {name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "over the limits (functions <= 80 lines, modules <= 450):\n" + "\n".join(long)


def _top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """edgedd modules imported when ``name`` is imported (module level, not inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # never runs: annotations only
        stmts = [node] if isinstance(node, (ast.Import, ast.ImportFrom)) else [
            n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))] if isinstance(node, (ast.If, ast.Try)) else []
        for s in stmts:
            if isinstance(s, ast.Import):
                targets = [a.name for a in s.names]
            else:
                base = s.module or ""
                if s.level:
                    anchor = package.split(".")[: len(package.split(".")) - (s.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in s.names]
            out |= {t for t in targets if t in known and t != name}
    return out


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def test_no_import_cycles():
    mods = _modules()
    cycles = _cycles({n: _top_level_imports(n, p, set(mods)) for n, p in mods.items()})
    assert not cycles, "import cycles at module level:\n" + "\n".join(cycles)


def test_the_measures_see_the_code():
    """The checks above look at the real tree and can fail (else they pass on nothing)."""
    mods = _modules()
    assert {"edgedd.distill", "edgedd.export.pack", "edgedd.device.runtime", "edgedd.config"} <= set(mods)
    assert "edgedd.config" in _top_level_imports("edgedd.distill", mods["edgedd.distill"], set(mods))
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
