"""Evaluate a checkpoint on the target test split: accuracy (classification) or IoU/mIoU (segmentation).

    python eval.py --config runs/dann_optdigits/seed0/config.yaml --ckpt runs/dann_optdigits/seed0/last.ckpt [--json]
    python eval.py --config runs/digitscenes/adaptsegnet_digitscenes/seed0/config.yaml \\
        --ckpt runs/digitscenes/adaptsegnet_digitscenes/seed0/last.ckpt --save-predictions preds/

The per-class table is printed and written to ``--out`` (default: ``eval_target.md`` beside the
checkpoint). ``--save-predictions DIR`` writes each segmentation prediction as a colourised PNG
(the dataset's palette; Cityscapes' official colours) named after the image.
"""
import argparse
import json
import os
import sys

from engine.cli import METRIC_NAMES, init_device_or_exit, load_config_or_exit
from engine.runtime import DEVICES

PER_CLASS_NAMES = {"acc": "accuracy", "miou": "IoU", "hscore": "accuracy"}
SUMMARY_ROW = {"miou": "mean", "hscore": "H-score"}


def format_report(report):
    """Markdown: the headline number, then one row per class."""
    metric = report["metric"]
    lines = [f"{report['config']} @ iter {report['iter']} on {report['target']} test ({report['n']} images): "
             f"{METRIC_NAMES.get(metric, metric)} {100 * report['score']:.2f}%", "",
             f"| class | {PER_CLASS_NAMES.get(metric, metric)} (%) |", "|---|---|"]
    lines += [f"| {name} | {100 * value:.2f} |" for name, value in report["per_class"].items()]
    lines.append(f"| **{SUMMARY_ROW.get(metric, 'overall')}** | **{100 * report['score']:.2f}** |")
    return "\n".join(lines) + "\n"


def prediction_writer(domain, out_dir):
    """``on_batch(indices, predictions)`` saving colourised label maps as ``<out_dir>/<image name>.png``."""
    from PIL import Image

    from datasets.segmentation import colorize

    os.makedirs(out_dir, exist_ok=True)
    paths = getattr(domain, "image_paths", None)

    def on_batch(indices, predictions):
        if predictions.ndim != 3:
            raise ValueError("--save-predictions writes segmentation maps; this config is a classification task")
        for index, pred in zip(indices, predictions):
            name = os.path.splitext(os.path.basename(paths[index]))[0] if paths else f"{index:05d}"
            rgb = colorize(pred, domain.palette, getattr(domain, "ignore_index", 255))
            Image.fromarray(rgb).save(os.path.join(out_dir, f"{name}.png"))

    return on_batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's saved config.yaml (or any config)")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--out", default=None, help="write the per-class table here (default: eval_target.md "
                                                    "beside the checkpoint)")
    parser.add_argument("--save-predictions", default=None, metavar="DIR",
                        help="segmentation: write colourised prediction PNGs into DIR")
    args = parser.parse_args(argv)
    cfg = load_config_or_exit(args.config, args.opt, args.device)
    device = init_device_or_exit(args.device, cfg.train.seed)
    from engine import checkpoint
    from engine.data import build_data
    from engine.evaluators import evaluate
    from engine.trainer import build_method

    try:
        method = build_method(cfg)
        meta = checkpoint.load(args.ckpt, method)
        data = build_data(cfg, cfg.train.seed)
        on_batch = prediction_writer(data.target_test, args.save_predictions) if args.save_predictions else None
        result = evaluate(method.model, data.target_test, data.eval_transform, cfg.data.batch_size, data.loader,
                          on_batch)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError, KeyError) as err:  # + DatasetMissingError
        sys.exit(f"error: {err.args[0] if len(err.args) == 1 else err}")
    report = {"config": cfg.name, "ckpt": args.ckpt, "device": device, "iter": meta.get("iter"),
              "target": cfg.data.target.name + (f"/{cfg.data.target.domain}" if cfg.data.target.domain else ""),
              "metric": result["metric"], "score": result["score"], f"target_{result['metric']}": result["score"],
              "n": result["n"], "per_class": dict(zip(data.target_test.class_names, result["per_class"])),
              **{f"target_{k}": v for k, v in result["extra"].items()}}
    table = format_report(report)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "eval_target.md")
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(table)
    print(json.dumps(report) if args.json else table, end="" if not args.json else "\n")
    return report


if __name__ == "__main__":
    main()
