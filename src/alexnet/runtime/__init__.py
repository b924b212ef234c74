"""Running a network, fast: device and precision policy (:mod:`.device`); the training step and the
evaluation loop (:mod:`.engine`), here because the modes and inference run them too; the table of
inference and training modes (:mod:`.modes`) with its engines (:mod:`.onednn`, :mod:`.quantize` for
int8) and the choice measured on this machine (:mod:`.autotune`, :mod:`.machine`); export
(:mod:`.export`); inference (:mod:`.inference`: ``Classifier``, evaluate, predict).

Imports models and data.
"""
