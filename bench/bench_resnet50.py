"""Time one DANN training step, ResNet-50 + bottleneck 256 + head 31: MindSpore (graph) vs PyTorch.

    python bench/bench_resnet50.py                      # batch 32 + 32 at 224x224, the Office-31 setting
    python bench/bench_resnet50.py --batch 4 --size 64 --iters 2   # smoke run

Both sides run the same computation on the same batch: source and target images go through
the network together (BatchNorm sees both), cross-entropy on the source logits, a 1024-1024-1
discriminator with BatchNorm behind a gradient reversal layer on the bottleneck features, SGD
(momentum 0.9, nesterov, weight decay 5e-4, backbone at 0.1x lr). MindSpore uses the repo's
engine (``build_method`` + ``make_step``: one jitted step); PyTorch an equivalent eager model
with torchvision's parameter names. PyTorch runs first, before ``engine`` applies MindSpore's CPU
settings (``ONEDNN_MAX_CPU_ISA=AVX2`` would slow PyTorch's own oneDNN on AVX-512 hosts), so each
framework runs with its best settings. Reported: ms per step (mean over ``--iters`` after
``--warmup`` steps; MindSpore's graph compile is timed separately) and the MindSpore/PyTorch ratio.
"""
import argparse
import gc
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PyTorch's OpenMP threads busy-wait by default, which costs it 3x on a shared machine; passive
# waiting is PyTorch's counterpart of MindSpore's MS_DEV_HOST_BLOCKING_RUN (set by engine.runtime).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images per domain")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (after compilation)")
    parser.add_argument("--classes", type=int, default=31)
    parser.add_argument("--bottleneck", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--device", default="auto", help="MindSpore device: auto | CPU | GPU | Ascend")
    return parser.parse_args(argv)


def make_batch(args, seed=0):
    rng = np.random.default_rng(seed)
    shape = (args.batch, 3, args.size, args.size)
    return {"x_s": rng.normal(size=shape).astype(np.float32), "x_t": rng.normal(size=shape).astype(np.float32),
            "y_s": rng.integers(0, args.classes, args.batch).astype(np.int32)}


def timed(step, warmup, iters):
    """(seconds of the first call, mean seconds of ``iters`` calls after ``warmup`` more, first loss)."""
    start = time.perf_counter()
    loss = step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return first, (time.perf_counter() - start) / iters, loss


# --------------------------------------------------------------------------- MindSpore (the repo's engine)
def mindspore_step(args, batch):
    import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)
    import losses  # noqa: F401  (registers dann)
    import models.resnet  # noqa: F401  (registers resnet50)
    from engine.config import Config, DataCfg, ModelCfg, OptimCfg
    from engine.runtime import init_mindspore
    from losses.dann import DannParams

    device = init_mindspore(args.device, "graph", seed=0)
    cfg = Config(data=DataCfg(batch_size=args.batch, image_size=args.size),
                 model=ModelCfg(backbone="resnet50", bottleneck_dim=args.bottleneck, num_classes=args.classes,
                                backbone_lr_mult=0.1),
                 method=DannParams(disc_hidden=1024, disc_batch_norm=True),
                 optim=OptimCfg(lr=0.01, nesterov=True, weight_decay=5e-4))
    return device, engine_step(cfg, batch)


def engine_step(cfg, batch, output=0):
    """``run() -> float``: one jitted training step of ``cfg``'s first phase (as train.py builds it) on ``batch``,
    returning its ``output``-th logged value."""
    import mindspore as ms
    from mindspore import Tensor

    from engine.trainer import build_method, build_phase_optimizers, make_step

    method = build_method(cfg)
    method.set_train(True)
    phase = method.phases()[0]
    step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(cfg.optim, method, phase))
    inputs = ms.mutable({k: Tensor(v) for k, v in batch.items()})
    progress = Tensor(0.5, ms.float32)
    return lambda: float(step(inputs, progress)[output].asnumpy())


# --------------------------------------------------------------------------- PyTorch reference
def torch_step(args, batch):
    import torch
    from torch import nn

    from tools.torch_reference import Bottleneck, GradientReverse, ResNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = ResNet(Bottleneck, (3, 4, 6, 3))  # ResNet-50, pooled 2048-d features (no fc)
    bottleneck = nn.Sequential(nn.Linear(2048, args.bottleneck), nn.BatchNorm1d(args.bottleneck), nn.ReLU())
    head = nn.Linear(args.bottleneck, args.classes)
    disc = nn.Sequential(nn.Linear(args.bottleneck, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
                         nn.Linear(1024, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Linear(1024, 1))
    optimizer = torch.optim.SGD([{"params": backbone.parameters(), "lr": 0.001},
                                 {"params": [*bottleneck.parameters(), *head.parameters(), *disc.parameters()]}],
                                lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x_s, y_s, x_t = (torch.from_numpy(batch[k]) for k in ("x_s", "y_s", "x_t"))
    x, y_s = torch.cat((x_s, x_t)), y_s.long()
    n = x_s.shape[0]
    domain = torch.cat((torch.ones(n), torch.zeros(x_t.shape[0])))
    coeff = 2.0 / (1.0 + np.exp(-10 * 0.5)) - 1.0
    for module in (backbone, bottleneck, head, disc):
        module.train()

    def step():
        f = bottleneck(backbone(x))
        loss = nn.functional.cross_entropy(head(f[:n]), y_s)
        d = disc(GradientReverse.apply(f, coeff)).squeeze(-1)
        loss = loss + nn.functional.binary_cross_entropy_with_logits(d, domain)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return torch.__version__, step


def main(argv=None):
    args = parse_args(argv)
    batch = make_batch(args)
    print(f"DANN step, ResNet-50 + bottleneck {args.bottleneck} + head {args.classes}, "
          f"{args.batch}+{args.batch} images {args.size}x{args.size}, {os.cpu_count()} cores, "
          f"{args.warmup} warm-up + {args.iters} timed steps, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}",
          flush=True)

    side_by_side(torch_step, mindspore_step, args, batch)


def side_by_side(torch_step, mindspore_step, args, batch, loss_name="loss"):
    """Time PyTorch, then (after freeing it) MindSpore on the same batch; print both and the ratio."""
    version, step = torch_step(args, batch)
    _, torch_s, loss = timed(step, args.warmup, args.iters)
    print(f"pytorch {version} (CPU, {args.threads} threads): {torch_s * 1e3:.0f} ms/step "
          f"(first {loss_name} {loss:.3f})", flush=True)
    del step
    gc.collect()

    device, step = mindspore_step(args, batch)
    compile_s, ms_s, loss = timed(step, args.warmup, args.iters)
    import mindspore

    print(f"mindspore {mindspore.__version__} ({device}, graph): {ms_s * 1e3:.0f} ms/step "
          f"(first step incl. compile {compile_s:.1f} s, first {loss_name} {loss:.3f})")
    print(f"ratio mindspore/pytorch: {ms_s / torch_s:.2f}")

if __name__ == "__main__":
    main()
