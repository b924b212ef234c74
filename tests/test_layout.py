"""The package's layers, read from its source: a module imports only its own package and the packages below
it, and no import cycle joins modules or packages.

Every import counts, the lazy ones inside functions and those under ``TYPE_CHECKING`` too: a lazy import
is still a dependency, and only postpones the cycle it would make.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import alexnet
from alexnet import _moved

SRC = Path(alexnet.__file__).parent
# Lowest first. A module may import from its own unit (subpackage or top-level module) and from lower layers;
# units of one layer not from each other. ``__init__`` is the package's own, the public facade (models' names,
# the Classifier) under the command, which reads its version.
LAYERS = [
    ["errors", "_moved"],
    ["files"],
    ["models"],
    ["data"],
    ["runtime"],
    ["training"],
    ["bench", "insight"],
    ["serve"],
    ["__init__"],
    ["cli"],
    ["demo", "__main__"],
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package at ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports; ``from pkg import name`` counts as importing ``pkg.name``
    where that is a module, else ``pkg``."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets |= {f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def unit(module: str) -> str:
    """The layer unit of a module: its subpackage or top-level module (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a unit of the same or a higher layer than the importer's (its own unit excepted)."""
    bad = []
    for module, targets in graph.items():
        for target in sorted(targets):
            here, there = unit(module), unit(target)
            if here != there and RANK[there] >= RANK[here]:
                bad.append(f"{module} ({here}, layer {RANK[here]}) imports {target} ({there}, layer {RANK[there]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same imports between units (subpackages and top-level modules)."""
    units: dict[str, set[str]] = {unit(m): set() for m in graph}
    for module, targets in graph.items():
        units[unit(module)] |= {unit(t) for t in targets} - {unit(module)}
    return units


def test_every_part_of_the_package_has_a_layer():
    assert {unit(m) for m in import_graph(SRC)} <= set(RANK)


def test_no_module_imports_from_a_package_above_its_own():
    assert upward_imports(import_graph(SRC)) == []


def test_no_import_cycle_between_modules_or_packages():
    graph = import_graph(SRC)
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == []


def test_the_graph_sees_lazy_imports_and_reports_an_import_from_above(tmp_path):
    """An import of training planted in a function of models/ (the lowest package but the helpers) fails
    both checks: it imports upwards, and training imports models, so the two packages form a cycle."""
    import shutil

    copy = tmp_path / "alexnet"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    card = copy / "models" / "card.py"
    card.write_text(card.read_text() + "\n\ndef _planted():\n    from ..training.train import fit\n\n    return fit\n")
    graph = import_graph(copy)
    assert upward_imports(graph) == [
        "alexnet.models.card (models, layer 2) imports alexnet.training.train (training, layer 5)"
    ]
    assert any({"models", "training"} <= set(c) for c in cycles(package_graph(graph)))
    assert any("alexnet.models.card" in c and "alexnet.training.train" in c for c in cycles(graph))


def test_a_cycle_between_two_modules_of_one_package_is_found(tmp_path):
    import shutil

    copy = tmp_path / "alexnet"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    device = copy / "runtime" / "device.py"
    device.write_text(device.read_text() + "\n\nif False:\n    from .modes import Mode\n")
    graph = import_graph(copy)
    assert upward_imports(graph) == []
    assert any({"alexnet.runtime.device", "alexnet.runtime.modes"} <= set(c) for c in cycles(graph))


# ------------------------------------------------------------------------------------ the old import paths
@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_module_path_imports_the_module_at_its_new_home(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(_moved.MOVED[old])
    assert module.__spec__.name == _moved.MOVED[old]  # it keeps its own name and spec
    assert sys.modules[old] is module and getattr(alexnet, old.rpartition(".")[2]) is module


@pytest.mark.parametrize("package", sorted(_moved.REPLACED))
def test_a_package_that_took_a_modules_name_still_has_that_modules_names(package):
    home = importlib.import_module(_moved.REPLACED[package])
    names = [n for n in vars(home) if not n.startswith("__")]
    assert names
    pkg = importlib.import_module(package)
    for name in names:
        submodule = f"{package}.{name}"
        if submodule in sys.modules and getattr(pkg, name) is sys.modules[submodule]:
            continue  # a module of the package with the name of something the old module imported
        assert getattr(pkg, name) is getattr(home, name), name
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018


def test_the_old_import_statements_work():
    from alexnet.registry import create_model

    from alexnet.bench import run_benchmark
    from alexnet.data import make_loader
    from alexnet.models import MAX_INPUT_SIZE, build

    assert create_model is alexnet.create_model
    assert MAX_INPUT_SIZE == 4096 and build is alexnet.models.alexnet.build
    assert make_loader is alexnet.data.loaders.make_loader
    assert run_benchmark is alexnet.bench.benchmark.run_benchmark
    assert alexnet.Classifier is alexnet.runtime.inference.Classifier
    assert set(alexnet.__all__) <= set(dir(alexnet)) | {"Classifier"}


def test_importing_the_package_loads_only_the_models():
    code = (
        "import sys, alexnet\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('alexnet.'))\n"
        "assert not [m for m in loaded if m.split('.')[1] not in ('models', 'errors', 'files', '_moved')], loaded\n"
        "from alexnet.modes import INFERENCE_MODES\n"
        "assert 'alexnet.runtime.modes' in sys.modules and 'alexnet.training.train' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
