"""Test-time adaptation of a trained classifier with BatchNorm over a stream of corrupted test sets.

    python tools/tta.py --config runs/tta/source_only_optdigits_c/seed0/config.yaml \\
        --ckpt runs/tta/source_only_optdigits_c/seed0/last.ckpt [--method source norm tent tent_ocr] \\
        [--protocol episodic continual] [--rounds 10] [--batch-size 200] [--json]
    python tools/tta.py --table runs/tta/source_only_optdigits_c/seed*/tta_episodic.json   # mean ± std over seeds

Methods (engine/tta.py): ``source`` (no adaptation), ``norm`` (test-batch BatchNorm statistics),
``tent`` (Wang et al. 2021: + one Adam step on the BatchNorm affine parameters per batch, entropy
loss), ``tent_ocr`` (Tent + OCR's residual-entropy term, lam 0.4172, weight 0.2). Protocols:
``episodic`` resets model and optimizer before every set (DequanWang/tent cifar10c.py);
``continual`` runs all sets as one online stream without reset, ``--rounds`` times.
The test sets are the ``--sets`` domains of ``--dataset`` (default: the config's target dataset and
all its corruption sets, e.g. optdigits_c's 4 corruptions x 5 severities; ``--severity 5`` keeps one
severity, as Tent's CIFAR-10-C table). The model is built and
loaded as eval.py does, fresh for every method. Writes the table (Markdown) and a JSON file with
every set's error per protocol, ``tta_<protocol>.md`` / ``.json``, beside the checkpoint (or in
``--out-dir``).
"""
import argparse
import copy
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.cli import print_table_or_exit, start_checkpoint_tool_or_exit  # noqa: E402
from engine.runtime import DEVICES  # noqa: E402

METHOD_NAMES = {"source": "source", "norm": "Norm", "tent": "Tent", "tent_ocr": "Tent+OCR"}  # engine.tta.METHODS
PROTOCOLS = ("episodic", "continual")


def summarize(results):
    """Mean errors of one method's per-set results: all, severity 5, first and last round."""
    errors = np.array([r["error"] for r in results])
    rounds = np.array([r["round"] for r in results])
    sev5 = np.array([str(r["set"]).endswith("-5") for r in results])
    out = {"mean_error": float(errors.mean()), "first_round": float(errors[rounds == 0].mean()),
           "last_round": float(errors[rounds == rounds.max()].mean())}
    if sev5.any():
        out["severity5_error"] = float(errors[sev5].mean())
    return out


def format_table(report):
    """Markdown: one row per method (errors in %)."""
    continual = report["protocol"] == "continual"
    cols = (["mean error", "round 1", f"round {report['rounds']}"] if continual
            else ["severity 5", "all sets"])
    lines = [f"{report['config']} ({report['ckpt']}): {report['protocol']} TTA over {report['num_sets']} sets"
             + (f" x {report['rounds']} rounds" if continual else "") + f", batch {report['batch_size']}; error %",
             "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, entry in report["methods"].items():
        s = entry["summary"]
        values = ([s["mean_error"], s["first_round"], s["last_round"]] if continual
                  else [s.get("severity5_error", float("nan")), s["mean_error"]])
        lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(f"{100 * v:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


# The PyTorch reference (optdigits-C, episodic, 3 seeds): mean error % (severity 5, all severities)
REFERENCE_EPISODIC = {"source": ("54.5 ± 4.8", "24.7 ± 2.0"), "norm": ("12.3 ± 1.9", "4.8 ± 0.6"),
                      "tent": ("12.2 ± 1.8", "4.7 ± 0.6"), "tent_ocr": ("12.2 ± 1.8", "4.8 ± 0.6")}


def mean_std(values):
    values = 100 * np.asarray(values, np.float64)
    return f"{values.mean():.1f} ± {values.std():.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def seed_table(paths):
    """Markdown over the ``tta_<protocol>.json`` of several seeds: mean ± std (population std, as make_table)."""
    reports = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                reports.append(json.load(handle))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read TTA results {path}: {err}") from None
    if not reports:
        raise ValueError("no TTA result files given to --table")
    protocols = {(r["protocol"], r["rounds"], r["num_sets"]) for r in reports}
    if len(protocols) != 1:
        raise ValueError(f"--table mixes protocols/rounds/sets {sorted(protocols)}; give files of one protocol")
    protocol, rounds, num_sets = protocols.pop()
    continual = protocol == "continual"
    keys = ["mean_error", "first_round", "last_round"] if continual else ["severity5_error", "mean_error"]
    cols = (["mean error (all rounds)", "round 1", f"round {rounds}"] if continual
            else ["severity 5", "all severities", "reference severity 5", "reference all"])
    lines = [f"optdigits-C {protocol} TTA: {num_sets} sets" + (f" x {rounds} rounds, no reset" if continual
                                                                 else ", reset between sets")
             + f", batch {reports[0]['batch_size']}; mean error %, mean ± std over {len(reports)} seed(s)", "",
             "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method in METHOD_NAMES:
        runs = [r["methods"][method]["summary"] for r in reports if method in r["methods"]]
        if not runs:
            continue
        cells = [mean_std([run.get(key, float("nan")) for run in runs]) for key in keys]
        if not continual:
            cells += list(REFERENCE_EPISODIC[method]) if num_sets == 20 else ["—", "—"]
        lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def corruption_sets(cfg, dataset, names, severities=None):
    """``[(name, ImageDomain)]``: ``names``, else the dataset's ``corruption_sets()`` (only ``severities`` if given)."""
    from engine.registry import DATASETS

    builder = DATASETS.get(dataset)
    if not names:
        if not hasattr(builder, "corruption_sets"):
            raise ValueError(f"dataset {dataset} lists no corruption sets; name them with --sets")
        names = builder.corruption_sets()
        if severities:
            names = [n for n in names if str(n).rpartition("-")[2] in {str(s) for s in severities}]
    domain_cfg = copy.deepcopy(cfg.data.target)
    domain_cfg.name = dataset
    sets = []
    for name in names:
        domain_cfg.domain = name
        sets.append((name, builder(domain_cfg, "test", cfg.data)))
    return sets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the run's saved config.yaml (or any config)")
    parser.add_argument("--ckpt", help="checkpoint written by train.py")
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON",
                        help="instead of running: mean ± std table over seeds of tta_<protocol>.json files")
    parser.add_argument("--method", nargs="+", default=list(METHOD_NAMES), choices=list(METHOD_NAMES))
    parser.add_argument("--protocol", nargs="+", default=["episodic"], choices=PROTOCOLS,
                        help="one or both; each writes tta_<protocol>.md/.json")
    parser.add_argument("--rounds", type=int, default=10, help="passes over the stream (continual); episodic runs one")
    parser.add_argument("--batch-size", type=int, default=200, help="test batch (Tent: 200)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Tent's Adam learning rate")
    parser.add_argument("--dataset", default=None, help="test-set dataset (default: the config's target)")
    parser.add_argument("--sets", nargs="*", default=None, help="test-set domains (default: all corruption sets)")
    parser.add_argument("--severity", nargs="*", type=int, default=None,
                        help="keep only the default sets of these severities (e.g. 5 for Tent's CIFAR-10-C table)")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--out-dir", default=None, help="where tta_<protocol>.md/.json go (default: the checkpoint's "
                                                        "directory)")
    parser.add_argument("--out", default=None, help="--table: also write the table to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    args = parser.parse_args(argv)
    if args.table is not None:
        return print_table_or_exit(seed_table, args.table, args.out)
    cfg, device = start_checkpoint_tool_or_exit(parser, args, ("rounds", "batch_size"))
    from engine import checkpoint
    from engine.data import build_data
    from engine.trainer import build_method
    from engine.tta import TestTimeAdapter, adapt_stream

    protocols = list(dict.fromkeys(args.protocol))
    reports = {p: {"config": cfg.name, "ckpt": args.ckpt, "device": device, "protocol": p,
                   "rounds": 1 if p == "episodic" else args.rounds, "batch_size": args.batch_size, "lr": args.lr,
                   "methods": {}} for p in protocols}
    try:
        data = build_data(cfg, cfg.train.seed, strong_views=1)
        sets = corruption_sets(cfg, args.dataset or cfg.data.target.name, args.sets, args.severity)
        for method in args.method:
            method_cell = build_method(cfg)  # built and loaded as eval.py does; a fresh model for every method
            checkpoint.load(args.ckpt, method_cell)
            adapter = TestTimeAdapter(method_cell.model, method, lr=args.lr)
            for protocol, report in reports.items():  # adapt_stream starts from a reset
                results = adapt_stream(adapter, sets, data.eval_transform, args.batch_size,
                                       reset_each_set=protocol == "episodic", strong_transform=data.source.strong,
                                       seed=cfg.train.seed, rounds=report["rounds"])
                report["num_sets"] = len(sets)
                report["methods"][method] = {"summary": summarize(results), "sets": results}
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        sys.exit(f"error: {err.args[0] if len(err.args) == 1 else err}")
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.ckpt))
    os.makedirs(out_dir, exist_ok=True)
    tables = []
    for protocol, report in reports.items():
        tables.append(format_table(report))
        with open(os.path.join(out_dir, f"tta_{protocol}.md"), "w", encoding="utf-8") as handle:
            handle.write(tables[-1])
        with open(os.path.join(out_dir, f"tta_{protocol}.json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    if args.json:
        print(json.dumps({p: {**{k: v for k, v in r.items() if k != "methods"},
                              "summary": {m: e["summary"] for m, e in r["methods"].items()}}
                          for p, r in reports.items()}))
    else:
        print("\n".join(tables), end="")
    return reports


if __name__ == "__main__":
    main()
