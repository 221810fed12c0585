"""The package's shape (docs/architecture.md): imports never run in a circle or reach a
private name of another module; no module grows past 450 lines; nothing outside the
registry and a family's own file asks which family, unit, head or backbone it holds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "untok"
# the registry, the families' own files and the backbone factory; the config schema checks
# that option values exist (``backbone in BACKBONES``) and the loader converts 0.1 keys
FAMILY_FILES = {"models/registry.py", "models/flat.py", "models/blt.py", "models/tfree.py",
                "models/tokun.py", "models/tokun_lm.py",
                "nn/stacks.py",
                "config/schema.py", "config/loading.py"}
BRANCH = re.compile(r"""(\b(family|unit|unit_name|backbone|head|objective)\s*(==|!=|in)\s)|"""
                    r"""getattr\([^)]*"(unit|family|objective|backbone|patcher|decode_one)"|"""
                    r"""isinstance\([^)]*\b(BLT|FlatLM|CodepointScores|CodepointHead)\b|"""
                    r"""hasattr\((model|family|self\.model)\b|except ValueError:  # a model""")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the untok modules it imports (anywhere in it); private imports."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                if not base.startswith("untok"):
                    continue
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                    if target in mods and target != name:
                        graph[name].add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{name} imports {base}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and alias.name != name:
                        graph[name].add(alias.name)
    # a package importing its own submodules is how packages are built, not a cycle
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}, \
        private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_and_no_private_imports():
    graph, private = import_graph()
    assert cycles(graph) == []
    assert private == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_450_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 450} == {}


def test_only_the_registry_and_the_families_ask_which_model_this_is():
    sites = []
    for path in PACKAGE.rglob("*.py"):
        name = str(path.relative_to(PACKAGE))
        if name in FAMILY_FILES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if BRANCH.search(line) and not line.lstrip().startswith("#"):
                sites.append(f"{name}:{number}: {line.strip()}")
    assert sites == []
