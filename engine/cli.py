"""What the command-line tools share: loading the config and starting the device, each ending in
one ``error: ...`` line (no traceback) when the user's input is wrong."""
import os
import sys

from engine.runtime import configure_cpu_env

# how train.py and eval.py name a run's main metric (results.json "metric")
METRIC_NAMES = {"acc": "accuracy", "miou": "mIoU", "hscore": "H-score"}


def load_config_or_exit(path, opts, device):
    """The resolved config of ``path`` with ``--opt`` overrides (CPU settings first, before MindSpore loads)."""
    configure_cpu_env(device)
    from engine.config import ConfigError, load_config

    try:
        return load_config(path, opts)
    except (ConfigError, KeyError) as err:
        sys.exit(f"error: {err.args[0]}")


def init_device_or_exit(device, seed):
    """MindSpore in graph mode on ``device``; returns the device name picked."""
    from engine.runtime import DeviceUnavailableError, init_mindspore

    try:
        return init_mindspore(device, "graph", seed)
    except DeviceUnavailableError as err:
        sys.exit(f"error: {err}")


def print_table_or_exit(make_table, source, out=None):
    """The ``--table`` mode of tools/tta.py and tools/robustness.py: ``make_table(source)`` (a ``ValueError`` is
    the user's input: one line), written to ``out`` when given, printed; returns the table."""
    try:
        table = make_table(source)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(table)
    print(table, end="")
    return table


def start_checkpoint_tool_or_exit(parser, args, positive):
    """The start of tools/tta.py and tools/robustness.py after their ``--table`` mode: ``--config`` and ``--ckpt``
    given, the ``positive`` integer options >= 1 (argparse errors), the checkpoint present (checked before the
    slow start: the common mistake fails fast), the config loaded and the device started; returns
    ``(cfg, device)``."""
    if not args.config or not args.ckpt:
        parser.error("--config and --ckpt are required (or --table to summarise finished runs)")
    if any(getattr(args, name) < 1 for name in positive):
        parser.error(" and ".join("--" + name.replace("_", "-") for name in positive) + " must be >= 1")
    if not os.path.isfile(args.ckpt):
        sys.exit(f"error: checkpoint not found: {args.ckpt}")
    cfg = load_config_or_exit(args.config, args.opt, args.device)
    return cfg, init_device_or_exit(args.device, cfg.train.seed)
