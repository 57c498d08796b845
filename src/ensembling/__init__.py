"""The ensemble stage, in the order ensemble.py runs it: inputs.py finds the prediction sets infer.py wrote and checks
them, choices.py makes each fold's choices on the other folds (TTA, level, post-processing), scores.py scores every
run and the ensemble, report.py writes what the ensemble folder holds besides the masks."""
