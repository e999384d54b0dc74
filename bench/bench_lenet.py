"""Time one LeNet training step, MindSpore graph mode vs PyTorch CPU, same batch, same run.

    python bench/bench_lenet.py [--method source_only|dann] [--batch 64] [--steps 200]

The MindSpore step is the repo's own (engine.trainer.make_step over the method cell, as
train.py runs it); the PyTorch step is the same network, loss and SGD update written in torch.
Prints ms/step (median over timed steps) for each and the ratio MindSpore / PyTorch.
Each framework runs with its best CPU settings: PyTorch is timed first, before ``engine`` caps
oneDNN at AVX2 for MindSpore (the cap slows PyTorch's own oneDNN convolutions here).
"""
import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def time_steps(run_step, warmup, steps):
    for _ in range(warmup):
        run_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def mindspore_step(method_name, batch, x_s, y_s, x_t):
    import mindspore as ms
    from mindspore import Tensor

    from engine.config import load_config
    from engine.trainer import build_method, build_phase_optimizers, make_step

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "digits", f"{method_name}_optdigits.yaml"),
                      [f"data.batch_size={batch}"])
    method = build_method(cfg)
    method.set_train(True)
    phase = method.phases()[0]
    step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(cfg.optim, method, phase))
    data = ms.mutable({"x_s": Tensor(x_s), "y_s": Tensor(y_s), "x_t": Tensor(x_t)})
    t = Tensor(0.5, ms.float32)

    def run():
        out = step(data, t)
        out[0].asnumpy()  # wait for the result

    return run


def torch_step(method_name, x_s, y_s, x_t):
    import torch
    from torch import nn

    from tools.torch_reference import GradientReverse

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2))
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(768, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU())
            self.head = nn.Linear(100, 10)

        def forward(self, x):
            f = self.fc(self.conv(x))
            return self.head(f), f

    model = LeNet()
    disc = nn.Sequential(nn.Linear(100, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1))
    params = list(model.parameters()) + (list(disc.parameters()) if method_name == "dann" else [])
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    xs, ys, xt = torch.from_numpy(x_s), torch.from_numpy(y_s).long(), torch.from_numpy(x_t)
    n = xs.shape[0]
    domain = torch.cat([torch.ones(n), torch.zeros(xt.shape[0])])

    def run():
        opt.zero_grad(set_to_none=True)
        if method_name == "dann":
            g, f = model(torch.cat([xs, xt]))
            loss = nn.functional.cross_entropy(g[:n], ys)
            d = disc(GradientReverse.apply(f, 0.99)).squeeze(-1)
            loss = loss + nn.functional.binary_cross_entropy_with_logits(d, domain)
        else:
            g, _ = model(xs)
            loss = nn.functional.cross_entropy(g, ys)
        loss.backward()
        opt.step()

    return run, torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="source_only", choices=("source_only", "dann"))
    parser.add_argument("--batch", type=int, default=64, help="images per domain")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    import numpy as np

    rng = np.random.default_rng(0)
    x_s = rng.normal(size=(args.batch, 3, 28, 28)).astype(np.float32)
    x_t = rng.normal(size=(args.batch, 3, 28, 28)).astype(np.float32)
    y_s = rng.integers(0, 10, args.batch).astype(np.int32)

    torch_run, torch = torch_step(args.method, x_s, y_s, x_t)
    torch.set_num_threads(os.cpu_count())
    torch_ms = time_steps(torch_run, args.warmup, args.steps)

    from engine.runtime import init_mindspore  # applies the CPU settings before MindSpore loads

    init_mindspore("CPU", "graph", 0)
    import mindspore as ms

    ms_run = mindspore_step(args.method, args.batch, x_s, y_s, x_t)
    ms_ms = time_steps(ms_run, args.warmup, args.steps)
    print(f"LeNet {args.method} train step, batch {args.batch}{' + ' + str(args.batch) if args.method == 'dann' else ''}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"  MindSpore {ms.__version__} graph: {ms_ms:7.2f} ms/step "
          f"(ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')}, "
          f"MS_DEV_HOST_BLOCKING_RUN={os.environ.get('MS_DEV_HOST_BLOCKING_RUN')})")
    print(f"  PyTorch {torch.__version__}:        {torch_ms:7.2f} ms/step")
    print(f"  ratio MindSpore / PyTorch: {ms_ms / torch_ms:.2f}")


if __name__ == "__main__":
    main()
