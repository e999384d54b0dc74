"""Supervised PyTorch training of the DigitScenes net on one generated split, scored on DigitScenes-M test.

    python bench/digitscenes_torch.py --train target_train     # the oracle of configs/segmentation, in PyTorch
    python bench/digitscenes_torch.py --train target_test      # diagnostic: how well the net fits the test scenes

A cross-check of the embedded segmentation benchmark outside MindSpore: the same generator
(datasets/digitscenes.py), the same network (tools.torch_reference.DigitScenesNet), inputs x - 0.5,
Adam 1e-3 (betas 0.9, 0.99), poly 0.9 over the iterations, batch 16 drawn without replacement per
step, pixel cross-entropy. Prints the target-test mIoU (engine/metrics.py) every 100 iterations.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_resnet50.py


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="target_train", help="source_train | target_train | target_test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from datasets.digitscenes import RECIPES, generate
    from engine.metrics import ConfusionAccumulator
    from tools.torch_reference import DigitScenesNet

    if args.train not in RECIPES:
        raise SystemExit(f"error: --train must be one of {', '.join(RECIPES)}")
    train, test = generate(args.train), generate("target_test")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = DigitScenesNet(11)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    x, y = torch.tensor(train.images).permute(0, 3, 1, 2) - 0.5, torch.tensor(train.labels).long()
    x_test = torch.tensor(test.images).permute(0, 3, 1, 2) - 0.5
    start = time.time()
    for it in range(args.iters):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (1 - it / args.iters) ** 0.9
        idx = rng.choice(len(x), args.batch, replace=False)
        loss = F.cross_entropy(net(x[idx]), y[idx], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (it + 1) % 100 == 0 or it + 1 == args.iters:
            with torch.no_grad():
                conf = ConfusionAccumulator(11).add(net(x_test).argmax(1).numpy(), test.labels)
            print(f"iter {it + 1}: loss {loss.item():.3f}, target-test mIoU {100 * conf.mean_iou():.1f}", flush=True)
    print(f"torch {torch.__version__}, trained on {args.train}, seed {args.seed}: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
