"""Process-wide runtime settings: the one place that touches MindSpore's environment.

On CPU, MindSpore 2.x is 30-180x slower than it needs to be on small machines because
(a) oneDNN >= 3.10 falls back to reference convolutions on AVX-512 hosts and
(b) busy-waiting host threads starve the cores. Both are fixed by environment variables
that must be set before the first MindSpore op. A value the user already set is kept.
"""
import contextlib
import logging
import os
import re
import shutil

CPU_ENV_DEFAULTS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MS_DEV_HOST_BLOCKING_RUN": "1",
}
DEVICES = ("auto", "Ascend", "GPU", "CPU")
AMP_LEVELS = ("auto", "O0", "O1", "O2", "O3")


def detect_device():
    """Best-effort accelerator probe that does not import MindSpore: Ascend, GPU, else CPU."""
    if os.environ.get("ASCEND_HOME_PATH") or os.path.isdir("/usr/local/Ascend/driver"):
        return "Ascend"
    if os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi"):
        return "GPU"
    return "CPU"


class DeviceUnavailableError(RuntimeError):
    """The requested device has no backend in this MindSpore install (or no working driver)."""


@contextlib.contextmanager
def _quiet_mindspore_log():
    """MindSpore logs its CUDA/CANN library probe at ERROR level before raising; the raise is enough."""
    from mindspore import log as ms_log

    # MindSpore's own logger (per process, named by pid); only a private getter returns it
    logger = getattr(ms_log, "_get_logger", lambda: logging.getLogger("mindspore"))()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _supported_devices(err):
    found = re.search(r"only supports one of the \[([^\]]*)\]", str(err))
    return ", ".join(d.strip(" '\"") for d in found.group(1).split(",")) if found else "CPU"


def resolve_device(device="auto"):
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    return detect_device() if device == "auto" else device


def configure_cpu_env(device=None):
    """Apply CPU_ENV_DEFAULTS when the run will be on CPU; never overrides a user's value."""
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ log: errors only unless the user asks for more
    device = resolve_device(device or os.environ.get("DA_DEVICE", "auto"))
    if device == "CPU":
        for key, value in CPU_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    return device


def init_mindspore(device="auto", mode="graph", seed=0, deterministic=True):
    """Pick the device (Ascend -> GPU -> CPU when 'auto'), set graph/pynative mode and seeds."""
    explicit = device not in (None, "auto") or bool(os.environ.get("DA_DEVICE"))
    device = configure_cpu_env(device)
    import mindspore as ms

    requested = device
    if device != "CPU":
        try:
            with _quiet_mindspore_log():
                ms.set_device(device)
        except Exception as err:  # noqa: BLE001 - MindSpore raises RuntimeError/ValueError; reworded below
            if explicit:
                raise DeviceUnavailableError(
                    f"--device {device} is not available: this MindSpore {ms.__version__} install supports "
                    f"{_supported_devices(err)} (on this machine); install the MindSpore {device} package "
                    f"(https://www.mindspore.cn/install) or pass --device CPU") from None
            device = "CPU"
            ms.set_device("CPU")
            logging.getLogger("da").info("device auto: %s found but this MindSpore install cannot use it (%s); "
                                         "running on CPU", requested, _supported_devices(err))
    else:
        ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if deterministic and device != "CPU":
        ms.set_context(deterministic="ON")
    seed_everything(seed)
    return device


def seed_everything(seed):
    import random

    import mindspore as ms
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)
    ms.dataset.config.set_seed(seed)


def resolve_amp_level(level, device=None):
    """``train.amp_level`` -> O0..O3. ``auto`` is O2 on Ascend (fp16 cube units), O0 on GPU and CPU.

    GPU stays fp32 by default so numbers match the fp32 reference runs; pass O1/O2 to use tensor cores.
    """
    if level not in AMP_LEVELS:
        raise ValueError(f"train.amp_level must be one of {', '.join(AMP_LEVELS)}; got {level!r}")
    if level != "auto":
        return level
    if device is None:
        import mindspore as ms

        device = ms.get_context("device_target")
    return "O2" if device == "Ascend" else "O0"
