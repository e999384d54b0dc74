"""Peer benchmark: this repository (MindSpore) beside a TLlib-style PyTorch run on optdigits -> optdigits-M.

    python bench/peer_tllib.py [--methods source_only dann] [--seeds 0 1 2] [--out /tmp/peer_runs]

For each method and seed the MindSpore side is ``train.py --config configs/digits/<method>_optdigits.yaml``
(``train.seed=<seed>``, a fresh run directory under ``--out``). The PyTorch side is written from
TLlib (``tools/torch_reference.py``: ``ImageClassifier``, ``DomainDiscriminator``,
``WarmStartGradientReverseLayer``, ``DomainAdversarialLoss``, SGD + ``LambdaLR``, the ``train()``
iteration of TLlib's examples) with the same config: the same data arrays and batches (the
repository's ``BatchStream`` of that seed, so both sides see identical images in identical order),
recipe, iterations and discriminator, and PyTorch's own initialisation seeded with the seed.
Both report the final-iterate target accuracy (``select_by: last``). Prints one Markdown table:
target accuracy mean ± std over the seeds and wall time per run for each framework.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import engine  # noqa: E402,F401  (CPU runtime settings before MindSpore loads)


def run_mindspore(method, seed, out):
    """``train.py`` in a subprocess; returns (target accuracy, wall seconds)."""
    run_dir = os.path.join(out, "mindspore", method, f"seed{seed}")
    results = os.path.join(run_dir, "results.json")
    if not os.path.isfile(results):
        start = time.time()
        command = [sys.executable, "train.py", "--config", f"configs/digits/{method}_optdigits.yaml",
                   "--opt", f"train.seed={seed}", f"train.output_dir={run_dir}"]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"train.py {method} seed {seed} failed:\n{proc.stderr[-3000:]}")
        with open(os.path.join(run_dir, "wall_seconds.txt"), "w", encoding="utf-8") as handle:
            handle.write(f"{time.time() - start:.1f}\n")
    with open(results, encoding="utf-8") as handle:
        acc = json.load(handle)["target_acc"]
    with open(os.path.join(run_dir, "wall_seconds.txt"), encoding="utf-8") as handle:
        return acc, float(handle.read())


def run_pytorch(method, seed):
    """TLlib's recipe in PyTorch on the repository's batches; returns (target accuracy, wall seconds)."""
    import torch

    from datasets.base import iterate_eval
    from engine.config import load_config
    from engine.data import build_data
    from tools import torch_reference as ref

    start = time.time()
    cfg = load_config(f"{ROOT}/configs/digits/{method}_optdigits.yaml", [f"train.seed={seed}"])
    if cfg.model.backbone != "lenet" or cfg.model.bottleneck_dim:
        raise ValueError("the peer benchmark mirrors the LeNet digits configs only")
    data = build_data(cfg, seed)
    torch.manual_seed(seed)
    net = ref.ImageClassifier(ref.LeNet(cfg.data.channels, cfg.data.image_size), cfg.model.num_classes, 0,
                              cfg.model.backbone_lr_mult)
    groups, modules, transfer = net.get_parameters(), [net], None
    if cfg.method.name == "dann":
        params = cfg.method
        grl = ref.WarmStartGradientReverseLayer(alpha=params.grl_alpha, hi=params.grl_max, max_iters=cfg.train.iters)
        disc = ref.DomainDiscriminator(net.features_dim, params.disc_hidden, params.disc_batch_norm, dropout=0.0)
        adversary = ref.DomainAdversarialLoss(disc, grl)
        groups += disc.get_parameters()
        modules.append(disc)

        def dann_transfer(g_s, f_s, g_t, f_t):
            return adversary(f_s, f_t), adversary.domain_discriminator_accuracy

        transfer = dann_transfer
    elif cfg.method.name != "source_only":
        raise ValueError(f"no PyTorch peer for method {cfg.method.name}")
    opt = cfg.optim
    optimizer, scheduler = ref.inverse_decay_sgd(groups, opt.lr, opt.momentum, opt.weight_decay, opt.nesterov,
                                                 opt.lr_gamma, opt.lr_power)
    for module in modules:
        module.train()
    weight = getattr(cfg.method, "weight", 1.0)
    for it in range(cfg.train.iters):
        x_s, y_s = data.source.batch(it)[:2]
        x_t = data.target.batch(it)[0] if transfer is not None else None
        ref.tllib_iteration(net, optimizer, scheduler, torch.from_numpy(np.ascontiguousarray(x_s)),
                            torch.from_numpy(y_s.astype(np.int64)),
                            None if x_t is None else torch.from_numpy(np.ascontiguousarray(x_t)), transfer, weight)
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in iterate_eval(data.target_test, 256, data.eval_transform, data.loader):
            correct += int((net(torch.from_numpy(np.ascontiguousarray(x)))[0].argmax(1).numpy() == y).sum())
            total += len(y)
    return correct / total, time.time() - start


def mean_std(values):
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["source_only", "dann"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="/tmp/peer_runs", help="MindSpore run directories (reused if finished)")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    rows = []
    for method in args.methods:
        ms_runs = [run_mindspore(method, seed, args.out) for seed in args.seeds]
        pt_runs = [run_pytorch(method, seed) for seed in args.seeds]
        for seed, (ms_acc, _), (pt_acc, _) in zip(args.seeds, ms_runs, pt_runs):
            print(f"{method} seed {seed}: MindSpore {ms_acc:.4f}  PyTorch {pt_acc:.4f}", file=sys.stderr)
        rows.append((method, ms_runs, pt_runs))
    print(f"optdigits -> optdigits-M, target accuracy (%) of the final iterate, seeds {args.seeds}\n")
    print("| method | MindSpore (this repo) | PyTorch (TLlib recipe) | MindSpore s/run | PyTorch s/run |")
    print("|---|---|---|---|---|")
    for method, ms_runs, pt_runs in rows:
        print(f"| {method} | {mean_std([a for a, _ in ms_runs])} | {mean_std([a for a, _ in pt_runs])} | "
              f"{np.mean([t for _, t in ms_runs]):.0f} | {np.mean([t for _, t in pt_runs]):.0f} |")


if __name__ == "__main__":
    main()
