"""mIoU: against a per-class mask implementation and against cityscapesscripts' own evaluation."""
import copy

import numpy as np
import pytest
from PIL import Image

from datasets.cityscapes import id_to_train_id
from engine.metrics import ConfusionAccumulator, confusion_matrix, iou, mean_iou, pixel_accuracy


def reference_scores(pred, label, num_classes, ignore_index=255):
    """Per-class IoU from boolean masks, confusion by explicit counting, pixel accuracy."""
    counted = (label != ignore_index) & (label < num_classes)
    conf = np.zeros((num_classes, num_classes), np.int64)
    ious = np.full(num_classes, np.nan)
    for c in range(num_classes):
        gt_c, pr_c = counted & (label == c), counted & (pred == c)
        union = np.count_nonzero(gt_c | pr_c)
        if union:
            ious[c] = np.count_nonzero(gt_c & pr_c) / union
        for p in range(num_classes):
            conf[c, p] = np.count_nonzero(gt_c & (pred == p))
    accuracy = np.count_nonzero(counted & (pred == label)) / np.count_nonzero(counted)
    return conf, ious, accuracy


def random_maps(rng, k, shape=(3, 20, 24)):
    label = rng.integers(0, k, shape).astype(np.uint8)
    label[rng.random(shape) < 0.15] = 255  # ignored pixels
    label[rng.random(shape) < 0.05] = k + 2  # ids outside the K classes are skipped as well
    pred = rng.integers(0, k, shape)
    # class 4: absent from ground truth and prediction -> NaN; class 5: only predicted -> IoU 0;
    # class 6: predicted only where the ground truth is ignored -> absent -> NaN
    label[label == 4], pred[pred == 4] = 0, 1
    label[label == 5], label[label == 6], pred[pred == 6] = 1, 2, 3
    pred[label == 255] = np.where(rng.random(np.count_nonzero(label == 255)) < 0.5, 6, 0)
    return pred, label


def test_matches_per_class_masks_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    k = 8
    pred, label = random_maps(rng, k)
    ref_conf, ref_iou, ref_acc = reference_scores(pred, label, k)
    conf = confusion_matrix(pred, label, k)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, ref_conf)
    np.testing.assert_allclose(iou(conf), ref_iou, equal_nan=True)
    assert np.isnan(iou(conf)[[4, 6]]).all() and iou(conf)[5] == 0.0
    assert mean_iou(conf) == pytest.approx(np.mean(ref_iou[~np.isnan(ref_iou)]))
    assert pixel_accuracy(conf) == pytest.approx(ref_acc)


def test_accumulates_over_the_whole_split_not_per_image():
    rng = np.random.default_rng(1)
    pred, label = random_maps(rng, 6, shape=(5, 16, 16))
    acc = ConfusionAccumulator(6)
    for i in range(0, 5, 2):  # uneven batches
        acc.add(pred[i:i + 2], label[i:i + 2])
    _, ref_iou, ref_acc = reference_scores(pred, label, 6)
    np.testing.assert_allclose(acc.iou(), ref_iou, equal_nan=True)
    assert acc.mean_iou() == pytest.approx(np.nanmean(ref_iou)) and acc.pixel_accuracy() == pytest.approx(ref_acc)
    acc.reset()
    assert acc.conf.sum() == 0 and np.isnan(acc.mean_iou())
    # image 1 all class 0 predicted 0 (per-image mIoU 1), image 2 all class 1 predicted 0 (per-image 0):
    # averaging per image would give 0.5; over the split class 0 has IoU 4/8 and class 1 has 0
    acc.add(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), np.uint8))
    acc.add(np.zeros((1, 2, 2), int), np.ones((1, 2, 2), np.uint8))
    np.testing.assert_allclose(acc.iou()[:2], [0.5, 0.0])
    assert acc.mean_iou() == 0.25 and acc.pixel_accuracy() == 0.5


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(4, int), np.zeros(5, int), 3)
    # an out-of-range prediction on an ignored pixel does not matter
    assert confusion_matrix(np.array([0, 7]), np.array([0, 255]), 3).sum() == 1


def official_scores(tmp_path, predictions, ground_truths):
    """cityscapesscripts' evaluateImgLists on label-id PNGs: ({class name: IoU}, average)."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    pred_files, gt_files = [], []
    for k, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        pred_files.append(str(tmp_path / f"aachen_000000_{k:06d}_pred_labelIds.png"))
        gt_files.append(str(tmp_path / f"aachen_000000_{k:06d}_gtFine_labelIds.png"))
        Image.fromarray(pred, "L").save(pred_files[-1])
        Image.fromarray(gt, "L").save(gt_files[-1])
    args = copy.copy(official.args)
    args.evalInstLevelScore, args.evalPixelAccuracy = False, False  # no *_instanceIds.png needed
    args.JSONOutput, args.quiet = False, True  # nothing written to the package folder, nothing printed
    result = official.evaluateImgLists(pred_files, gt_files, args)
    return result["classScores"], result["averageScoreClasses"]


def test_miou_matches_cityscapesscripts_evaluation(tmp_path):
    from cityscapesscripts.helpers.labels import labels, trainId2label

    rng = np.random.default_rng(2)
    all_ids = np.array([lab.id for lab in labels if lab.id >= 0], np.uint8)  # 0..33, ignored ids included
    train_to_id = np.array([trainId2label[t].id for t in range(19)], np.uint8)
    gts, preds = [], []
    acc = ConfusionAccumulator(19)
    for _ in range(3):
        gt = rng.choice(all_ids, (48, 96)).astype(np.uint8)
        gt[(gt == 31) | (gt == 32)] = 0  # train (16) and motorcycle (17) absent from the ground truth ...
        gt_train = id_to_train_id(gt)
        pred_train = np.where((rng.random((48, 96)) < 0.6) & (gt_train != 255), gt_train, rng.integers(0, 19, (48, 96)))
        pred_train[pred_train == 17] = 13  # ... motorcycle also from the prediction: NaN in both
        pred_train[(pred_train == 16) & (gt_train != 255)] = 0  # train (16): only on ignored pixels
        gts.append(gt)
        preds.append(train_to_id[pred_train])
        acc.add(pred_train, gt_train)
    scores, average = official_scores(tmp_path, preds, gts)
    official_iou = np.array([scores[trainId2label[t].name] for t in range(19)])
    assert np.isnan(official_iou[[16, 17]]).all()
    np.testing.assert_allclose(acc.iou(), official_iou, rtol=1e-12, equal_nan=True)
    assert acc.mean_iou() == pytest.approx(average, rel=1e-12)
