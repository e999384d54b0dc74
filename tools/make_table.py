"""Markdown table of a suite's runs: mean +- std of the final-checkpoint target score per task.

    python tools/make_table.py runs/digits --suite digits [--out runs/digits/table.md]

Run directories are ``<runs>/<method>_<task>/seed<k>/results.json`` (what scripts/run_*.sh
write). Numbers are final-checkpoint scores (``results["metric"]``: accuracy, or mIoU for
segmentation, H-score for open-set targets); the published number is shown in brackets. Segmentation
suites get one table per task with a column per class (IoU) and the mIoU, and the paper's rows beneath
ours. Suites with open-set tasks (the class splits of scripts/run_openset.sh) get a second table: known /
unknown accuracy (%) of the open-set tasks, whose H-score is their harmonic mean.
"""
import argparse
import glob
import json
import os
import warnings
from collections import defaultdict

import numpy as np
import yaml

PAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.yaml")


def split_run_name(run_name, tasks=None):
    """``<method>_<task>`` -> ``(method, task)``; a task of ``tasks`` may hold underscores (``optdigits_3shot``)."""
    for task in tasks or ():
        if run_name.endswith("_" + task) and len(run_name) > len(task) + 1:
            return run_name[:-len(task) - 1], task
    method, _, task = run_name.rpartition("_")
    return method, task


def collect(runs_root, per_class=False, tasks=None):
    """``{(method, task): [score %, ...]}`` from every finished run below ``runs_root``.

    With ``per_class`` each entry is ``(score %, [per-class %], class names, metric)`` instead.
    """
    table = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(runs_root, "*", "seed*", "results.json"))):
        run_name = os.path.basename(os.path.dirname(os.path.dirname(path)))
        method, task = split_run_name(run_name, tasks)
        if not method:
            continue
        with open(path, encoding="utf-8") as handle:
            res = json.load(handle)
        metric = res.get("metric", "acc")
        score = 100.0 * res[f"target_{metric}"]
        if per_class:
            score = (score, [100.0 * v for v in res.get("target_per_class", [])], res.get("class_names", []), metric)
        table[(method, task)].append(score)
    return table


def render_per_class(table, paper=None, tasks=None, methods=None):
    """Segmentation: per task, rows of per-class IoU and mIoU (mean over seeds; ± std on the mIoU), then the paper's."""
    paper = paper or {}
    tasks = tasks or sorted({t for _, t in table})
    methods = methods or sorted({m for m, _ in table})
    blocks = []
    for task in tasks:
        runs = [r for m in methods for r in table.get((m, task), [])]
        if not runs:
            continue
        names = runs[0][2]
        lines = [f"**{task}**", "", "| method | " + " | ".join(names) + " | mIoU |", "|" + "---|" * (len(names) + 2)]
        for method in methods:
            entries = table.get((method, task), [])
            if not entries:
                continue
            with warnings.catch_warnings():  # a class absent from every seed stays nan
                warnings.simplefilter("ignore", RuntimeWarning)
                per_class = np.nanmean([e[1] for e in entries], axis=0)
            lines.append(f"| {method} | " + " | ".join(f"{v:.1f}" for v in per_class) +
                         f" | **{cell([e[0] for e in entries])}** |")
        for method, rows in paper.items():
            if method.startswith("_") or task not in rows:
                continue
            row = rows[task]
            values = row.get("per_class") or ["—"] * len(names)
            lines.append(f"| {row.get('label', method + ' (published)')} | " + " | ".join(
                v if isinstance(v, str) else f"{v:.1f}" for v in values) + f" | {row['miou']:.1f} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def collect_extra(runs_root, keys, tasks=None):
    """``{(method, task): {key: [value %, ...]}}`` of the runs whose results.json holds every ``target_<key>``."""
    table = defaultdict(lambda: defaultdict(list))
    for path in sorted(glob.glob(os.path.join(runs_root, "*", "seed*", "results.json"))):
        method, task = split_run_name(os.path.basename(os.path.dirname(os.path.dirname(path))), tasks)
        with open(path, encoding="utf-8") as handle:
            res = json.load(handle)
        if method and all(f"target_{k}" in res for k in keys):
            for key in keys:
                table[(method, task)][key].append(100.0 * res[f"target_{key}"])
    return table


def collect_selected(runs_root, tasks=None):
    """``({(method, task): [target score %, ...]}, {select_by names})`` of the checkpoints the runs' own
    ``train.select_by`` chose (a label-free validator or the source validation accuracy: ``target_<metric>_selected``)."""
    table, names = defaultdict(list), set()
    for path in sorted(glob.glob(os.path.join(runs_root, "*", "seed*", "results.json"))):
        method, task = split_run_name(os.path.basename(os.path.dirname(os.path.dirname(path))), tasks)
        with open(path, encoding="utf-8") as handle:
            res = json.load(handle)
        key = f"target_{res.get('metric', 'acc')}_selected"
        if method and key in res:
            table[(method, task)].append(100.0 * res[key])
            names.add(res["select_by"])
    return table, names


def collect_val_selected(runs_root, tasks=None):
    """SSDA: ``{(method, task): [target score %, ...]}`` of the checkpoints chosen on the labelled target val split."""
    table = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(runs_root, "*", "seed*", "results.json"))):
        method, task = split_run_name(os.path.basename(os.path.dirname(os.path.dirname(path))), tasks)
        with open(path, encoding="utf-8") as handle:
            res = json.load(handle)
        chosen = res.get("selected_by_target_val")
        if method and chosen:
            table[(method, task)].append(100.0 * chosen[f"target_{res.get('metric', 'acc')}"])
    return table


def render_known_unknown(table, tasks=None, methods=None):
    """Rows of methods, columns of the tasks with entries: ``known / unknown`` means over seeds."""
    tasks = [t for t in (tasks or sorted({t for _, t in table})) if any((m, t) in table for m, _ in table)]
    methods = methods or sorted({m for m, _ in table})
    lines = ["| method | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for method in methods:
        cells = []
        for task in tasks:
            entry = table.get((method, task))
            cells.append(f"{np.mean(entry['known_acc']):.1f} / {np.mean(entry['unknown_acc']):.1f}" if entry else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell(values, paper=None):
    text = "—" if not values else (f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1
                                    else f"{values[0]:.1f}")
    if values and len(values) > 1:
        text += f" (n={len(values)})"
    return text + (f" [{paper:.1f}]" if paper is not None else "")


def render(table, paper=None, tasks=None, methods=None, average=True):
    """``average=False``: no avg column (tasks scored by different metrics, e.g. H-score and accuracy)."""
    paper = paper or {}
    tasks = tasks or sorted({t for _, t in table})
    methods = methods or sorted({m for m, _ in table})
    with_avg = average and len(tasks) > 1
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
            counts = {len(table.get((method, task), [])) for task in tasks}
            if avg != "—" and len(counts) == 1 and counts.pop() > 1:  # the same seeds everywhere: ± over seeds
                per_seed = np.mean([table[(method, task)] for task in tasks], axis=0)
                avg += f" ± {np.std(per_seed):.1f}"
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
    table = collect(args.runs, per_class=True, tasks=args.tasks)
    if not table:
        raise SystemExit(f"error: no finished runs (*/seed*/results.json) under {args.runs}")
    with open(PAPER, encoding="utf-8") as handle:
        papers = yaml.safe_load(handle)
    suite = papers.get(args.suite, {}) if args.suite else {}
    metrics = {entry[3] for entries in table.values() for entry in entries}
    if metrics == {"miou"}:
        text = render_per_class(table, suite, args.tasks, args.methods)
        note = "Target IoU per class and mIoU (%) of the final checkpoint, mean over seeds (mIoU ± std)"
    else:
        text = render({key: [e[0] for e in entries] for key, entries in table.items()}, suite, args.tasks,
                      args.methods, average=len(metrics) == 1)
        note = "Target accuracy (%) of the final checkpoint, mean ± std over seeds"
    if "hscore" in metrics:
        note = ("Target H-score (%) of the final checkpoint for open-set / open-partial tasks, accuracy (%) for "
                "closed-set and partial ones, mean ± std over seeds")
    if suite.get("_source"):
        note += f"; [published: {suite['_source']}]"
    text = f"{note}\n\n{text}\n"
    if "hscore" in metrics:
        known_unknown = render_known_unknown(collect_extra(args.runs, ("known_acc", "unknown_acc"), args.tasks),
                                             args.tasks, args.methods)
        text += ("\nOpen-set tasks: known / unknown accuracy (%), per-class mean over the shared classes / recall "
                 f"of the unknown class, mean over seeds\n\n{known_unknown}\n")
    val_selected = collect_val_selected(args.runs, args.tasks)
    if val_selected:  # SSDA runs: MME and PAC keep the checkpoint best on the few labelled target val images
        text += ("\nSemi-supervised DA: target accuracy (%) of the checkpoint with the best accuracy on the labelled "
                 f"target validation split (3 per class), mean ± std over seeds\n\n"
                 f"{render(val_selected, suite, args.tasks, args.methods)}\n")
    selected, names = collect_selected(args.runs, args.tasks)
    if selected:  # e.g. PACS: the epoch with the best accuracy on the source domains' crossval lists
        how = "; source_acc: accuracy on the labelled source validation split" if "source_acc" in names else ""
        text += (f"\nTarget score (%) of the checkpoint chosen by train.select_by: {', '.join(sorted(names))}{how}; "
                 "mean ± std over seeds\n\n"
                 f"{render(selected, None, args.tasks, args.methods)}\n")
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return text


if __name__ == "__main__":
    main()
