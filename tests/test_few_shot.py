"""Few-shot target labels (SSDA): the split is deterministic, class-balanced, disjoint from the test and the
validation split, independent of train.seed, saved in the run directory and checked on resume; the data
bundle and the batches carry the labelled target images; the CLI refuses an impossible split in one line."""
import json

import numpy as np
import pytest

from datasets.base import ArrayDomain
from datasets.few_shot import FewShotSplitError, apply_split, draw_split, make_split, save_or_check
from engine.config import build_config
from engine.data import build_data
from engine.trainer import Trainer
from tests.conftest import quick_opts, run_script

CLASSES, PER_CLASS = 4, 9


def domain(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(CLASSES), PER_CLASS))
    return ArrayDomain(rng.random((len(labels), 6, 6, 3)).astype(np.float32), labels)


def test_split_is_deterministic_class_balanced_and_nested():
    labels = domain().labels
    three, val = draw_split(labels, 3, 3, seed=7)
    again = draw_split(labels, 3, 3, seed=7)
    np.testing.assert_array_equal(three, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert np.bincount(labels[three], minlength=CLASSES).tolist() == [3] * CLASSES
    assert np.bincount(labels[val], minlength=CLASSES).tolist() == [3] * CLASSES
    assert not set(three) & set(val)
    one, val_1shot = draw_split(labels, 1, 3, seed=7)
    np.testing.assert_array_equal(val_1shot, val)  # one validation split for 1- and 3-shot, as MME's lists
    assert set(one) <= set(three) and np.bincount(labels[one]).tolist() == [1] * CLASSES
    other, _ = draw_split(labels, 3, 3, seed=8)
    assert set(other) != set(three)
    with pytest.raises(FewShotSplitError, match="target class 0 has 9 training image"):
        draw_split(labels, 7, 3, seed=7)


def test_test_split_loses_labelled_and_val_images_when_it_is_the_train_domain():
    train = domain()
    same = ArrayDomain(train.images.copy(), train.labels)  # Office-31: train and test are the whole domain
    cfg = build_config({"data": {"target_labeled_per_class": 3, "target_val_per_class": 2, "few_shot_seed": 3}}).data
    split = make_split(cfg, train, same)
    unlabelled, labelled, val, test = apply_split(split, train, same)
    used = set(split.labeled) | set(split.val)
    assert len(test) == len(train) - len(used) and sorted(split.test_kept) == sorted(set(range(len(train))) - used)
    test_rows = {row.tobytes() for row in test.images}
    assert not any(train.images[i].tobytes() in test_rows for i in used)
    assert len(unlabelled) == len(train) - 3 * CLASSES and len(labelled) == 3 * CLASSES and len(val) == 2 * CLASSES
    separate = make_split(cfg, train, domain(seed=1))
    assert separate.test_kept is None and len(apply_split(separate, train, domain(seed=1))[3]) == len(train)


def test_split_is_saved_and_checked_on_resume(tmp_path):
    labels = domain().labels
    cfg = build_config({"data": {"target_labeled_per_class": 1}}).data
    split = make_split(cfg, domain(), domain(seed=1))
    path = save_or_check(split, str(tmp_path))
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    assert saved["labeled"] == split.labeled and saved["val"] == split.val
    assert np.bincount(labels[saved["labeled"]]).tolist() == [1] * CLASSES
    save_or_check(split, str(tmp_path))  # the same split resumes
    split.labeled = split.labeled[::-1]
    with pytest.raises(FewShotSplitError, match="different few-shot split"):
        save_or_check(split, str(tmp_path))


class _NoExtras:  # what make_batch asks of a method (losses/base.py Method)
    strong_views = 0
    needs_target_indices = False

    @staticmethod
    def host_random(rng, batch_size):
        return {}


def test_bundle_and_batches_carry_the_labelled_target_independent_of_train_seed(tmp_path):
    cfg = build_config({"data": {"target_labeled_per_class": 3}})
    first, second = build_data(cfg, seed=0), build_data(cfg, seed=1)
    assert first.few_shot == second.few_shot  # its own seed, not train.seed
    labelled = set(first.few_shot.labeled)
    target_train = build_data(build_config({}), seed=0).target.domain
    assert len(first.target.domain) == len(target_train) - 30 and len(first.target_val) == 30
    assert len(first.target_test) == len(build_data(build_config({}), seed=0).target_test)  # optdigits: a separate test
    batch = Trainer(cfg, str(tmp_path)).make_batch(_NoExtras(), first, 0)
    x_tl, y_tl = batch["x_tl"].asnumpy(), batch["y_tl"].asnumpy()
    assert x_tl.shape[0] == 30 and sorted(y_tl.tolist()) == sorted(target_train.labels[sorted(labelled)].tolist())
    want = first.eval_transform(target_train.images[sorted(labelled)], None).transpose(0, 3, 1, 2)
    got = {row.round(4).tobytes() for row in x_tl}
    assert got == {row.round(4).tobytes() for row in want}  # exactly the labelled images, in some order


def test_cli_refuses_an_impossible_split_in_one_line(tmp_path):
    proc = run_script("train.py", "--config", "configs/ssda/source_only_optdigits_3shot.yaml", "--opt",
                      "data.target_labeled_per_class=80", *quick_opts(tmp_path / "run"), check=False, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: target class") and "lower them" in lines[0]
