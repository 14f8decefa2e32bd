"""The package's import graph, read from the source (ast), has no loops and points one way.

Every ``import`` of faq_jax/**/*.py counts, inside functions too (a deferred import still
runs). The graph fails on:

- an import loop (modules that import each other, directly or through others);
- a private name of another module (``from faq_jax.x import _y`` or ``x._y``);
- an arrow from the core (quant, policy, layers, models, keypaths) to the application
  (train, trainer, export, data, config, workdir, checkpointing, main, evaluate);
- inside ``faq_jax.export``, an arrow against intnet <- graph, executor <- exporter <-
  onnx_writer <- cli.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ("quant", "policy", "layers", "models", "keypaths")
APPLICATION = ("train", "trainer", "export", "data", "config", "workdir", "checkpointing",
               "main", "evaluate")
EXPORT_RANK = {"intnet": 0, "graph": 1, "executor": 1, "exporter": 2, "onnx_writer": 2,
               "onnx_deploy": 3, "cli": 4, "__main__": 5}


def _modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py under ``root/package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path],
             ) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, private name or None, line) of every import in ``path`` that
    reaches a module of ``modules``; ``x._y`` on an imported module counts as private."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    aliases: dict[str, str] = {}  # local name -> module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name not in modules:
                    continue
                yield a.name, None, node.lineno
                top = a.name.split(".")[0]  # ``import a.b`` binds ``a``
                if a.asname or top in modules:
                    aliases[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{parent}.{base}" if base else parent
            if base not in modules:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:
                    aliases[a.asname or a.name] = sub
                    yield sub, None, node.lineno
                else:
                    private = a.name if a.name.startswith("_") else None
                    yield base, private, node.lineno
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            attr = node.attr
            if target and attr.startswith("_") and not attr.startswith("__"):
                yield target, attr, node.lineno


def import_graph(root: pathlib.Path, package: str,
                 ) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> imported modules, private-name violations) of ``root/package``."""
    modules = _modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for target, priv, line in _imports(name, path, modules):
            if target != name:
                graph[name].add(target)
            if priv and target != name:
                private.append(f"{path.relative_to(root)}:{line} uses {target}.{priv}")
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def faq_graph():
    return import_graph(ROOT, "faq_jax")


def test_no_import_loops(faq_graph):
    graph, _ = faq_graph
    assert cycles(graph) == []


def test_no_private_names_cross_modules(faq_graph):
    _, private = faq_graph
    assert private == []


def test_core_never_imports_the_application(faq_graph):
    graph, _ = faq_graph
    bad = [f"{src} -> {dst}" for src, dsts in graph.items() for dst in sorted(dsts)
           if _top(src) in CORE and _top(dst) in APPLICATION]
    assert bad == []


def test_export_modules_point_one_way(faq_graph):
    graph, _ = faq_graph
    rank = {f"faq_jax.export.{k}": v for k, v in EXPORT_RANK.items()}
    assert set(rank) | {"faq_jax.export"} == {m for m in graph if _top(m) == "export"}
    bad = [f"{src} -> {dst}" for src in rank for dst in sorted(graph[src])
           if dst in rank and rank[dst] >= rank[src] or dst == "faq_jax.export"]
    assert bad == []


def test_the_checker_sees_loops_and_private_names(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.sub import c\n    return c._hidden\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from pkg.a import _x\nimport pkg.a\n")
    graph, private = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert sorted(p.split(" uses ")[1] for p in private) == ["pkg.a._x", "pkg.sub.c._hidden"]
