"""The ledger of runs: the only code that reads a run folder (runs/<dataset>/<arch>-<encoder>/fold<k>/) and the
predictions made from it (preds/<dataset>/<arch>-<encoder>/...).

study.py, infer.py and ensemble.py ask it what a run is, whether it is finished with the settings asked, whether
someone is training it, and which predictions came from its current weights; nothing else globs runs/ or preds/.
"""

# ---------------------------------------------------------------------------------------------------------------------
# Run folders: config, fold file, weights, saved state, lock, and the state a study plans from.
# ---------------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# Predictions: by checkpoint and TTA mode, each file with its provenance (weights hash, fold hash, number of folds).
# ---------------------------------------------------------------------------------------------------------------------
