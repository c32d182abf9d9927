"""The library's shape: no import circles, no private names across modules, estimators that
scikit-learn can clone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(mods):
    """{module: {imported btpipe modules}} and the private names imported, counting imports
    inside functions too (a lazy import closes a circle as surely as a top-level one)."""
    edges, private = {}, []
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                name = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name for a in node.names]
                private += [(mod, name, a.name) for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")
                            and f"{name}.{a.name}" not in mods]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    edges.setdefault(mod, set()).add(target)
    return edges, private


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_in_the_library():
    edges, _ = _imports(_modules())
    assert edges, "no imports found: the scan is broken"
    assert _cycles(edges) == []


def test_the_scan_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_names_imported_across_modules():
    _, private = _imports(_modules())
    assert private == []


@pytest.mark.parametrize("name", ["deepsurv", "deephit", "bag_attention_mil", "daal_multiple",
                                  "cnn3d_resnet18", "distill_student"])
def test_survival_estimators_survive_sklearn_clone(name):
    from sklearn.base import clone

    from btpipe.survival.registry import build_model

    estimator = build_model(name, {"model_params": {}}, seed=3)
    copy = clone(estimator)
    assert type(copy) is type(estimator)
    params, cloned = estimator.get_params(deep=True), copy.get_params(deep=True)
    assert params.keys() == cloned.keys()
    assert all(repr(params[k]) == repr(cloned[k]) for k in params)
