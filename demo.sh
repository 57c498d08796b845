#!/usr/bin/env bash
# The whole pipeline on the embedded demo data (generated, offline) as one study: prepare, then Unet and Unet++ on
# 3 folds, two runs side by side, inferred without and with flip TTA, ensembled and ranked in ensemble/demo/demo/.
# About a minute on 2 CPU cores (60 s on 2026-12-07); the same study command scales to real data. Knobs: EPOCHS
# (default 10), ENCODER (default tu-mobilenetv3_small_050), TRACKER (none or wandb). Run again, it trains only what
# changed: --retrain-stale trains again the runs another EPOCHS or ENCODER made; runs outside the study's grid are
# never read.
set -euo pipefail
cd "$(dirname "$0")"
python -m src.prepare demo --count 96 --test-count 12 --size 64 --k 3 --overwrite
python study.py --dataset demo --name demo --archs unet,unetpp --encoders "${ENCODER:-tu-mobilenetv3_small_050}" \
  --folds all --parallel 2 --tta none,flip --retrain-stale --size 64 --encoder-weights none \
  --decoder-channels 64,32,16,16,8 --epochs "${EPOCHS:-10}" --batch-size 8 --lr 1e-2 --aug light \
  --tracker "${TRACKER:-none}"
