"""The layout's rules, checked on the import graph (imports inside functions included):
no module cycle anywhere in bench/, methods/ and tasks/, and each layer of bench/ imports
only the layers below it. Reporting (tables, pages, comparisons) works from records alone:
no torch, no method, no task, also not at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods", "tasks")
# what each layer of bench/ may import from this project (besides itself)
ALLOWED = {
    "bench.core": set(),
    "bench.measure": {"bench.core", "methods.base"},
    "bench.run": {"bench.core", "bench.measure", "methods", "tasks"},
    "bench.report": {"bench.core"},
    "methods": {"bench.core", "methods"},
    "tasks": {"bench.core", "tasks"},
}
HEAVY = ("torch", "transformers", "peft", "lm_eval")  # never imported by core or report


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``path`` imports, at any depth of its code, resolved to a module name:
    ``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {i for i in imports_of(m, p, known) if i in known and i != m} for m, p in mods.items()}


def external(name: str, path: Path) -> set[str]:
    return {i.split(".")[0] for i in imports_of(name, path, set())}


def layer(module: str) -> str | None:
    for prefix in sorted(ALLOWED, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None  # the top: bench.cli, bench.perf, bench.__main__


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A cycle of module imports, as the list of modules along it, or None. A package's
    ``__init__`` importing its own submodules (registration) is not an edge back."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if m.startswith(n + "."):  # a submodule importing from its own package: the package's names
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_cycle_finder_finds_a_planted_cycle():
    g = {"bench.run.a": {"bench.run.b"}, "bench.run.b": {"bench.run.c"}, "bench.run.c": {"bench.run.a"}}
    assert find_cycle(g) == ["bench.run.a", "bench.run.b", "bench.run.c", "bench.run.a"]
    assert find_cycle({"bench.run.a": {"bench.run.b"}, "bench.run.b": set()}) is None


@pytest.mark.parametrize("module", sorted(modules()))
def test_layer_imports_point_down(module):
    g = graph()
    mine = layer(module)
    if mine is None:
        return  # the top layer (cli, perf) may import anything
    bad = sorted(i for i in g[module] if layer(i) != mine and not any(
        i == a or i.startswith(a + ".") for a in ALLOWED[mine]))
    assert not bad, f"{module} ({mine}) imports {bad}; {mine} may import only {sorted(ALLOWED[mine]) or 'itself'}"
    if mine in ("bench.core", "bench.report"):
        heavy = sorted(external(module, modules()[module]) & set(HEAVY))
        assert not heavy, f"{module} imports {heavy}: {mine} must work without them"


def test_the_layer_check_catches_a_reporting_module_importing_a_task(tmp_path):
    src = "from tasks import TASKS\n\ndef f():\n    import torch\n"
    path = tmp_path / "x.py"
    path.write_text(src)
    assert "tasks" in imports_of("bench.report.x", path, {"tasks"})
    assert "torch" in external("bench.report.x", path)


def test_reporting_loads_no_torch_method_or_task_at_run_time():
    code = ("import sys, bench.report.render, bench.report.compare, bench.report.verdicts, bench.core.records; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'methods', 'tasks', 'transformers')); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"reporting imported {out.stdout.strip()} {out.stderr[-500:]}"
