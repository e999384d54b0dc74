"""Domain generalisation (issue #17): the optdigits-DG augmentation, the CIFAR and PACS training views, LeNet-BN's
CrossNorm positions, ``train.epochs`` / per-epoch settings, the source sampler, and the DG / PACS suites in smoke
mode (the optdigits-DG suite with its FGSM / PGD table)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import engine  # noqa: F401  (runtime settings before MindSpore loads)
import mindspore as ms
from mindspore import Tensor

from datasets.base import BatchStream
from datasets.multi_source import DomainBalancedStream
from datasets.optdigits_dg import dg_domain
from datasets.transforms import TRANSFORMS, _resize_bilinear
from engine.config import ModelCfg, load_config
from engine.data import build_data, resolve_epochs
from models.classifier import create_model
from models.cnsn import CrossNorm
from tests.conftest import ROOT
from tests.test_datasets_pacs import make_pacs_tree

DG_CN = {"crossnorm": {"p": 1.0, "mode": "2-instance", "crop": "none", "positions": ["input", "after_stem", "in_block"],
                       "active_num": 1}}


def digits(n=64):
    images = dg_domain("tint")[0][:n]
    assert images.shape[1:] == (28, 28, 3)
    return images.astype(np.float32)


def shifted(image, dy, dx, pad=2):
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def best_shift_error(out, image):
    """Smallest mean |out - a 2-px-shifted copy of image, rescaled to out's mean and std| over the 25 shifts."""
    errors = []
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            ref = shifted(image, dy, dx).mean(-1)
            o = out.mean(-1)
            ref = (ref - ref.mean()) / (ref.std() + 1e-6)
            errors.append(np.abs((o - o.mean()) / (o.std() + 1e-6) - ref).mean())
    return min(errors)


def test_digits_dg_aug_keeps_the_digit_unflipped_and_draws_its_parts():
    aug = TRANSFORMS.get("digits_dg_aug")
    images = digits()
    assert np.array_equal(aug(images.copy(), None, 28), images)  # eval: untouched
    out = aug(images.copy(), np.random.default_rng(0), 28)
    assert out.shape == images.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    # no mirror: every view matches a <= 2 px shift of its own digit better than any shift of the mirrored digit
    for view, image in zip(out, images):
        assert best_shift_error(view, image) < best_shift_error(view, image[:, ::-1])
    # grayscale with p 0.2: tint images are coloured, so equal channels mean the grayscale step ran
    big = aug(np.repeat(images, 8, 0), np.random.default_rng(1), 28)
    gray = np.mean(np.ptp(big, axis=-1).max(axis=(1, 2)) < 1e-6)
    assert 0.12 < gray < 0.28
    # brightness / contrast / saturation jitter: the views' mean intensities spread around the originals'
    ratio = big.mean(axis=(1, 2, 3)) / np.repeat(images, 8, 0).mean(axis=(1, 2, 3))
    assert ratio.min() > 0.3 and ratio.max() < 2.0 and ratio.std() > 0.08


def test_pad_crop_flip_is_a_zero_padded_crop_or_its_mirror():
    transform = TRANSFORMS.get("pad_crop_flip")
    rng = np.random.default_rng(0)
    images = rng.uniform(0.1, 1.0, (32, 32, 32, 3)).astype(np.float32)  # no zero pixel: the padding shows
    out = transform(images, np.random.default_rng(3), 32)
    assert np.array_equal(transform(images, None, 32), images)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips = 0
    for view, pad in zip(out, padded):
        crops = [(pad[t:t + 32, l:l + 32], f) for t in range(9) for l in range(9) for f in (False, True)]
        match = [f for crop, f in crops if np.array_equal(view, crop[:, ::-1] if f else crop)]
        assert match, "not a crop of the zero-padded image"
        flips += match[0]
    assert 6 <= flips <= 26 and (out == 0).any()


def test_flip_translate_is_dassl_flip_and_translation():
    transform = TRANSFORMS.get("flip_translate")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (64, 16, 16, 3)).astype(np.float32)
    assert np.allclose(transform(images.copy(), None, 16), images, atol=1e-6)  # eval: the plain resize
    out = transform(images.copy(), np.random.default_rng(1), 16)
    big = _resize_bilinear(images, 18, 18)  # round(1.125 * 16)
    kinds = []
    for view, image, enlarged in zip(out, images, big):
        for flip in (False, True):
            src = image[:, ::-1] if flip else image
            if np.allclose(view, src, atol=1e-6):
                kinds.append(("plain", flip))
            grown = _resize_bilinear(src[None], 18, 18)[0]
            for t in range(3):
                for l in range(3):
                    if np.allclose(view, grown[t:t + 16, l:l + 16], atol=1e-5):
                        kinds.append(("shift", flip))
        assert kinds, "neither the image, its mirror nor a translation of them"
    assert {k for k, _ in kinds} == {"plain", "shift"} and {f for _, f in kinds} == {False, True}


def test_lenet_bn_crossnorm_at_the_input_position():
    """The optdigits-DG CrossNorm: three modules (input, block 1, block 2), one chosen per step; chosen at the
    input it restyles the image itself (checked against CrossNorm's formula in NumPy), and eval is plain."""
    ms.set_seed(0)
    plain = create_model(ModelCfg(backbone="lenet_bn", num_classes=10))
    with_cn = create_model(ModelCfg(backbone="lenet_bn", num_classes=10, norm_plugins=DG_CN))
    backbone = with_cn.backbone
    assert backbone.selector is not None and backbone.selector.num_modules == 3
    cns = [c for _, c in backbone.cells_and_names() if isinstance(c, CrossNorm)]
    assert len(cns) == 3
    plain_params = list(plain.get_parameters())  # the same weights, copied in order past the plug-ins' counters
    cn_params = [p for p in with_cn.get_parameters() if "calls" not in p.name and "chosen" not in p.name]
    assert [p.shape for p in plain_params] == [p.shape for p in cn_params]
    for src, dst in zip(plain_params, cn_params):
        dst.set_data(src.data.copy())
    perm = [1, 0, 3, 2, 5, 4, 7, 6]
    backbone.selector.force([0])
    cns[0].force(perm)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 28, 28)).astype(np.float32)
    mean, std = x.mean((2, 3), keepdims=True), np.sqrt(x.var((2, 3), ddof=1, keepdims=True) + 1e-5)
    restyled = (x - mean) / std * std[perm] + mean[perm]
    plain.set_train(False)  # eval (before training forwards move the BatchNorm statistics apart): no CrossNorm
    with_cn.set_train(False)
    assert np.allclose(with_cn(Tensor(x))[0].asnumpy(), plain(Tensor(x))[0].asnumpy(), atol=1e-5)
    plain.set_train(True)
    with_cn.set_train(True)
    got = with_cn(Tensor(x))[0].asnumpy()
    want = plain(Tensor(restyled))[0].asnumpy()
    assert np.allclose(got, want, atol=1e-4)
    assert not np.allclose(got, plain(Tensor(x))[0].asnumpy(), atol=1e-2)


def test_epochs_become_iterations_of_the_source_stream(tmp_path, monkeypatch):
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    make_pacs_tree(tmp_path, ("art_painting", "cartoon", "photo", "sketch"))
    cfg = load_config(os.path.join(ROOT, "configs/dg/erm_pacs_sketch.yaml"),
                      [f"data.source.root={tmp_path}", f"data.target.root={tmp_path}", "data.num_workers=1",
                       "data.source.verify_counts=false", "data.target.verify_counts=false", "data.batch_size=4"])
    assert (cfg.train.epochs, cfg.optim.lr_step_every, cfg.train.eval_every) == (50, 0, 0)
    resolved = resolve_epochs(cfg, global_batch=8)  # 2 cards x 4
    per_epoch = (3 * 7 * 2) // 8  # three source domains' train lists: 2 of 3 images per class
    assert resolved.train.iters == 50 * per_epoch
    assert (resolved.optim.lr_step_every, resolved.train.eval_every, resolved.train.ckpt_every,
            resolved.train.log_every) == (per_epoch,) * 4
    assert resolve_epochs(resolved, 8) == resolved  # resolving twice (resume) changes nothing
    with pytest.raises(ValueError, match="optim.lr_step_every 0 .one epoch. needs train.epochs"):
        resolve_epochs(load_config(os.path.join(ROOT, "configs/dg/erm_optdigits_dg_tint.yaml"),
                                   ["optim.lr_step_every=0"]), 64)
    # the official PACS sampling: the union of the sources at random, not fixed shares
    data = build_data(resolved, 0)
    assert type(data.source) is BatchStream and len(data.source.domain) == 42 and data.source_val is not None


def test_optdigits_dg_source_is_domain_balanced():
    cfg = load_config(os.path.join(ROOT, "configs/dg/erm_optdigits_dg_tint.yaml"))
    data = build_data(cfg, 0)
    assert isinstance(data.source, DomainBalancedStream) and data.source.shares == [22, 21, 21]
    assert data.target_test.images.shape[0] == 225  # the second half of the target's quarter
    with pytest.raises(ValueError, match="unknown data.source_sampler 'uniform'"):
        build_data(load_config(os.path.join(ROOT, "configs/dg/erm_optdigits_dg_tint.yaml"),
                               ["data.source_sampler=uniform"]), 0)


def suite(script, tmp_path, timeout=900, **env):
    env = {**os.environ, "PYTHON": sys.executable, "SMOKE": "1", "RUNS": str(tmp_path / "runs"), "SEEDS": "0", **env}
    proc = subprocess.run(["bash", f"scripts/{script}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_dg_suite_smoke_table_and_attacks(tmp_path):
    out = suite("run_dg.sh", tmp_path, METHODS="erm_ocr erm_aug_cn", TASKS="optdigits_dg_tint",
                ROBUST_METHODS="erm_ocr")
    assert out.count("[run]") == 2 and "[robust] erm_ocr optdigits_dg_tint seed 0" in out
    assert "| method | optdigits_dg_tint |" in out
    row = next(line for line in out.splitlines() if line.startswith("| erm_ocr | "))
    assert row.endswith("[31.7] |")  # the PyTorch reference of the recipe
    saved = load_config(str(tmp_path / "runs" / "erm_aug_cn_optdigits_dg_tint" / "seed0" / "config.yaml"))
    assert saved.data.train_transform == "digits_dg_aug" and saved.model.norm_plugins["crossnorm"]["active_num"] == 1
    assert saved.data.source.domain == ["grey", "inverted", "photo"] and saved.train.iters == 3
    table = (tmp_path / "runs" / "table_robustness.md").read_text()
    assert "erm_ocr_optdigits_dg_tint" in table and "pgd" in table.lower()


def test_pacs_suite_smoke_last_and_source_val_tables(tmp_path):
    tree = make_pacs_tree(tmp_path / "data", ("art_painting", "cartoon", "photo", "sketch"))
    out = suite("run_pacs.sh", tmp_path, DATA_ROOT=str(tree), METHODS="erm_ocr", TASKS="pacs_sketch pacs_photo")
    assert out.count("[run]") == 2 and "| method | pacs_sketch | pacs_photo | avg |" in out
    assert "chosen by train.select_by: source_acc" in out
    saved = load_config(str(tmp_path / "runs" / "erm_ocr_pacs_sketch" / "seed0" / "config.yaml"))
    assert saved.data.source.domain == ["art_painting", "cartoon", "photo"] and saved.train.iters == 3


def test_pacs_suite_refuses_without_data(tmp_path):
    proc = subprocess.run(["bash", "scripts/run_pacs.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DATA_ROOT": str(tmp_path), "RUNS": str(tmp_path / "runs")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "[run]" not in proc.stdout and len(lines) == 1
    assert lines[0].startswith("error: PACS not found at") and "resnet18_imagenet.ckpt" in lines[0]


def test_per_epoch_setting_without_epochs_is_one_line_from_the_cli(tmp_path):
    """Trainer's constructor resolves train.epochs: its error reaches the user as one line, not a traceback."""
    proc = subprocess.run([sys.executable, "train.py", "--config", "configs/dg/erm_optdigits_dg_tint.yaml", "--opt",
                           "optim.lr_step_every=0", f"train.output_dir={tmp_path / 'run'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0] == ("error: train.epochs=0: epochs must be >= 0, and optim.lr_step_every 0 (one epoch) needs "
                        "train.epochs > 0")
