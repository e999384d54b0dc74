"""train.py stops on data and device problems with exactly one ``error:`` line and no traceback (issue #12)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, quick_opts
from tests.test_datasets_office import make_office31_tree

SMOKE_OPTS = ["model.pretrained=null", "model.backbone=resnet18", "data.resize_size=40", "data.image_size=32",
              "data.batch_size=4", "data.source.verify_counts=false", "data.target.verify_counts=false"]


def train(tmp_path, config, *opts, device="CPU"):
    env = {**os.environ, "DA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "train.py", "--config", config, "--device", device, "--no-progress",
                           "--opt", *quick_opts(str(tmp_path / "run"), iters=2, every=2), *opts],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_missing_dataset(tmp_path):
    line = train(tmp_path, "configs/digits/dann_m2u.yaml", f"data.source.root={tmp_path}/none",
                 f"data.target.root={tmp_path}/none")
    assert f"{tmp_path}/none/train-images-idx3-ubyte.gz is missing" in line and "download=true" in line


def test_corrupt_images_are_all_listed_before_training(tmp_path):
    tree = make_office31_tree(tmp_path / "office31")
    broken = [tree / "amazon" / "images" / cls / "frame_0001.jpg" for cls in ("bike", "mug", "ruler")]
    for path in broken:
        path.write_bytes(path.read_bytes()[:150])  # truncated mid-scan
    line = train(tmp_path, "configs/office31/dann_a2w.yaml", *SMOKE_OPTS, f"data.source.root={tree}",
                 f"data.target.root={tree}")
    assert line.startswith("error: 3 of 62 image file(s) of ") and all(str(p) in line for p in broken)
    assert "re-extract them or remove them from the image list" in line


def test_wrong_class_count(tmp_path):
    line = train(tmp_path, "configs/digits/dann_optdigits.yaml", "model.num_classes=5")
    assert "model.num_classes=5 but the data has 10 classes" in line


@pytest.mark.parametrize("device", ["GPU", "Ascend"])
def test_unavailable_device(tmp_path, device):
    import mindspore as ms

    try:  # skip the backend this install does have
        ms.set_device(device)
        pytest.skip(f"this MindSpore has {device}")
    except Exception:  # noqa: BLE001 - the expected case on a CPU-only build
        pass
    finally:
        ms.set_device("CPU")
    line = train(tmp_path, "configs/digits/dann_optdigits.yaml", device=device)
    assert line.startswith(f"error: --device {device} is not available: this MindSpore")
    assert "supports CPU" in line and "--device CPU" in line
