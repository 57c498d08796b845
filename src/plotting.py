"""matplotlib's pyplot, loaded by the first figure drawn instead of on import: it adds about 0.6 s to the start of
every process, and most draw nothing (train.py without --lr auto, infer.py, study.py's planning)."""


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # figures go to files; a server has no display
    import matplotlib.pyplot as plt
    return plt
