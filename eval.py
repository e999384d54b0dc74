"""Evaluate a checkpoint on the target test split: overall and per-class accuracy.

    python eval.py --config runs/dann_optdigits/seed0/config.yaml --ckpt runs/dann_optdigits/seed0/last.ckpt [--json]
"""
import argparse
import json
import sys

from engine.runtime import DEVICES, configure_cpu_env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's saved config.yaml (or any config)")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    configure_cpu_env(args.device)
    from engine.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.opt)
    except (ConfigError, KeyError) as err:
        sys.exit(f"error: {err.args[0]}")
    from engine import checkpoint
    from engine.data import build_data
    from engine.runtime import init_mindspore
    from engine.trainer import build_method, evaluate

    device = init_mindspore(args.device, "graph", cfg.train.seed)
    try:
        method = build_method(cfg)
        meta = checkpoint.load(args.ckpt, method)
        data = build_data(cfg, cfg.train.seed)
    except (checkpoint.CheckpointError, ValueError, KeyError) as err:
        sys.exit(f"error: {err.args[0]}")
    result = evaluate(method.model, data.target_test, data.eval_transform, max(cfg.data.batch_size, 64), data.loader)
    report = {"config": cfg.name, "ckpt": args.ckpt, "device": device, "iter": meta.get("iter"),
              "target": cfg.data.target.name + (f"/{cfg.data.target.domain}" if cfg.data.target.domain else ""),
              "target_acc": result["acc"], "n": result["n"],
              "per_class": dict(zip(data.target_test.class_names, result["per_class"]))}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['config']} @ iter {report['iter']} on {report['target']} test ({report['n']} images): "
              f"accuracy {100 * result['acc']:.2f}%")
        for name, acc in report["per_class"].items():
            print(f"  {name:>20s}  {100 * acc:6.2f}%")
    return report


if __name__ == "__main__":
    main()
