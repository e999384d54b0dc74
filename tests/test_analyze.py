"""tools/analyze.py: the proxy A-distance on constructed features, curves from a synthetic metrics.jsonl, an end-to-end
run on a tiny real DANN run, the segmentation path and the CLI's one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.config import dump_config, load_config
from tests.conftest import ROOT, quick_opts, run_script
from tools.analyze import (curve_series, grid_shape, main, panel_of, plot_curves, proxy_a_distance, read_metrics,
                           row_normalised_confusion)

DANN = "configs/digits/dann_optdigits.yaml"


def drawn_png(path, size):
    """The PNG opens, has ``size`` and is not blank (more than one colour)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert (image.shape[1], image.shape[0]) == size
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1
    return image


def test_proxy_a_distance_separable_identical_and_half_overlapping():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(300, 16))
    shifted = rng.normal(size=(300, 16)) + np.r_[10.0, np.zeros(15)]
    assert proxy_a_distance(source, shifted) > 1.95  # separable: eps = 0
    same = rng.normal(size=(300, 16))
    assert 0.0 <= proxy_a_distance(source, same) < 0.3  # one distribution: eps near chance
    # unequal sizes still give chance 0.5 (a plain error would reward calling everything "source")
    assert 0.0 <= proxy_a_distance(rng.normal(size=(400, 8)), rng.normal(size=(80, 8))) < 0.4
    # U[0, 1] vs U[0.5, 1.5]: the best threshold (0.75) errs on a quarter of each domain -> 2 (1 - 2/4) = 1
    uniform = proxy_a_distance(rng.uniform(0.0, 1.0, (2000, 1)), rng.uniform(0.5, 1.5, (2000, 1)))
    assert abs(uniform - 1.0) < 0.15
    with pytest.raises(ValueError, match="N >= 10"):
        proxy_a_distance(source[:5], same)
    with pytest.raises(ValueError, match="dimensions"):
        proxy_a_distance(source, same[:, :4])


def test_panels_of_the_keys_methods_log():
    expected = {"loss": "loss", "cls": "loss", "transfer": "loss", "d_loss": "loss", "adv_loss": "loss", "mcc": "loss",
                "ocr_ent": "loss", "seg_aux": "loss", "d_acc": "disc", "grl": "schedule", "ocr_lam": "schedule",
                "iimt_ramp": "schedule", "acc_s": "acc", "pix_acc_s": "acc", "target_acc": "acc",
                "target_miou": "acc", "source_val_acc": "acc", "sec_per_iter": None, "iter": None,
                "loss_scale": None, "overflow_steps": None}
    assert {key: panel_of(key) for key in expected} == expected


def write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_curves_of_a_resumed_two_phase_run(tmp_path):
    """ADDA-like: phases share one axis, a repeated record's last copy wins, cut lines and absent keys are skipped."""
    records = [
        {"phase": "source_pretrain", "iter": 10, "loss": 2.0, "cls": 2.0, "acc_s": 0.3, "sec_per_iter": 0.1},
        {"phase": "source_pretrain", "iter": 20, "loss": 1.5, "cls": 1.5, "acc_s": 0.5, "sec_per_iter": 0.1,
         "target_acc": 0.4, "source_val_acc": 0.6, "validators": {"entropy": -1.2, "snd": 3.1}},
        {"phase": "adapt", "iter": 10, "d_loss": 0.7, "d_acc": 0.6, "adv_loss": 0.8},
        {"phase": "adapt", "iter": 10, "d_loss": 0.71, "d_acc": 0.65, "adv_loss": 0.9},  # logged again after a resume
        {"phase": "adapt", "iter": 20, "d_loss": 0.69, "d_acc": 0.55, "adv_loss": 0.75, "target_acc": 0.5,
         "validators": {"entropy": -0.9, "snd": 3.3}},
    ]
    write_jsonl(tmp_path / "metrics.jsonl", records, tail='{"phase": "adapt", "it')
    series, starts = curve_series(read_metrics(tmp_path / "metrics.jsonl"))
    assert starts == [(0, "source_pretrain"), (20, "adapt")]
    assert list(series) == ["loss", "disc", "acc", "validators"]  # no GRL logged: no schedule panel
    assert series["loss"] == {"loss": ([10, 20], [2.0, 1.5]), "cls": ([10, 20], [2.0, 1.5]),
                              "d_loss": ([30, 40], [0.71, 0.69]), "adv_loss": ([30, 40], [0.9, 0.75])}
    assert series["disc"] == {"d_acc": ([30, 40], [0.65, 0.55])}
    assert series["acc"] == {"acc_s": ([10, 20], [0.3, 0.5]), "target_acc": ([20, 40], [0.4, 0.5]),
                             "source_val_acc": ([20], [0.6])}
    assert series["validators"] == {"entropy": ([20, 40], [-1.2, -0.9]), "snd": ([20, 40], [3.1, 3.3])}

    plot_curves(series, starts, tmp_path / "curves.png", "adda")
    image = drawn_png(tmp_path / "curves.png", (1000, 700))  # 2 x 2 panels of 500 x 350
    for quadrant in (image[:350, :500], image[:350, 500:], image[350:, :500], image[350:, 500:]):
        assert (quadrant.min(axis=2) < 200).mean() > 0.01  # every panel has axes and curves drawn


def test_row_normalised_confusion_against_loops():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 1, 0, 2, 2, 3])
    matrix = row_normalised_confusion(labels, preds, 4)
    expected = np.zeros((4, 4))
    for c in range(4):
        for p in range(4):
            n = sum(1 for y in labels if y == c)
            expected[c, p] = sum(1 for y, q in zip(labels, preds) if y == c and q == p) / n if n else 0.0
    np.testing.assert_allclose(matrix, expected)  # class 3 never occurs: a zero row, not NaN


def test_analyze_a_tiny_dann_run_end_to_end(tmp_path):
    run = tmp_path / "run"
    run_script("train.py", "--config", DANN, "--no-progress", "--opt", *quick_opts(run, iters=20, every=10))
    proc = run_script("tools/analyze.py", str(run), "--max-points", "60", "--device", "CPU")
    assert "proxy A-distance" in proc.stdout and "Traceback" not in proc.stderr
    report = json.loads((run / "analysis.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert (report["n_source"], report["n_target"], report["n_target_test"], report["iter"]) == (60, 60, 225, 20)
    # the trainer's evaluator scored the same checkpoint on the same split
    assert abs(report["target_test_acc"] - results["target_acc"]) < 1e-9
    np.testing.assert_allclose(list(report["target_test_per_class_acc"].values()), results["target_per_class"])
    assert 0.0 <= report["proxy_a_distance"] <= 2.0 and 0.0 <= report["domain_classifier_error"] <= 1.0
    assert report["files"] == ["tsne.png", "curves.png", "confusion.png"]

    drawn_png(run / "tsne.png", (1300, 550))
    drawn_png(run / "confusion.png", (650, 550))  # 10 classes: 0.3 in a class + 2.5 in, + 1 in for the colour bar
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    panels = 4 + any("validators" in r for r in metrics)  # losses, discriminator, GRL, accuracy (+ validators)
    rows, cols = grid_shape(panels)
    drawn_png(run / "curves.png", (500 * cols, 350 * rows))


def test_segmentation_run_gets_curves_only(tmp_path, capsys):
    run = tmp_path / "seg"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(os.path.join(ROOT, "configs/segmentation/"
                                                                          "source_only_digitscenes.yaml"))))
    write_jsonl(run / "metrics.jsonl", [{"phase": "train", "iter": 2, "seg": 1.0, "seg_aux": 1.2, "pix_acc_s": 0.3},
                                        {"phase": "train", "iter": 4, "seg": 0.8, "seg_aux": 1.1, "pix_acc_s": 0.4,
                                         "target_miou": 0.2}])
    assert main([str(run)]) is None  # no checkpoint needed
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "segmentation run" in out[0] and "curves.png" in out[0]
    assert sorted(os.listdir(run)) == ["config.yaml", "curves.png", "metrics.jsonl"]
    drawn_png(run / "curves.png", (1000, 350))  # losses, accuracy


@pytest.mark.parametrize("case", ["no_dir", "no_config", "no_ckpt"])
def test_cli_errors_are_one_line(tmp_path, case):
    args = [str(tmp_path / "missing")] if case == "no_dir" else [str(tmp_path)]
    if case == "no_ckpt":
        (tmp_path / "config.yaml").write_text(dump_config(load_config(os.path.join(ROOT, DANN))))
    proc = subprocess.run([sys.executable, "tools/analyze.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr
    expected = {"no_dir": "run directory", "no_config": "has no config.yaml", "no_ckpt": "--ckpt PATH"}[case]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


def test_too_few_points_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text(dump_config(load_config(os.path.join(ROOT, DANN))))
    with pytest.raises(SystemExit, match="error: --max-points 3 is too few .* at least 10"):
        main([str(tmp_path), "--max-points", "3"])
