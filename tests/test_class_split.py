"""Class-split settings (issue #15): relabelling of the domains, the open-set / partial scores and the config errors."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from datasets.base import ArrayDomain
from datasets.class_split import apply_class_split, class_split_of
from engine.evaluators import openset_scores
from tests.conftest import run_script


def labelled_domain(labels):
    """Each image is filled with its original label, so a test can see which image went where."""
    labels = np.asarray(labels, np.int32)
    images = np.broadcast_to(labels[:, None, None, None].astype(np.float32), (len(labels), 2, 2, 1)).copy()
    return ArrayDomain(images, labels, [f"c{c}" for c in range(6)])


def split_cfg(shared=None, source_private=None, target_private=None):
    return SimpleNamespace(shared_classes=shared, source_private=source_private, target_private=target_private)


def test_open_partial_split_relabels_source_and_target():
    labels = [0, 1, 2, 3, 4, 5, 5, 4, 1]
    cfg = split_cfg(shared=[4, 1], source_private=[0], target_private=[5, 3])
    source, target, test = apply_class_split(cfg, *(labelled_domain(labels) for _ in range(3)))
    # source: shared 4 -> 0, 1 -> 1, then source-private 0 -> 2; classes 2, 3, 5 dropped
    assert source.images[:, 0, 0, 0].tolist() == [0, 1, 4, 4, 1]
    assert source.labels.tolist() == [2, 1, 0, 0, 1]
    assert source.class_names == ("c4", "c1", "c0") and source.num_classes == 3
    for dom in (target, test):
        # target: shared as in the source, both target-private classes -> the one unknown label K = 3; 0, 2 dropped
        assert dom.images[:, 0, 0, 0].tolist() == [1, 3, 4, 5, 5, 4, 1]
        assert dom.labels.tolist() == [1, 3, 0, 3, 3, 0, 1]
        assert dom.class_names == ("c4", "c1", "c0", "unknown")
        assert dom.task == "openset" and dom.known_classes == (0, 1) and dom.unknown_label == 3


def test_partial_and_closed_splits():
    cfg = split_cfg(shared=[2, 3], source_private=[0, 1, 4, 5])
    source, target, _ = apply_class_split(cfg, *(labelled_domain(range(6)) for _ in range(3)))
    assert source.labels.tolist() == [2, 3, 0, 1, 4, 5] and source.num_classes == 6
    assert target.labels.tolist() == [0, 1] and target.task == "partial" and target.unknown_label is None
    unchanged = labelled_domain(range(6))
    assert apply_class_split(split_cfg(), unchanged, unchanged, unchanged)[0] is unchanged


@pytest.mark.parametrize("cfg, message", [
    (split_cfg(target_private=[5]), "need data.shared_classes"),
    (split_cfg(shared=[0, 6]), r"class 6 is not a class index of this dataset \(0..5\)"),
    (split_cfg(shared=[0, 1], target_private=[1]), "class 1 appears in both data.shared_classes and"),
    (split_cfg(shared=[0, 0]), "class 0 appears twice in data.shared_classes"),
])
def test_bad_splits_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        class_split_of(cfg, 6)


def confident(label, k=3):
    row = np.zeros(k)
    row[label] = 20.0  # entropy ~ 0: kept
    return row


def flat(lean=None, k=3):
    row = np.zeros(k)
    if lean is not None:
        row[lean] = 0.01  # entropy ~ ln 3 > ln(3) / 2: rejected as unknown; argmax = lean
    return row


def test_openset_scores_on_a_constructed_case():
    """Known classes 0, 1, 2 and unknown = 3. Recall with rejection: class 0 3/4, class 1 2/2, class 2 1/2 ->
    known 0.75; unknown 2/4 -> 0.5; H = 2 * 0.75 * 0.5 / 1.25 = 0.6."""
    rows = [(confident(0), 0), (confident(0), 0), (confident(0), 0), (flat(1), 0),
            (confident(1), 1), (confident(1), 1),
            (confident(0), 2), (confident(2), 2),
            (flat(), 3), (flat(2), 3), (confident(1), 3), (confident(0), 3)]
    logits, labels = np.array([r for r, _ in rows]), np.array([y for _, y in rows])
    scores = openset_scores(logits, labels, (0, 1, 2), 3)
    assert scores["threshold"] == pytest.approx(math.log(3) / 2)
    assert scores["known_per_class"] == [0.75, 1.0, 0.5]
    assert scores["known_acc"] == pytest.approx(0.75) and scores["unknown_acc"] == pytest.approx(0.5)
    assert scores["hscore"] == pytest.approx(0.6)
    assert scores["os"] == pytest.approx((0.75 + 1.0 + 0.5 + 0.5) / 4)
    # the argmax alone: class 0's flat row leans to 1 (wrong), so closed per class 3/4, 1, 1/2
    assert scores["closed_per_class"] == [0.75, 1.0, 0.5]
    assert scores["unknown_rate"] == pytest.approx(3 / 12)
    # no unknown predicted correctly -> H-score 0 however good the known classes are
    assert openset_scores(logits[:8], labels[:8], (0, 1, 2), 3)["hscore"] == 0.0


def test_build_data_applies_the_optdigits_open_set_split():
    from engine.config import load_config
    from engine.data import build_data

    cfg = load_config("configs/openset/source_only_optdigits-oda.yaml", ["data.batch_size=8"])
    data = build_data(cfg, 0)
    assert data.num_classes == 6 and set(np.unique(data.source.domain.labels)) == set(range(6))
    assert set(np.unique(data.target_test.labels)) == set(range(7)) and data.target_test.unknown_label == 6
    assert data.target_test.task == "openset" and data.target.domain.task == "openset"


def test_a_model_that_does_not_match_the_split_is_refused():
    from engine.config import load_config
    from engine.data import build_data

    cfg = load_config("configs/openset/dance_optdigits-pda.yaml", ["model.num_classes=5", "data.batch_size=8"])
    with pytest.raises(ValueError, match="model.num_classes=5 but the data has 10 classes; set model.num_classes=10"):
        build_data(cfg, 0)


@pytest.mark.slow
def test_cli_refuses_a_model_that_does_not_match_the_split(tmp_path):
    proc = run_script("train.py", "--config", "configs/openset/source_only_optdigits-oda.yaml", "--opt",
                      "model.num_classes=10", f"train.output_dir={tmp_path}", check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(err) == 1
    assert "model.num_classes=10 but the data has 6 classes; set model.num_classes=6" in err[0]
