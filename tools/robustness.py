"""Robustness of a trained classifier: corruption error and L-inf adversarial accuracy (FGSM, PGD).

    python tools/robustness.py --config runs/tta/source_only_optdigits_c/seed0/config.yaml \\
        --ckpt runs/tta/source_only_optdigits_c/seed0/last.ckpt [--eps 8/255] [--step-size 2/255] [--steps 10]
    python tools/robustness.py --table runs/tta/*/seed*/robustness.json     # mean ± std per config

* Corruption error: the error on every corruption set of ``--dataset`` (default: the config's target
  dataset; all its corruption x severity sets, or ``--sets``), averaged over corruptions and
  severities, as CrossNorm/SelfNorm's ``test_c`` (``cifar.py``: accuracy per corruption file over its
  5 severities, then the mean over corruptions; the sets are equally sized, so it is the same number).
* Adversarial accuracy on the config's target test split (source model, inference mode), L-inf:
  FGSM (Goodfellow et al. 2015) ``x + eps sign(grad_x CE)``, and PGD (Madry et al. 2018) from a
  uniform random start in the eps-ball (``--no-random-start`` to start at x), ``--steps`` steps of
  ``step_size sign(grad)`` each projected onto the eps-ball and the valid image range. eps and the
  step size are given on [0, 1] inputs (defaults 8/255, 2/255, 10 steps) and converted per channel
  to the model's normalised inputs (eps / std; valid range [(0 - mean) / std, (1 - mean) / std]),
  both read from the config's evaluation transform. Each attack is one ``@ms.jit`` graph per batch
  shape (the steps unrolled); the random start is drawn on the host (seeded) and fed in.

Writes ``robustness.md`` / ``.json`` beside the checkpoint (or in ``--out-dir``) and prints the table.
"""
import argparse
import json
import os
import sys
from fractions import Fraction

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.cli import print_table_or_exit, start_checkpoint_tool_or_exit  # noqa: E402
from engine.runtime import DEVICES  # noqa: E402


def parse_fraction(text):
    """``"8/255"`` or ``"0.03"`` -> float; argparse type."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def input_box(transform, channels, size=4):
    """Per-channel ``(lower, scale)`` of an affine per-channel evaluation transform: x01 -> lower + scale x01.

    Read off the transform applied to all-0 and all-1 images: lower = t(0), scale = t(1) - t(0) (= 1/std).
    """
    zero = transform(np.zeros((1, size, size, channels), np.float32), None)[0, 0, 0]
    one = transform(np.ones((1, size, size, channels), np.float32), None)[0, 0, 0]
    return zero.astype(np.float32), (one - zero).astype(np.float32)


class LinfAttack:
    """``attack(x, y, noise) -> (predictions, x_adv)`` on normalised NCHW inputs, in one jitted graph.

    ``eps``, ``step_size`` are on [0, 1] inputs; ``lower`` / ``scale`` (per channel) describe the
    normalisation, so the ball is ``eps * scale`` wide and the box ``[lower, lower + scale]``.
    ``noise`` (same shape as x, uniform in [-1, 1]) is the random start, scaled by the ball; pass
    zeros for none. FGSM = ``steps=1, step_size=eps`` and zero noise.
    """

    def __init__(self, model, eps, step_size, steps, lower, scale):
        import mindspore as ms
        from mindspore import Tensor, ops

        from losses.base import cross_entropy

        if steps < 1:
            raise ValueError(f"the attack needs steps >= 1, got {steps}")
        shape = (1, -1, 1, 1)
        lo = Tensor(np.asarray(lower, np.float32).reshape(shape))
        scale = np.asarray(scale, np.float32).reshape(shape)
        hi = lo + Tensor(scale)
        radius, step = Tensor(eps * scale), Tensor(step_size * scale)

        def loss_fn(x, y):
            return cross_entropy(model(x)[0], y)

        grad_fn = ms.grad(loss_fn, grad_position=0)

        @ms.jit
        def attack(x, y, noise):
            x_adv = ops.clamp(x + noise * radius, lo, hi)
            for _ in range(steps):
                x_adv = x_adv + step * ops.sign(grad_fn(x_adv, y))
                x_adv = ops.clamp(ops.clamp(x_adv, x - radius, x + radius), lo, hi)
            return ops.argmax(model(x_adv)[0], -1).astype(ms.int32), x_adv

        self.model, self._attack = model, attack

    def __call__(self, x, y, noise):
        was_training = self.model.training
        self.model.set_train(False)
        try:
            return self._attack(x, y, noise)
        finally:
            self.model.set_train(was_training)


def adversarial_accuracy(attack, domain, transform, batch_size, random_start, seed=0):
    """Accuracy under ``attack`` over ``domain`` in order; predictions read once at the end."""
    from mindspore import Tensor

    from datasets.base import iterate_eval

    preds, labels = [], []
    for k, (x, y) in enumerate(iterate_eval(domain, batch_size, transform)):
        rng = np.random.default_rng([seed, k])
        noise = rng.uniform(-1, 1, x.shape).astype(np.float32) if random_start else np.zeros_like(x)
        preds.append(attack(Tensor(x), Tensor(y.astype(np.int32)), Tensor(noise))[0])
        labels.append(y)
    return float((np.concatenate([p.asnumpy() for p in preds]) == np.concatenate(labels)).mean())


def corruption_errors(model, sets, transform, batch_size):
    """``{set: error}`` of the model (inference mode) on each ``(name, domain)``."""
    from engine.evaluators import evaluate

    return {name: 1.0 - evaluate(model, domain, transform, batch_size)["score"] for name, domain in sets}


def corruption_summary(errors):
    """Mean error over all sets and per corruption (``<corruption>-<severity>`` names grouped)."""
    per = {}
    for name, err in errors.items():
        per.setdefault(str(name).rpartition("-")[0] or str(name), []).append(err)
    return float(np.mean(list(errors.values()))), {k: float(np.mean(v)) for k, v in per.items()}


def format_table(report):
    lines = [f"{report['config']} ({report['ckpt']}), target test ({report['n']} images); accuracy / error %", "",
             "| metric | value |", "|---|---|", f"| clean accuracy | {100 * report['clean_acc']:.2f} |"]
    a = report["attack"]
    budget = f"eps {a['eps']:.4f}"
    if "fgsm_acc" in report:
        lines.append(f"| FGSM accuracy ({budget}) | {100 * report['fgsm_acc']:.2f} |")
    if "pgd_acc" in report:
        lines.append(f"| PGD-{a['steps']} accuracy ({budget}, step {a['step_size']:.4f}"
                     f"{', random start' if a['random_start'] else ''}) | {100 * report['pgd_acc']:.2f} |")
    if "corruption_error" in report:
        lines.append(f"| corruption error (mean of {len(report['corruption_sets'])} sets) | "
                     f"{100 * report['corruption_error']:.2f} |")
        lines += [f"| {name} error | {100 * err:.2f} |" for name, err in report["per_corruption"].items()]
    return "\n".join(lines) + "\n"


def seed_table(paths):
    """Markdown over ``robustness.json`` files: one row per config, mean ± std over its seeds (%)."""
    by_config = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                report = json.load(handle)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read robustness results {path}: {err}") from None
        by_config.setdefault(report["config"], []).append(report)
    if not by_config:
        raise ValueError("no robustness result files given to --table")
    keys = [("clean_acc", "clean acc"), ("fgsm_acc", "FGSM acc"), ("pgd_acc", "PGD acc"),
            ("corruption_error", "corruption error")]
    first = next(iter(by_config.values()))[0]["attack"]
    lines = [f"L-inf eps {first['eps']:.4f} on [0, 1] inputs, PGD-{first['steps']} step {first['step_size']:.4f}; "
             "%, mean ± std over seeds", "", "| config | seeds | " + " | ".join(k[1] for k in keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for config, reports in by_config.items():
        cells = []
        for key, _ in keys:
            values = 100 * np.array([r[key] for r in reports if key in r])
            cells.append("—" if not len(values) else f"{values.mean():.1f} ± {values.std():.1f}")
        lines.append(f"| {config} | {len(reports)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the run's saved config.yaml (or any config)")
    parser.add_argument("--ckpt", help="checkpoint written by train.py")
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON",
                        help="instead of running: mean ± std table of robustness.json files, per config")
    parser.add_argument("--out", default=None, help="--table: also write the table to this file")
    parser.add_argument("--attacks", nargs="*", default=["fgsm", "pgd"], choices=["fgsm", "pgd"])
    parser.add_argument("--eps", type=parse_fraction, default=8 / 255, help="L-inf radius on [0, 1] inputs")
    parser.add_argument("--step-size", type=parse_fraction, default=2 / 255, help="PGD step on [0, 1] inputs")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--no-random-start", action="store_true", help="PGD starts at x instead of a random point")
    parser.add_argument("--no-corruptions", action="store_true", help="skip the corruption error")
    parser.add_argument("--dataset", default=None, help="corruption dataset (default: the config's target)")
    parser.add_argument("--sets", nargs="*", default=None, help="corruption sets (default: all of the dataset's)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--out-dir", default=None, help="where robustness.md/.json go (default: beside the ckpt)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.table is not None:
        return print_table_or_exit(seed_table, args.table, args.out)
    cfg, device = start_checkpoint_tool_or_exit(parser, args, ("steps", "batch_size"))
    from engine import checkpoint
    from engine.data import build_data
    from engine.evaluators import evaluate
    from engine.trainer import build_method

    random_start = not args.no_random_start
    report = {"config": cfg.name, "ckpt": args.ckpt, "device": device,
              "attack": {"eps": args.eps, "step_size": args.step_size, "steps": args.steps,
                         "random_start": random_start, "norm": "linf", "input_range": [0, 1]}}
    try:
        method = build_method(cfg)
        checkpoint.load(args.ckpt, method)
        model = method.model
        data = build_data(cfg, cfg.train.seed)
        test = data.target_test
        report["n"] = len(test)
        report["clean_acc"] = evaluate(model, test, data.eval_transform, args.batch_size)["score"]
        lower, scale = input_box(data.eval_transform, cfg.data.channels)
        if "fgsm" in args.attacks:
            fgsm = LinfAttack(model, args.eps, args.eps, 1, lower, scale)
            report["fgsm_acc"] = adversarial_accuracy(fgsm, test, data.eval_transform, args.batch_size, False)
        if "pgd" in args.attacks:
            pgd = LinfAttack(model, args.eps, args.step_size, args.steps, lower, scale)
            report["pgd_acc"] = adversarial_accuracy(pgd, test, data.eval_transform, args.batch_size, random_start,
                                                     cfg.train.seed)
        if not args.no_corruptions:
            from tools.tta import corruption_sets

            sets = corruption_sets(cfg, args.dataset or cfg.data.target.name, args.sets)
            errors = corruption_errors(model, sets, data.eval_transform, args.batch_size)
            report["corruption_sets"] = errors
            report["corruption_error"], report["per_corruption"] = corruption_summary(errors)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        sys.exit(f"error: {err.args[0] if len(err.args) == 1 else err}")
    table = format_table(report)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.ckpt))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "robustness.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    with open(os.path.join(out_dir, "robustness.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    print(json.dumps(report) if args.json else table, end="\n" if args.json else "")
    return report


if __name__ == "__main__":
    main()
