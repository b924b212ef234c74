"""The flat modules the package had before it was split by layer, and where each one lives now.

``import alexnet.modes`` and ``from alexnet.registry import create_model`` keep working: a finder on
``sys.meta_path`` answers each old name with the module at its new home, the same object, imported only
when it is asked for. ``alexnet.models``, ``alexnet.data`` and ``alexnet.bench`` were modules and are
packages now; each package's ``__getattr__`` (:func:`forward`) finds the names of the module it replaced.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "REPLACED", "install", "forward"]

MOVED = {
    "alexnet.autotune": "alexnet.runtime.autotune",
    "alexnet.baseline": "alexnet.bench.baseline",
    "alexnet.bench_report": "alexnet.bench.report",
    "alexnet.card": "alexnet.models.card",
    "alexnet.checkpoint": "alexnet.models.checkpoint",
    "alexnet.columns": "alexnet.models.columns",
    "alexnet.datasets": "alexnet.data.datasets",
    "alexnet.device": "alexnet.runtime.device",
    "alexnet.distributed": "alexnet.training.distributed",
    "alexnet.engine": "alexnet.runtime.engine",
    "alexnet.export": "alexnet.runtime.export",
    "alexnet.features": "alexnet.insight.features",
    "alexnet.health": "alexnet.training.health",
    "alexnet.imagenet": "alexnet.data.imagenet",
    "alexnet.inference": "alexnet.runtime.inference",
    "alexnet.machine": "alexnet.runtime.machine",
    "alexnet.modes": "alexnet.runtime.modes",
    "alexnet.onednn": "alexnet.runtime.onednn",
    "alexnet.optim": "alexnet.training.optim",
    "alexnet.plots": "alexnet.training.plots",
    "alexnet.prepare": "alexnet.data.prepare",
    "alexnet.prepared": "alexnet.data.prepared",
    "alexnet.progress": "alexnet.training.progress",
    "alexnet.quantize": "alexnet.runtime.quantize",
    "alexnet.recipes": "alexnet.training.recipes",
    "alexnet.registry": "alexnet.models.registry",
    "alexnet.rundir": "alexnet.training.rundir",
    "alexnet.schedule": "alexnet.training.schedule",
    "alexnet.sources": "alexnet.data.sources",
    "alexnet.summary": "alexnet.models.summary",
    "alexnet.train": "alexnet.training.train",
    "alexnet.transforms": "alexnet.data.transforms",
    "alexnet.visualize": "alexnet.insight.visualize",
}
# The packages that took the name of a module, and the module that holds that module's names now.
REPLACED = {
    "alexnet.models": "alexnet.models.alexnet",
    "alexnet.data": "alexnet.data.loaders",
    "alexnet.bench": "alexnet.bench.benchmark",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module at its new home (nothing is executed twice)."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.home)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system gave it the old name's spec: it keeps its own


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        home = MOVED.get(fullname)
        return None if home is None else importlib.machinery.ModuleSpec(fullname, _Alias(home))


def install() -> None:
    """Answer the old module names from now on (once per process)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())


def forward(package: str) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``package`` (a key of :data:`REPLACED`) that finds the names of the module it
    replaced in their new home, imported on first use."""
    home = REPLACED[package]

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            module = importlib.import_module(home)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
