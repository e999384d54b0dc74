"""Score every width of a trained slimmable model bank (SlimDA) and pick widths for compute budgets with UPEM.

    python tools/select_width.py runs/slimda/slimda_optdigits/seed0 --budget-mflops 0.5 1 2
    python tools/select_width.py RUN_DIR [--ckpt PATH] [--budget-mflops B ...] [--json]

For each width of the run's slimmable backbone: MFLOPs and parameters of the deployed sub-network (backbone plus
a K-way linear classifier, :func:`models.slimmable.count_flops_params`), UPEM, and, when the target test split
has labels (for reporting only; nothing here selects on them), the target test accuracy of the deployed
classifier (the model's output, C_a for SlimDA) and, for SymNets-style heads, of C_t.

**UPEM** (unsupervised performance evaluation metric, Meng et al., CVPR 2022, arXiv 2206.06620, Sec. 3.4): the
output discrepancy on the *unlabelled target training images* between a candidate and the anchor, the largest
width of the bank:

    UPEM(w) = mean_i 0.5 * sum_k | p_w(k | x_i) - p_anchor(k | x_i) |

the mean total-variation distance between the two softmax outputs (in [0, 1]; 0 for the anchor; lower is
better). The paper measures the candidate's disagreement with the largest model as its label-free proxy of
error; total variation is our choice of discrepancy: symmetric, bounded and finite for one-hot outputs (a KL
divergence is not).

**Selection under a budget**: among the widths whose MFLOPs are at most B, the lowest UPEM (ties: fewer
MFLOPs). With one width multiplier for the whole network the candidates under a budget are nested and UPEM
usually falls with width, so this often picks the widest width that fits; UPEM's ranking is what the
correlation below tests. The Pearson and Spearman correlations between UPEM and target accuracy over all widths
(negative = UPEM ranks widths as accuracy does) measure how well the label-free metric predicts accuracy.

Prints a Markdown table and writes ``select_width.json`` into RUN_DIR.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engine  # noqa: E402,F401  (CPU runtime settings before MindSpore loads)
from engine.runtime import DEVICES  # noqa: E402

OUT_FILE = "select_width.json"


def upem(probs, anchor_probs):
    """Mean total-variation distance between candidate and anchor softmax outputs, both (N, K)."""
    return float(np.mean(0.5 * np.abs(np.asarray(probs) - np.asarray(anchor_probs)).sum(1)))


def select_under_budget(rows, budget_mflops):
    """The row with the lowest UPEM among those with ``mflops <= budget`` (ties: fewer MFLOPs), or None."""
    fitting = [r for r in rows if r["mflops"] <= budget_mflops]
    return min(fitting, key=lambda r: (r["upem"], r["mflops"])) if fitting else None


def correlations(upems, accuracies):
    """``(pearson, spearman)`` of UPEM vs accuracy; None where undefined (fewer than 3 widths or a constant)."""
    from scipy import stats

    x, y = np.asarray(upems, float), np.asarray(accuracies, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


def softmax(logits):
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def target_classifier_logits(head, features):
    """C_t's logits (N, K) from a SymNets-style head's 2K fc, or None for other heads."""
    from losses.symnets import SymNetsHead

    if not isinstance(head, SymNetsHead):
        return None
    weight, bias = head.fc.weight.asnumpy().astype(np.float64), head.fc.bias.asnumpy().astype(np.float64)
    return (features @ weight.T + bias)[:, head.num_classes:]


def score_widths(cfg, ckpt, device):
    """``(rows, meta)``: one dict per width (largest first) with mflops, params, upem, acc, acc_ct."""
    from engine import checkpoint
    from engine.data import build_data
    from engine.evaluators import predict
    from engine.runtime import init_mindspore
    from engine.trainer import build_method
    from losses.slimda import WidthView
    from models.slimmable import SlimmableBackbone, count_flops_params

    init_mindspore(device, "graph", cfg.train.seed)
    method = build_method(cfg)
    model = method.model
    if not isinstance(getattr(model, "backbone", None), SlimmableBackbone):
        raise ValueError(f"{cfg.name}: model.backbone={cfg.model.backbone} is not slimmable; select_width scores "
                         "the widths of a slimmable bank (e.g. configs/slimda/slimda_optdigits.yaml)")
    meta = checkpoint.load(ckpt, method)
    data = build_data(cfg, cfg.train.seed)
    batch = max(cfg.data.batch_size, 64)
    view = WidthView(model)
    widths = sorted(model.backbone.widths, reverse=True)
    labelled = data.target_test.labels is not None and len(data.target_test.labels) > 0
    anchor, rows = None, []
    for width in widths:
        view.set_width(model.backbone.width_index(width))
        train_probs = predict(view, data.target.domain, data.eval_transform, batch, data.loader)["probs"]
        anchor = train_probs if anchor is None else anchor
        mflops, params = count_flops_params(cfg.model.backbone, width, cfg.data.image_size, cfg.data.channels,
                                            cfg.model.num_classes)
        row = {"width": width, "mflops": mflops, "params": int(params), "upem": upem(train_probs, anchor),
               "acc": None, "acc_ct": None}
        if labelled:
            test = predict(view, data.target_test, data.eval_transform, batch, data.loader)
            row["acc"] = float(np.mean(test["logits"].argmax(1) == test["labels"]))
            ct = target_classifier_logits(model.head, test["features"].astype(np.float64))
            row["acc_ct"] = None if ct is None else float(np.mean(ct.argmax(1) == test["labels"]))
        rows.append(row)
    return rows, {"iter": meta.get("iter"), "n_target_train": len(data.target.domain),
                  "n_target_test": len(data.target_test)}


def fmt(value, scale=1.0, digits=2):
    return "—" if value is None else f"{scale * value:.{digits}f}"


def markdown(report):
    lines = [f"{report['run']} seed {report['seed']} @ iter {report['iter']}: UPEM = mean total variation to width "
             f"{report['anchor_width']:g} on {report['n_target_train']} unlabelled target training images", "",
             "| width | MFLOPs | params | UPEM | target acc. (%) | C_t acc. (%) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['width']:g} | {r['mflops']:.3f} | {r['params']:,} | {r['upem']:.4f} | {fmt(r['acc'], 100)} | "
              f"{fmt(r['acc_ct'], 100)} |" for r in report["widths"]]
    pearson, spearman = report["pearson"], report["spearman"]
    lines += ["", f"UPEM vs target accuracy over {len(report['widths'])} widths: Pearson {fmt(pearson, digits=3)}, "
                  f"Spearman {fmt(spearman, digits=3)}"]
    for choice in report["budgets"]:
        pick = choice["selected"]
        lines.append(f"budget {choice['budget_mflops']:g} MFLOPs: " + (
            "no width fits" if pick is None else
            f"width {pick['width']:g} ({pick['mflops']:.3f} MFLOPs, UPEM {pick['upem']:.4f}, target acc. "
            f"{fmt(pick['acc'], 100)}%)"))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory written by train.py with a slimmable backbone")
    parser.add_argument("--ckpt", default=None, help="checkpoint to score (default: RUN_DIR/last.ckpt)")
    parser.add_argument("--budget-mflops", type=float, nargs="*", default=[], metavar="B",
                        help="compute budgets in MFLOPs (multiply-accumulates); picks a width for each")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    args = parser.parse_args(argv)
    from engine.trainer import CONFIG_FILE, LAST_CKPT

    if any(not b > 0 for b in args.budget_mflops):
        sys.exit(f"error: --budget-mflops takes positive numbers, got {args.budget_mflops}")
    run_dir = args.run_dir
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        sys.exit(f"error: {run_dir} holds no {CONFIG_FILE}, so it is not a run directory; pass the folder train.py "
                 "wrote (train.output_dir, default runs/<config name>/seed<seed>)")
    ckpt = args.ckpt or os.path.join(run_dir, LAST_CKPT)
    if not os.path.isfile(ckpt):
        sys.exit(f"error: checkpoint {ckpt} not found; finish the run (python train.py --config {config_path} "
                 "--resume auto) or pass --ckpt PATH")
    import models  # noqa: F401  (fills the model registries)
    from datasets.base import DatasetMissingError
    from engine.checkpoint import CheckpointError
    from engine.config import ConfigError, load_config
    from engine.runtime import DeviceUnavailableError

    try:
        cfg = load_config(config_path)
        rows, meta = score_widths(cfg, ckpt, args.device)
    except (ConfigError, CheckpointError, DeviceUnavailableError, DatasetMissingError, ValueError, KeyError) as err:
        sys.exit(f"error: {err.args[0] if len(err.args) == 1 else err}")
    accs = [r["acc"] for r in rows]
    pearson, spearman = correlations([r["upem"] for r in rows], accs) if None not in accs else (None, None)
    report = {"run": cfg.name, "seed": cfg.train.seed, "ckpt": os.path.abspath(ckpt), **meta,
              "anchor_width": rows[0]["width"], "upem": "mean total-variation distance to the anchor's softmax",
              "widths": rows, "pearson": pearson, "spearman": spearman,
              "budgets": [{"budget_mflops": b, "selected": select_under_budget(rows, b)} for b in args.budget_mflops]}
    with open(os.path.join(run_dir, OUT_FILE), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    print(json.dumps(report) if args.json else markdown(report), end="\n" if args.json else "")
    return report


if __name__ == "__main__":
    main()
