#!/usr/bin/env bash
# The whole pipeline on the embedded demo data (generated, offline): prepare, 3 folds x Unet and Unet++,
# inference without and with flip TTA, ensemble. A few minutes on 2 CPU cores; the same commands scale to real data.
set -euo pipefail
cd "$(dirname "$0")"
ENCODER=${ENCODER:-tu-mobilenetv3_small_050}
TRAIN="--dataset demo --size 64 --encoder $ENCODER --encoder-weights none --decoder-channels 64,32,16,16,8
       --epochs ${EPOCHS:-10} --batch-size 8 --lr 1e-2 --aug light --tracker ${TRACKER:-none}"

python -m src.prepare demo --count 96 --test-count 12 --size 64 --k 3 --overwrite
for arch in unet unetpp; do
  for fold in 0 1 2; do
    python train.py $TRAIN --arch $arch --fold $fold --overwrite
  done
done
python infer.py --dataset demo --tta none
python infer.py --dataset demo --tta flip
python ensemble.py --dataset demo
