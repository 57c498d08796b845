"""Training steps per second on the CPU in float32 and under bfloat16 autocast (what `train.py --precision bf16`
runs there), for Unet or Unet++ on resnet34 at the hippocampus's shape (batch 16, 1 channel, 64 px, 3 classes):

  python docs/results/cpu_bf16.py [threads] [unet|unetpp]

A CPU with AVX512-BF16 or AMX runs bfloat16 convolutions natively; one without emulates them, which can be slower than
float32 (not measured here).
"""
import sys
import time

import segmentation_models_pytorch as smp
import torch


def steps_per_second(model, optimiser, bf16: bool, steps: int = 10) -> float:
    x, y = torch.randn(16, 1, 64, 64), torch.randint(0, 3, (16, 64, 64))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for _ in range(3):  # warm-up: oneDNN picks its kernels
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    arch = sys.argv[2] if len(sys.argv) > 2 else "unet"
    torch.manual_seed(0)
    net = (smp.Unet if arch == "unet" else smp.UnetPlusPlus)("resnet34", encoder_weights=None, in_channels=1, classes=3)
    net = net.to(memory_format=torch.channels_last)
    sgd = torch.optim.SGD(net.parameters(), lr=1e-3)
    fp32, bf16 = (steps_per_second(net, sgd, b) for b in (False, True))
    print(f"{arch}, {torch.get_num_threads()} thread(s): float32 {fp32:.2f} steps/s, bf16 autocast {bf16:.2f} "
          f"steps/s ({bf16 / fp32:.2f}x)")
