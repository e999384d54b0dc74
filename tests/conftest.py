import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import engine  # noqa: E402,F401  (CPU runtime settings before MindSpore loads)


@pytest.fixture(scope="session", autouse=True)
def graph_mode():
    from engine.runtime import init_mindspore

    init_mindspore("CPU", "graph", 0)
    yield


@pytest.fixture(params=["graph", "pynative"])
def mode(request):
    """Runs a test once per MindSpore execution mode; the test receives the mode's name."""
    import mindspore as ms

    old = ms.get_context("mode")
    ms.set_context(mode={"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}[request.param])
    yield request.param
    ms.set_context(mode=old)


@pytest.fixture
def pynative():
    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def run_script(*args, check=True, timeout=600):
    """Run a repo script (train.py / eval.py) in a subprocess; returns CompletedProcess."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def quick_opts(out_dir, iters=20, every=10):
    return [f"train.iters={iters}", f"train.log_every={every}", f"train.eval_every={every}",
            f"train.ckpt_every={every}", f"train.output_dir={out_dir}"]
