"""The package's layers, read from the source: which package may import which.

docs/development.md describes the layers; this test keeps them true. Every import counts,
those inside functions too: an import deferred for speed is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cxrlab

ROOT = Path(cxrlab.__file__).parent

#: Lowest first; a package may import its own layer and those below it.
LAYERS = [
    {"cxrlab", "errors", "utils", "typed_config", "run_files", "runtime"},
    {"augment"},
    {"data"},
    {"models"},
    {"freeze"},
    {"evaluation"},
    {"pretrain"},
    {"engine"},
    {"segment"},
    {"runs"},
    {"shift"},
    {"training"},
    {"adapt"},
    {"infer"},
    {"app"},
    {"audit"},
    {"analysis"},
    {"study"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ("cxrlab", *path.relative_to(ROOT).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of other cxrlab modules (resolved to the module imported)."""
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base) \
                    if node.level else (node.module or "")  # fmt: skip
                targets = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t.startswith("cxrlab") and t != name:
                    found.add(t)
                    break
        edges[name] = found
    return edges


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cxrlab"


def test_every_package_has_a_layer() -> None:
    assert {_package(m) for m in _modules()} <= set(RANK)


def test_no_package_imports_a_later_layer() -> None:
    edges = _imports(_modules())
    upward = sorted(
        f"{m} -> {d}"
        for m, deps in edges.items()
        for d in deps
        if RANK[_package(d)] > RANK[_package(m)]
    )
    assert upward == []


def test_what_uses_a_finished_run_never_imports_the_training_loop() -> None:
    edges = _imports(_modules())
    users = {_package(m) for m, deps in edges.items() if "cxrlab.training.trainer" in deps}
    assert users <= {"training", "study", "cli"}


def test_no_module_imports_itself_through_others() -> None:
    edges = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        for d in edges[m]:
            if d not in index:
                visit(d)
                low[m] = min(low[m], low[d])
            elif d in stack:
                low[m] = min(low[m], index[d])
        if low[m] == index[m]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == m:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in edges:
        if m not in index:
            visit(m)
    assert cycles == []


def test_run_folder_file_names_are_written_in_one_module() -> None:
    """Each run-folder file name is a literal in cxrlab.run_files only; the few modules that
    use the same text for something else say what (a Hugging Face checkpoint's file, the
    default name of 'data split''s manifest, the app's download)."""
    from cxrlab import run_files

    names = {getattr(run_files, n) for n in run_files.__all__}
    names = {v for v in names if isinstance(v, str) and "." in v}  # files; folder names
    # ("shift", "audit", "external") are also ordinary words
    elsewhere = {
        ("cxrlab.models.weights", "model.safetensors"),  # a timm/HF checkpoint's file
        ("cxrlab.cli.data", "split.csv"),  # 'cxrlab data split --out' default
        ("cxrlab.app.ui", "predictions.csv"),  # the app's download, not a run's file
    }
    found = set()
    for name, path in _modules().items():
        if name == "cxrlab.run_files":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.add((name, node.value))
    assert found == elsewhere
