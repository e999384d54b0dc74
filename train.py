"""Train any method of the repo from a YAML config.

    python train.py --config configs/digits/dann_optdigits.yaml [--opt train.seed=2 optim.lr=0.02]
    bash scripts/run_distributed.sh 8 configs/digits/dann_optdigits.yaml   # 8 cards, msrun data parallel
"""
import argparse
import os
import sys

from engine.runtime import DEVICES, configure_cpu_env


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (may use _base_)")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.seed=1 optim.lr=0.02 (values parsed as YAML)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto picks Ascend, then GPU, then CPU")
    parser.add_argument("--mode", default="graph", choices=("graph", "pynative"), help="pynative for debugging")
    parser.add_argument("--resume", default=None, choices=("auto",),
                        help="continue the run in train.output_dir from its last checkpoint")
    parser.add_argument("--distribute", action="store_true",
                        help="data parallel over the msrun workers (scripts/run_distributed.sh adds it); "
                             "data.batch_size is per card, the global batch is batch_size x cards")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs still written)")
    return parser.parse_args(argv)


def resolve_run_dir(cfg):
    return cfg.train.output_dir.format(config_name=cfg.name, seed=cfg.train.seed, name=cfg.name)


def main(argv=None):
    args = parse_args(argv)
    configure_cpu_env(args.device)  # before MindSpore is imported anywhere
    from engine.config import ConfigError, dump_config, load_config

    try:
        cfg = load_config(args.config, args.opt)
    except (ConfigError, KeyError) as err:
        sys.exit(f"error: {err.args[0] if err.args else err}")
    if args.print_config:
        print(dump_config(cfg), end="")
        return None
    from engine.runtime import init_mindspore
    from engine.checkpoint import CheckpointError
    from engine.trainer import RunDirError, Trainer, TrainingDiverged
    from engine.distributed import DistributedError, init_distributed
    from engine.runtime import DeviceUnavailableError

    try:
        device = init_mindspore(args.device, args.mode, cfg.train.seed)
    except DeviceUnavailableError as err:
        sys.exit(f"error: {err}")
    try:
        rank, group_size = init_distributed(args.distribute)
    except DistributedError as err:
        sys.exit(f"error: {err}")
    run_dir = resolve_run_dir(cfg)
    try:  # the constructor resolves train.epochs from the data: its errors are the user's input too
        trainer = Trainer(cfg, run_dir, resume=args.resume == "auto", rank=rank, group_size=group_size,
                          show_progress=not args.no_progress and sys.stderr.isatty())
        results = trainer.fit()
    except (RunDirError, TrainingDiverged, CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        # FileNotFoundError includes datasets.base.DatasetMissingError: missing, corrupt or undecodable data;
        # an OSError with (errno, text, path) args reads best as str(err)
        sys.exit(f"error: {err.args[0] if len(err.args) == 1 else err}")
    if rank == 0:
        from engine.cli import METRIC_NAMES

        metric = results.get("metric", "acc")
        key = f"target_{metric}"
        extra = ""
        if f"{key}_selected" in results:
            extra += (f"  (by {results['select_by']}: {results[key + '_selected']:.4f} at {results['selected_phase']} "
                      f"iteration {results['selected_iter']}, {results['selected_ckpt']})")
        if "oracle_" + key in results:
            extra += f"  (oracle, best on target test: {results['oracle_' + key]:.4f})"
        print(f"[{device}] {cfg.name} seed {cfg.train.seed}: target {METRIC_NAMES.get(metric, metric)} "
              f"{results[key]:.4f}{extra}  run dir: {run_dir}")
    return results


if __name__ == "__main__":
    main()
