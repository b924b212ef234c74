"""Training: a whole run (:mod:`.train`: ``fit``); the recipes, a frozen config each (:mod:`.recipes`);
learning-rate schedules (:mod:`.schedule`); optimisers (:mod:`.optim`: LARS); health warnings
(:mod:`.health`); several processes and devices (:mod:`.distributed`); the run folder and its files
(:mod:`.rundir`, :mod:`.plots`); what a run tells its user (:mod:`.progress`).

Imports models, data and runtime (the modes, the engine's loop). ``progress`` is here, not beside the
neutral helpers: it reports a training run (its config, data, epochs) and reads the engine's meter.
"""
