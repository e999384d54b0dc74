"""How well do label-free validators pick checkpoints and methods? Rank correlation and selection gap.

    python tools/validator_study.py RUNS_ROOT [--out DIR] [--no-plots]

Reads every finished run directory below RUNS_ROOT (``config.yaml`` + ``metrics.jsonl`` +
``results.json``, as train.py writes them; unfinished runs are skipped with a note), groups runs by
task (source -> target, from config.yaml) and treats every evaluation record (phase, iter) as a
candidate checkpoint with its target *test* accuracy and the validator scores logged beside it
(``engine/validators.py``; higher = predicted better). EnsV (``ens_agreement``) is computed here,
over all candidates of a task, from ``validation/target_probs_<phase>_<iter>.npy``.

Per validator and task:
* Spearman's rho and Kendall's tau (scipy.stats) between score and target accuracy over all
  candidates of the task (methods x seeds x eval points);
* selection gap among checkpoints: per run, the best target accuracy of its candidates minus the
  accuracy of the candidate the validator scores highest (ties: the earliest; both over the
  candidates that carry the validator's score), mean over runs;
* selection gap among methods: per seed, the same over the candidates of every method of the task;
  mean over seeds;
* for comparison, the final checkpoint's gap (no selection).

Prints a Markdown table averaged over tasks (plus one per task when there are several), writes
``<out>/validator_study.md`` (default out = RUNS_ROOT) and ``<out>/scatter_<validator>.png``
(score vs target accuracy, coloured by method). The protocol follows Musgrave et al., "Three new
validators and a large-scale benchmark ranking for UDA" (arXiv 2208.07360), and Hu et al.'s
worst-case-aware study that proposed EnsV (NeurIPS 2024 D&B). No MindSpore needed.
"""
import argparse
import os
import sys
import warnings
from collections import defaultdict

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.validators import ALL, ens_agreement  # noqa: E402  (engine/__init__ sets env vars only)
from engine.run_log import read_run_log  # noqa: E402

LAST = "last checkpoint"


def _read_config(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.startswith("#"):   # "# config_hash: ..." line
        text = text.split("\n", 1)[1] if "\n" in text else ""
    return yaml.safe_load(text) or {}


def _domain_label(domain):
    return domain.get("domain") or domain.get("name") or "?"


def _read_metrics(path, notes):
    """Evaluation records by ``(phase, iter)`` in log order; a repeated (resumed) record replaces the earlier one."""
    records, bad = read_run_log(path, lambda rec: "target_acc" in rec)
    if bad:
        notes.append(f"{path}: skipped {bad} unreadable line(s)")
    return {(rec["phase"], int(rec["iter"])): rec for rec in records}


def load_run(run_dir, notes):
    """One finished run: ``{"dir", "task", "method", "seed", "candidates": [...]}``, or None (with a note)."""
    try:
        cfg = _read_config(os.path.join(run_dir, "config.yaml"))
        data, method = cfg["data"], cfg["method"]
        task = f"{_domain_label(data['source'])}->{_domain_label(data['target'])}"
        label = "+".join([method["name"]] + [reg["name"] for reg in cfg.get("regularizers") or []])
        seed = (cfg.get("train") or {}).get("seed", 0)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        notes.append(f"{run_dir}: skipped, config.yaml does not name the task and method ({err!r})")
        return None
    candidates = []
    for (phase, it), rec in _read_metrics(os.path.join(run_dir, "metrics.jsonl"), notes).items():
        scores = {k: float(v) for k, v in (rec.get("validators") or {}).items()
                  if isinstance(v, (int, float)) and np.isfinite(v)}
        candidates.append({"phase": phase, "iter": it, "target_acc": float(rec["target_acc"]), "validators": scores,
                           "probs": os.path.join(run_dir, "validation", f"target_probs_{phase}_{it:06d}.npy")})
    if not candidates:
        notes.append(f"{run_dir}: skipped, metrics.jsonl has no evaluation record with target_acc")
        return None
    return {"dir": run_dir, "task": task, "method": label, "seed": seed, "candidates": candidates}


def find_runs(runs_root, notes):
    """Finished runs below ``runs_root`` (a folder with config.yaml and metrics.jsonl; finished = results.json too)."""
    runs = []
    for path, dirs, files in os.walk(runs_root):
        dirs.sort()
        if "config.yaml" in files and "metrics.jsonl" in files:
            dirs[:] = []   # a run's subfolders (validation/) hold no runs
            if "results.json" not in files:
                notes.append(f"{path}: skipped, unfinished (no results.json)")
                continue
            run = load_run(path, notes)
            if run:
                runs.append(run)
    return runs


def add_ens_agreement(runs, notes):
    """Score every candidate of a task with EnsV over all that task's candidates (skipped if a probs file is missing)."""
    by_task = defaultdict(list)
    for run in runs:
        by_task[run["task"]].extend(run["candidates"])
    for task, cands in sorted(by_task.items()):
        missing = [c["probs"] for c in cands if not os.path.isfile(c["probs"])]
        if missing:
            notes.append(f"{task}: no ens_agreement, {len(missing)} of {len(cands)} target_probs files missing "
                         f"(e.g. {missing[0]})")
            continue
        try:
            scores = ens_agreement(np.load(c["probs"], mmap_mode="r") for c in cands)
        except (ValueError, OSError) as err:
            notes.append(f"{task}: no ens_agreement ({err})")
            continue
        for cand, score in zip(cands, scores):
            cand["validators"]["ens_agreement"] = float(score)


def _gap(cands, name):
    """Best target accuracy minus that of the highest-scored candidate (first on ties); None if none is scored.

    Both are taken over the candidates the validator scored (all of them in runs of one trainer
    version), so a run that lacks a validator does not count against it.
    """
    scored = [c for c in cands if name in c["validators"]]
    if not scored:
        return None
    pick = max(scored, key=lambda c: c["validators"][name])   # max keeps the first of equal scores
    return max(c["target_acc"] for c in scored) - pick["target_acc"]


def _mean(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _rank_correlations(cands, name):
    from scipy.stats import kendalltau, spearmanr

    pairs = [(c["validators"][name], c["target_acc"]) for c in cands if name in c["validators"]]
    if len(pairs) < 2:
        return float("nan"), float("nan")
    x, y = np.array(pairs).T
    with warnings.catch_warnings():   # constant input -> nan, reported as "—"
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y)[0]), float(kendalltau(x, y)[0])


def study(runs):
    """``{task: {validator: {"spearman", "kendall", "gap_checkpoints", "gap_methods", "n"}}}``; gaps in accuracy units."""
    names = [n for n in ALL if any(n in c["validators"] for r in runs for c in r["candidates"])]
    names += sorted({n for r in runs for c in r["candidates"] for n in c["validators"]} - set(names))
    tasks = defaultdict(list)
    for run in runs:
        tasks[run["task"]].append(run)
    out = {}
    for task, task_runs in sorted(tasks.items()):
        cands = [c for r in task_runs for c in r["candidates"]]
        by_seed = defaultdict(list)
        for run in task_runs:
            by_seed[run["seed"]].extend(run["candidates"])
        rows = {}
        for name in names:
            rho, tau = _rank_correlations(cands, name)
            rows[name] = {"spearman": rho, "kendall": tau,
                          "gap_checkpoints": _mean(_gap(r["candidates"], name) for r in task_runs),
                          "gap_methods": _mean(_gap(seed_cands, name) for seed_cands in by_seed.values()),
                          "n": sum(name in c["validators"] for c in cands)}
        rows[LAST] = {"spearman": float("nan"), "kendall": float("nan"),
                      "gap_checkpoints": _mean(max(c["target_acc"] for c in r["candidates"]) -
                                               r["candidates"][-1]["target_acc"] for r in task_runs),
                      "gap_methods": float("nan"), "n": len(task_runs)}
        out[task] = rows
    return out


def average_over_tasks(per_task):
    rows = {}
    for task_rows in per_task.values():
        for name, row in task_rows.items():
            rows.setdefault(name, defaultdict(list))
            for key, value in row.items():
                rows[name][key].append(value)
    return {name: {k: (sum(v) if k == "n" else _mean(v)) for k, v in cols.items()} for name, cols in rows.items()}


def _fmt(value, scale=1.0, digits=3):
    return "—" if value is None or not np.isfinite(value) else f"{scale * value:.{digits}f}"


def render(rows):
    lines = ["| validator | Spearman ρ | Kendall τ | gap among checkpoints (pts) | gap among methods (pts) | n |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {_fmt(row['spearman'])} | {_fmt(row['kendall'])} | "
                     f"{_fmt(row['gap_checkpoints'], 100, 2)} | {_fmt(row['gap_methods'], 100, 2)} | {row['n']} |")
    return "\n".join(lines)


def report(runs_root, runs, per_task, notes):
    n_cands = sum(len(r["candidates"]) for r in runs)
    methods = sorted({r["method"] for r in runs})
    parts = [f"# Validator study: {runs_root}", "",
             f"{len(runs)} finished runs, {len(per_task)} task(s), methods {', '.join(methods)}; {n_cands} candidate "
             "checkpoints (eval points). ρ, τ: rank correlation of the validator score with target test accuracy over "
             "all candidates of a task. Gap (points of target accuracy, lower is better): best candidate minus the "
             "validator's pick; among checkpoints = within each run, mean over runs; among methods = over every "
             "method's checkpoints of one seed, mean over seeds. n: candidates scored (runs for the last checkpoint). "
             "Target labels only grade the picks; no validator sees them.", ""]
    if len(per_task) > 1:
        parts += ["## Mean over tasks", ""]
    parts += [render(average_over_tasks(per_task)), ""]
    if len(per_task) > 1:
        for task, rows in per_task.items():
            parts += [f"## {task}", "", render(rows), ""]
    if notes:
        parts += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(parts)


def plot(runs, names, out_dir):
    """``scatter_<validator>.png``: score vs target accuracy, one panel per task, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tasks = sorted({r["task"] for r in runs})
    methods = sorted({r["method"] for r in runs})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    paths = []
    for name in names:
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks) + 1.5, 4), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for method in methods:
                points = [(c["validators"][name], 100 * c["target_acc"]) for r in runs
                          if r["task"] == task and r["method"] == method for c in r["candidates"]
                          if name in c["validators"]]
                if points:
                    x, y = zip(*points)
                    ax.scatter(x, y, s=14, alpha=0.75, color=colours[method], label=method)
            ax.set(title=task, xlabel=f"{name} (higher = predicted better)", ylabel="target test accuracy (%)")
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], ls="", marker="o", color=colours[m], label=m) for m in methods]
        fig.legend(handles=handles, loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
        path = os.path.join(out_dir, f"scatter_{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_root", metavar="RUNS_ROOT", help="folder searched recursively for run directories")
    parser.add_argument("--out", default=None, help="where validator_study.md and the plots go (default: RUNS_ROOT)")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                        help="write scatter_<validator>.png (default: on)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs_root):
        sys.exit(f"error: RUNS_ROOT {args.runs_root} is not a directory; pass the folder holding the run directories")
    notes = []
    runs = find_runs(args.runs_root, notes)
    if not runs:
        sys.exit(f"error: no finished runs (config.yaml + metrics.jsonl + results.json with eval records) under "
                 f"{args.runs_root}" + (f"; {len(notes)} skipped, first: {notes[0]}" if notes else ""))
    add_ens_agreement(runs, notes)
    per_task = study(runs)
    text = report(args.runs_root, runs, per_task, notes)
    out_dir = args.out or args.runs_root
    try:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "validator_study.md"), "w", encoding="utf-8") as handle:
            handle.write(text)
        if args.plots:
            plot(runs, [n for n in next(iter(per_task.values())) if n != LAST], out_dir)
    except OSError as err:
        sys.exit(f"error: cannot write to --out {out_dir} ({err.strerror}); pick a writable folder")
    print(text)
    return per_task


if __name__ == "__main__":
    main()
