"""``alexnet benchmark``: every mode against torchvision's AlexNet in one run (:mod:`.benchmark`), the
baseline it is measured against (:mod:`.baseline`) and the report, a table and the README's block
(:mod:`.report`). The machine's description and peaks are in :mod:`alexnet.runtime.machine`, which the
choice of a mode (``auto``) uses too.

Imports models and runtime.
"""

from .._moved import forward

__getattr__ = forward(__name__)  # this package took the name of a module: its names are in .benchmark
