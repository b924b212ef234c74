"""The networks: AlexNet's variants declared as tables, one builder, LRN and the inits (:mod:`.alexnet`); the
paper's two columns (:mod:`.columns`); the registry of named variants (:mod:`.registry`); the model card,
a model's data contract (:mod:`.card`); the checkpoint file that stores weights with their card
(:mod:`.checkpoint`); the layer table (:mod:`.summary`).

The lowest layer: it imports only the neutral helpers (``alexnet.errors``, ``alexnet.files``).
"""

from .._moved import forward
from .alexnet import AlexNet, ArchSpec, ConvSpec, LocalResponseNorm
from .card import ModelCard
from .checkpoint import load_checkpoint, save_checkpoint
from .columns import AlexNetColumns, to_columns, to_grouped
from .registry import create_model, get_spec, list_models

__all__ = [
    "AlexNet",
    "AlexNetColumns",
    "ArchSpec",
    "ConvSpec",
    "LocalResponseNorm",
    "ModelCard",
    "create_model",
    "get_spec",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
    "to_columns",
    "to_grouped",
]

__getattr__ = forward(__name__)  # this package took the name of a module: its other names are in .alexnet
