"""Markdown table of a SlimDA suite (scripts/run_slimda.sh): target accuracy by width, SlimDA's one bank beside
source-only and SymNets trained alone at each width, and the UPEM-selected width per compute budget.

    python tools/slimda_table.py runs/slimda --task optdigits --widths 1.0 0.5 0.25 0.125 \
        [--baselines source_only symnets] [--out table.md]

Reads ``<runs>/slimda_<task>/seed*/select_width.json`` (tools/select_width.py: per-width accuracy, MFLOPs, UPEM
and the budget choices) and ``<runs>/<baseline>_w<width>_<task>/seed*/results.json`` (final-checkpoint target
accuracy). Accuracies are mean ± population std over the seeds found (in brackets: how many).
"""
import argparse
import glob
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.make_table import collect  # noqa: E402

BASELINES = ("source_only", "symnets")


def mean_std(values):
    if not values:
        return "—"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" + ("" if len(values) == 3 else f" ({len(values)})")


def load_bank(runs_root, task):
    """The select_width.json reports of the task's SlimDA runs, in seed order."""
    reports = []
    for path in sorted(glob.glob(os.path.join(runs_root, f"slimda_{task}", "seed*", "select_width.json"))):
        with open(path, encoding="utf-8") as handle:
            reports.append(json.load(handle))
    return reports


def width_key(width):
    return f"{float(width):g}"


def render(runs_root, task, widths, baselines=BASELINES):
    reports = load_bank(runs_root, task)
    finished = collect(runs_root)
    by_width = {}
    for report in reports:
        for row in report["widths"]:
            by_width.setdefault(width_key(row["width"]), []).append(row)
    lines = [f"**{task}**: target accuracy (%) by width, mean ± std over seeds; SlimDA = one bank trained once", "",
             "| width | MFLOPs | params | " + " | ".join(f"{b} at that width" for b in baselines)
             + " | SlimDA (C_a) | SlimDA C_t | UPEM |", "|" + "---|" * (len(baselines) + 6)]
    for width in widths:
        rows = by_width.get(width_key(width), [])
        cost = f"{rows[0]['mflops']:.3f} | {rows[0]['params']:,}" if rows else "— | —"
        cells = []
        for baseline in baselines:
            name = next((m for m, t in finished if t == task and m.startswith(f"{baseline}_w")
                         and math.isclose(float(m[len(baseline) + 2:]), float(width))), None)
            cells.append(mean_std(finished.get((name, task), [])))
        slim = [100 * r["acc"] for r in rows if r["acc"] is not None]
        slim_ct = [100 * r["acc_ct"] for r in rows if r.get("acc_ct") is not None]
        upems = [r["upem"] for r in rows]
        lines.append(f"| {width_key(width)} | {cost} | " + " | ".join(cells) + f" | {mean_std(slim)} | "
                     f"{mean_std(slim_ct)} | " + (f"{np.mean(upems):.4f}" if upems else "—") + " |")
    if reports:
        pearson = [r["pearson"] for r in reports if r["pearson"] is not None]
        spearman = [r["spearman"] for r in reports if r["spearman"] is not None]
        per_seed = "; ".join(f"{name} " + ", ".join(f"{v:.3f}" for v in values)
                             for name, values in (("Pearson", pearson), ("Spearman", spearman)))
        lines += ["", f"UPEM vs accuracy over the bank's {len(reports[0]['widths'])} widths, per seed: {per_seed}"]
        budgets = [choice["budget_mflops"] for choice in reports[0]["budgets"]]
        for index, budget in enumerate(budgets):
            picks = [r["budgets"][index]["selected"] for r in reports if len(r["budgets"]) > index]
            chosen = ", ".join("none" if p is None else width_key(p["width"]) for p in picks)
            accs = [100 * p["acc"] for p in picks if p is not None and p["acc"] is not None]
            lines.append(f"budget {budget:g} MFLOPs: UPEM selects width {chosen} (per seed); target acc. "
                         f"{mean_std(accs)}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", help="the suite's runs folder (RUNS of scripts/run_slimda.sh)")
    parser.add_argument("--task", required=True, nargs="+", help="task(s), e.g. optdigits a2w")
    parser.add_argument("--widths", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.125])
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), help="methods trained alone per width")
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs):
        sys.exit(f"error: runs folder {args.runs} not found; pass the RUNS folder scripts/run_slimda.sh wrote")
    text = "\n".join(render(args.runs, task, args.widths, args.baselines) for task in args.task)
    print(text, end="")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
