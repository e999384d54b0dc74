"""Markdown table of a suite's runs: mean +- std of the final-checkpoint target accuracy per task.

    python tools/make_table.py runs/digits --suite digits [--out runs/digits/table.md]

Run directories are ``<runs>/<method>_<task>/seed<k>/results.json`` (what scripts/run_*.sh
write). Numbers are final-checkpoint accuracies; the published number is shown in brackets.
"""
import argparse
import glob
import json
import os
from collections import defaultdict

import numpy as np
import yaml

PAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.yaml")


def collect(runs_root):
    """``{(method, task): [accuracy %, ...]}`` from every finished run below ``runs_root``."""
    table = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(runs_root, "*", "seed*", "results.json"))):
        run_name = os.path.basename(os.path.dirname(os.path.dirname(path)))
        method, _, task = run_name.rpartition("_")
        if not method:
            continue
        with open(path, encoding="utf-8") as handle:
            table[(method, task)].append(100.0 * json.load(handle)["target_acc"])
    return table


def cell(values, paper=None):
    text = "—" if not values else (f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1
                                    else f"{values[0]:.1f}")
    if values and len(values) > 1:
        text += f" (n={len(values)})"
    return text + (f" [{paper:.1f}]" if paper is not None else "")


def render(table, paper=None, tasks=None, methods=None):
    paper = paper or {}
    tasks = tasks or sorted({t for _, t in table})
    methods = methods or sorted({m for m, _ in table})
    with_avg = len(tasks) > 1
    header = ["method", *tasks] + (["avg"] if with_avg else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        row = [method]
        means = []
        for task in tasks:
            values = table.get((method, task), [])
            row.append(cell(values, paper.get(method, {}).get(task)))
            means.append(np.mean(values) if values else None)
        if with_avg:
            avg = f"{np.mean(means):.1f}" if means and all(m is not None for m in means) else "—"
            if paper.get(method, {}).get("avg") is not None:
                avg += f" [{paper[method]['avg']:.1f}]"
            row.append(avg)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", help="suite run root, e.g. runs/digits")
    parser.add_argument("--suite", default=None, help="key in tools/paper_results.yaml for published numbers")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    table = collect(args.runs)
    if not table:
        raise SystemExit(f"error: no finished runs (*/seed*/results.json) under {args.runs}")
    with open(PAPER, encoding="utf-8") as handle:
        papers = yaml.safe_load(handle)
    suite = papers.get(args.suite, {}) if args.suite else {}
    text = render(table, suite, args.tasks, args.methods)
    note = "Target accuracy (%) of the final checkpoint, mean ± std over seeds"
    if suite.get("_source"):
        note += f"; [published: {suite['_source']}]"
    text = f"{note}\n\n{text}\n"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return text


if __name__ == "__main__":
    main()
