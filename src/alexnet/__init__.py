"""alexnet: AlexNet (Krizhevsky, Sutskever, Hinton, 2012) from data to deployment.

The packages by layer, lowest first; each imports only those below it (``tests/test_layout.py`` checks):
``errors`` and ``files`` (neutral helpers), ``models``, ``data``, ``runtime``, ``training``, ``bench`` and
``insight``, ``serve``, and at the top ``cli`` (the ``alexnet`` command). Each package's ``__init__`` says
what it holds; importing one module loads only what that module needs.
"""

import importlib
from typing import Any

from . import _moved
from .errors import UserError
from .models import (
    AlexNet,
    AlexNetColumns,
    ArchSpec,
    ConvSpec,
    LocalResponseNorm,
    ModelCard,
    create_model,
    get_spec,
    list_models,
    load_checkpoint,
    save_checkpoint,
    to_columns,
    to_grouped,
)

__version__ = "0.1.0"

__all__ = [
    "AlexNet",
    "AlexNetColumns",
    "ArchSpec",
    "Classifier",
    "ConvSpec",
    "ModelCard",
    "LocalResponseNorm",
    "UserError",
    "create_model",
    "get_spec",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
    "to_columns",
    "to_grouped",
]

_moved.install()  # the flat modules' old names (alexnet.registry, alexnet.modes, ...) import their new homes


def __getattr__(name: str) -> Any:
    if name == "Classifier":  # the runtime (inference and its engines) loads when first asked for
        from .runtime.inference import Classifier

        return Classifier
    if f"{__name__}.{name}" in _moved.MOVED:  # an old module as an attribute, as when this package imported it
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
