"""alexnet: AlexNet (Krizhevsky, Sutskever, Hinton, 2012) from data to deployment."""

from .card import ModelCard
from .checkpoint import load_checkpoint, save_checkpoint
from .columns import AlexNetColumns, to_columns, to_grouped
from .errors import UserError
from .models import AlexNet, ArchSpec, ConvSpec, LocalResponseNorm
from .registry import create_model, get_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "AlexNet",
    "AlexNetColumns",
    "ArchSpec",
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
