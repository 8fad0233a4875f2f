"""The shape of the code, re-measurable by anyone with Python's ast: small modules, short
functions, no import cycles at any level (module level, or inside a function). A newcomer reads
any function on one screen and any module in one sitting.

Sizes count statement lines (the lines where a statement begins), not physical lines: the
formatter (ruff format, line length 120) wraps a long call over several lines without adding code,
and the limits should not move with the layout."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_STATEMENTS = 60
MAX_MODULE_STATEMENTS = 280


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


def _statement_lines(node: ast.AST) -> int:
    return len({n.lineno for n in ast.walk(node) if isinstance(n, ast.stmt)})


def test_no_long_functions_or_modules():
    long = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        if _statement_lines(tree) > MAX_MODULE_STATEMENTS:
            long.append(f"module {name}: {_statement_lines(tree)} statement lines")
        for node in ast.walk(tree):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and _statement_lines(node) > MAX_FUNCTION_STATEMENTS
            ):
                long.append(f"function {name}.{node.name}: {_statement_lines(node)} statement lines")
    assert not long, (
        f"over the limits (functions <= {MAX_FUNCTION_STATEMENTS}, modules <= {MAX_MODULE_STATEMENTS} statement "
        "lines):\n" + "\n".join(long)
    )


def _imports(name: str, path: Path, known: set[str], lazy: bool = False) -> set[str]:
    """edgedd modules ``name`` imports: at module level (run when ``name`` is imported), or with
    ``lazy`` also those inside functions (run when the function is called)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # never runs: annotations only
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            stmts = [node]
        elif lazy or isinstance(node, (ast.If, ast.Try)):
            stmts = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
        else:
            stmts = []
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


def _top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    return _imports(name, path, known)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(" -> ".join(stack[stack.index(m) :] + [m]))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def _graph(mods: dict[str, Path], lazy: bool) -> dict[str, set[str]]:
    # a package's __init__ is not an edge: importing edgedd.device.bundle runs edgedd/device/__init__,
    # but the package imports nothing of its modules at load (PEP 562 names aside)
    return {n: _imports(n, p, set(mods), lazy) for n, p in mods.items()}


def test_no_import_cycles():
    mods = _modules()
    cycles = _cycles(_graph(mods, lazy=False))
    assert not cycles, "import cycles at module level:\n" + "\n".join(cycles)


def test_no_import_cycles_inside_functions():
    """Imports inside functions count too: a lazy import that closes a cycle hides a misplaced piece."""
    mods = _modules()
    cycles = _cycles(_graph(mods, lazy=True))
    assert not cycles, "import cycles (counting imports inside functions):\n" + "\n".join(cycles)


def test_a_cycle_inside_a_function_is_found(tmp_path):
    """A made-up package: a.x imports a.y inside a function, a.y imports a.x at module level. The
    module-level graph has no cycle; the graph with lazy imports has it."""
    pkg = tmp_path / "a"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from . import y\n    return y.g()\n")
    (pkg / "y.py").write_text("from .x import f\n\ndef g():\n    return 1\n")
    mods = {"a": pkg / "__init__.py", "a.x": pkg / "x.py", "a.y": pkg / "y.py"}
    assert _cycles(_graph(mods, lazy=False)) == []
    assert _cycles(_graph(mods, lazy=True)) == ["a.x -> a.y -> a.x"]


def test_the_measures_see_the_code():
    """The checks above look at the real tree and can fail (else they pass on nothing)."""
    mods = _modules()
    assert {"edgedd.distillation.pipeline", "edgedd.export.pack", "edgedd.device.bundle", "edgedd.core.config"} <= set(
        mods
    )
    assert "edgedd.core.config" in _top_level_imports(
        "edgedd.distillation.pipeline", mods["edgedd.distillation.pipeline"], set(mods)
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
