"""DigitScenes -> DigitScenes-M: pinned checksums and the recipe's properties, re-derived independently."""
import engine  # noqa: F401  (before MindSpore)

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_sample_images

from datasets import digitscenes
from datasets.segmentation import SegArrayDomain
from engine.config import DomainCfg
from engine.data import build_domain

SPLITS = {  # split: (registry name, split argument, scenes)
    "source_train": ("digitscenes", "train", 2000),
    "source_test": ("digitscenes", "test", 500),
    "target_train": ("digitscenes_m", "train", 2000),
    "target_test": ("digitscenes_m", "test", 500),
}


@pytest.fixture(scope="module")
def reference_digits():
    """14x14 digits upsampled with torch's bilinear interpolation (half-pixel centres) and their classes."""
    torch = pytest.importorskip("torch")
    digits = load_digits()
    small = torch.from_numpy(digits.images / 16.0)[:, None]
    big = torch.nn.functional.interpolate(small, size=(14, 14), mode="bilinear", align_corners=False)
    return big[:, 0].numpy(), digits.target


def canvas_of(scenes, digits):
    """Each scene's 32x32 digit intensity rebuilt from its digit ids and boxes."""
    canvas = np.zeros((len(scenes.labels), 32, 32))
    for k, (ids, boxes) in enumerate(zip(scenes.digit_ids, scenes.boxes)):
        for digit_id, (top, left) in zip(ids, boxes):
            canvas[k, top:top + 14, left:left + 14] = digits[digit_id]
    return canvas


def test_checksums_shapes_and_registry():
    for split, (name, arg, count) in SPLITS.items():
        assert digitscenes.checksum(split) == digitscenes.CHECKSUMS[split], split
        dom = build_domain(DomainCfg(name=name), arg, None)
        assert isinstance(dom, SegArrayDomain) and dom.task == "segmentation" and len(dom) == count
        assert dom.images.shape == (count, 32, 32, 3) and dom.images.dtype == np.float32
        assert 0.0 <= dom.images.min() and dom.images.max() <= 1.0
        assert dom.labels.shape == (count, 32, 32) and dom.labels.dtype == np.uint8 and dom.labels.max() == 10
        assert dom.class_names == tuple("0123456789") + ("background",) and dom.palette.shape == (11, 3)
        assert not dom.images.flags.writeable and not dom.labels.flags.writeable  # the cache is shared
        assert set(np.unique(dom.labels)) == set(range(11))


def test_disjoint_digit_pools_and_two_digits_per_scene():
    perm = np.random.RandomState(0).permutation(1797)
    pools = {"source_train": perm[:900], "source_test": perm[:900],
             "target_train": perm[900:1350], "target_test": perm[1350:]}
    for split, pool in pools.items():
        scenes = digitscenes.generate(split)
        assert scenes.digit_ids.shape == (len(scenes.labels), 2)
        assert np.isin(scenes.digit_ids, pool).all(), split
        assert (scenes.digit_ids[:, 0] != scenes.digit_ids[:, 1]).all()
        top, left = scenes.boxes[..., 0], scenes.boxes[..., 1]
        assert top.min() >= 0 and left.min() >= 0 and top.max() <= 18 and left.max() <= 18  # inside the canvas
        apart = (np.abs(top[:, 0] - top[:, 1]) >= 14) | (np.abs(left[:, 0] - left[:, 1]) >= 14)
        assert apart.all(), f"{split}: overlapping boxes"
    # source train and source test draw from the same pool but are different scenes
    assert not np.array_equal(digitscenes.generate("source_train").digit_ids[:500],
                              digitscenes.generate("source_test").digit_ids)


def test_labels_are_the_digit_class_where_its_intensity_exceeds_035(reference_digits):
    digits, classes = reference_digits
    for split in SPLITS:
        scenes = digitscenes.generate(split)
        canvas = canvas_of(scenes, digits)
        owner = np.full(canvas.shape, 10)
        for k, (ids, boxes) in enumerate(zip(scenes.digit_ids, scenes.boxes)):
            for digit_id, (top, left) in zip(ids, boxes):
                owner[k, top:top + 14, left:left + 14] = classes[digit_id]
        expected = np.where(canvas > 0.35, owner, 10)
        np.testing.assert_array_equal(scenes.labels, expected, err_msg=split)
        # both digits of every scene are visible in the label map
        for k in range(0, len(scenes.labels), 97):
            for digit_id, (top, left) in zip(scenes.digit_ids[k], scenes.boxes[k]):
                assert (scenes.labels[k, top:top + 14, left:left + 14] == classes[digit_id]).any()


def test_source_rendering_is_the_digit_plus_sigma_4_noise(reference_digits):
    digits, _ = reference_digits
    for split in ("source_train", "source_test"):
        scenes = digitscenes.generate(split)
        assert scenes.photo_ids is None
        canvas = canvas_of(scenes, digits)[..., None]
        residual = scenes.images.astype(np.float64) * 255.0 - canvas * 255.0
        unclipped = (canvas > 0.1) & (canvas < 0.9)  # away from the clipping at 0 and 255
        assert abs(residual[np.broadcast_to(unclipped, residual.shape)].std() - 4.0) < 0.1
        assert abs(residual[np.broadcast_to(unclipped, residual.shape)].mean()) < 0.1
        # channels carry independent noise
        assert np.corrcoef(residual[..., 0].ravel(), residual[..., 1].ravel())[0, 1] < 0.1


def test_target_rendering_blends_photo_patches_from_disjoint_columns(reference_digits):
    digits, _ = reference_digits
    photos = [p.astype(np.float64) for p in load_sample_images().images]
    for split, (lo, hi) in (("target_train", (0, 400)), ("target_test", (400, 640))):
        scenes = digitscenes.generate(split)
        top, left = scenes.photo_offsets[:, 0], scenes.photo_offsets[:, 1]
        assert left.min() >= lo and (left + 32).max() <= hi and top.min() >= 0 and (top + 32).max() <= 427
        assert set(np.unique(scenes.photo_ids)) == {0, 1}
        canvas = canvas_of(scenes, digits)
        for k in range(0, len(scenes.labels), 50):
            patch = photos[scenes.photo_ids[k]][top[k]:top[k] + 32, left[k]:left[k] + 32]
            expected = np.abs(patch - canvas[k][..., None] * 255.0) / 255.0
            np.testing.assert_allclose(scenes.images[k], expected, atol=1e-6)
