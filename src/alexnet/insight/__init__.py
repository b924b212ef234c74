"""Looking into a trained network: the paper's pictures (:mod:`.visualize`: filters, predictions,
neighbours, curves, confusion, activations) and fc7 as a feature space (:mod:`.features`).

Imports models, data, runtime and training (the curves' plot).
"""
