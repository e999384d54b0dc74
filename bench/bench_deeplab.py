"""Time one AdaptSegNet (multi-level) training step of DeepLab-v2 ResNet-101: MindSpore (graph) vs PyTorch.

    python bench/bench_deeplab.py                          # 512x256, batch 1 + 1 (issue #10's setting)
    python bench/bench_deeplab.py --size 1280 720 --target-size 1024 512   # the paper's GTA5 / Cityscapes sizes
    python bench/bench_deeplab.py --layers 1 1 1 1 --size 128 64 --iters 1  # smoke run

Both sides run the same iteration on the same random images: the source and the target image
each go through DeepLab-v2 (frozen BatchNorm, rates 6/12/18/24, layer3 auxiliary classifier),
segmentation loss on the source outputs, adversarial losses of the target outputs through two
fully-convolutional discriminators, the discriminators' losses on detached outputs, then SGD
(classifier 10x) for the network and Adam for the discriminators. MindSpore builds it from
``configs/gta2cityscapes/adaptsegnet_gta2cityscapes.yaml`` with the repo's engine (one jitted
joint step); PyTorch runs ``tools.torch_reference.adaptsegnet_iteration``, written from the
official training loop. PyTorch runs first, before MindSpore's CPU settings (see
bench_resnet50.py). Reported: ms per step and the MindSpore/PyTorch ratio.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_resnet50.py

from bench_resnet50 import engine_step, side_by_side  # noqa: E402

CONFIG = "configs/gta2cityscapes/adaptsegnet_gta2cityscapes.yaml"
CLASSES = 19


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 256), metavar=("W", "H"), help="source image")
    parser.add_argument("--target-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                        help="target image (default: the source size)")
    parser.add_argument("--layers", type=int, nargs=4, default=(3, 4, 23, 3), help="blocks per stage")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (after compilation)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--device", default="auto", help="MindSpore device: auto | CPU | GPU | Ascend")
    return parser.parse_args(argv)


def make_batch(args, seed=0):
    rng = np.random.default_rng(seed)
    (w, h), (wt, ht) = args.size, args.target_size or args.size
    return {"x_s": rng.normal(size=(1, 3, h, w)).astype(np.float32),
            "y_s": rng.integers(0, CLASSES, (1, h, w)).astype(np.int32),
            "x_t": rng.normal(size=(1, 3, ht, wt)).astype(np.float32)}


def torch_step(args, batch):
    import torch

    from tools.torch_reference import DeepLabV2, FCDiscriminator, adaptsegnet_iteration

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = DeepLabV2(tuple(args.layers), CLASSES)
    net.train()
    for module in net.modules():  # frozen BatchNorm, as the MindSpore config
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    discs = [FCDiscriminator(CLASSES) for _ in range(2)]
    heads = [p for name, p in net.named_parameters() if name.startswith(("layer5", "layer6"))]
    backbone = [p for name, p in net.named_parameters()
                if p.requires_grad and not name.startswith(("layer5", "layer6"))]
    optimizer = torch.optim.SGD([{"params": backbone}, {"params": heads, "lr": 2.5e-3}], lr=2.5e-4, momentum=0.9,
                                weight_decay=5e-4)
    optimizers_d = [torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.9, 0.99)) for d in discs]
    x_s, y_s, x_t = torch.from_numpy(batch["x_s"]), torch.from_numpy(batch["y_s"]).long(), torch.from_numpy(batch["x_t"])

    def step():
        return adaptsegnet_iteration(net, discs, optimizer, optimizers_d, x_s, y_s, x_t, 0.1, (0.001, 0.0002))[0]

    return torch.__version__, step


def mindspore_step(args, batch):
    import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
    from engine.config import load_config
    from engine.runtime import init_mindspore

    device = init_mindspore(args.device, "graph", seed=0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, CONFIG), ["model.pretrained=null",
                                                   f"model.backbone_kwargs.layers={list(args.layers)}"])
    return device, engine_step(cfg, batch, output=1)  # [1] = the main segmentation loss


def main(argv=None):
    args = parse_args(argv)
    batch = make_batch(args)
    (w, h), (wt, ht) = args.size, args.target_size or args.size
    print(f"AdaptSegNet multi-level step, DeepLab-v2 ResNet layers {list(args.layers)}, source 1x{w}x{h} + target "
          f"1x{wt}x{ht}, {os.cpu_count()} cores, {args.warmup} warm-up + {args.iters} timed steps, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", flush=True)
    side_by_side(torch_step, mindspore_step, args, batch, "seg loss")

if __name__ == "__main__":
    main()
