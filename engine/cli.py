"""What the command-line tools share: loading the config and starting the device, each ending in
one ``error: ...`` line (no traceback) when the user's input is wrong."""
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
