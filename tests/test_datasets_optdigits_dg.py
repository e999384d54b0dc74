"""datasets/optdigits_dg.py: the issue-#17 recipes (optdigits-DG domains, optdigits-C corruptions) checked
against independent computations (torch bilinear resize, the corruption formulas) and pinned checksums."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import engine  # noqa: E402,F401  (runtime settings first)
from types import SimpleNamespace  # noqa: E402

from datasets import optdigits_dg as od  # noqa: E402


def torch_grey():
    """m for every digit: torch's bilinear upsampling (align_corners=False) of images / 16, clipped."""
    from sklearn.datasets import load_digits

    digits = torch.from_numpy(load_digits().images / 16.0)[:, None]
    m = torch.nn.functional.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False)
    return np.clip(m[:, 0].numpy(), 0, 1)


def test_dg_domains_follow_the_recipe_and_checksums():
    m = torch_grey()
    perm = np.random.RandomState(0).permutation(1797)
    parts = np.array_split(perm, 4)
    for domain, part in zip(od.DOMAINS, parts):
        images, labels = od.dg_domain(domain)
        assert images.shape == (len(part), 28, 28, 3) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        np.testing.assert_array_equal(labels, od.digits()[1][part])
        if domain in ("grey", "inverted"):
            want = m[part] if domain == "grey" else 1.0 - m[part]
            np.testing.assert_allclose(images, np.repeat(want[..., None], 3, -1), atol=1e-5)
    # tint: per image, regressing each channel on m recovers c_fg and c_bg; their mean gap is >= 0.3
    images, _ = od.dg_domain("tint")
    gaps = []
    for img, digit in zip(images[:40], m[parts[3][:40]]):
        design = np.stack([digit.ravel(), 1 - digit.ravel()], 1)
        colours = np.linalg.lstsq(design, img.reshape(-1, 3), rcond=None)[0]  # rows: fg, bg
        gaps.append(np.abs(colours[0] - colours[1]).mean())
    assert min(gaps) > 0.3 - 0.05  # noise std 0.08 and clipping blur the estimate a little
    for key, digest in od.CHECKSUMS.items():
        assert od.checksum(key) == digest, key


def test_optdigits_c_splits_and_corruptions():
    m = torch_grey()
    perm = np.random.RandomState(0).permutation(1797)
    source, clean = od.c_split("source"), od.c_split("clean")
    assert len(source[1]) == 899 and len(clean[1]) == 898
    np.testing.assert_allclose(source[0][..., 0], m[perm[:899]], atol=1e-5)
    np.testing.assert_allclose(clean[0][..., 0], m[perm[899:]], atol=1e-5)
    x = clean[0].astype(np.float64)
    for severity, level in zip(od.SEVERITIES, od.CORRUPTIONS["contrast"]):  # (x - mean) c + mean, exact
        mean = x.mean(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(od.c_split(f"contrast-{severity}")[0], (x - mean) * level + mean, atol=1e-5)
    noisy = od.c_split("gaussian_noise-3")[0] - x
    inside = (od.c_split("gaussian_noise-3")[0] > 0) & (od.c_split("gaussian_noise-3")[0] < 1)
    assert abs(noisy[inside].std() - 0.18) < 0.02  # sigma .18 where the clip did not bind
    changed = od.c_split("impulse_noise-5")[0] != clean[0]
    values = od.c_split("impulse_noise-5")[0][changed]
    assert set(np.unique(values)) <= {0.0, 1.0} and 0.2 < changed.mean() < 0.27  # .27 hit, some already 0/1
    blur_std = [od.c_split(f"gaussian_blur-{s}")[0].std() for s in od.SEVERITIES]
    assert all(a > b for a, b in zip(blur_std, blur_std[1:])) and blur_std[0] < x.std()
    np.testing.assert_array_equal(clean[1], od.c_split("contrast-5")[1])


def test_registered_builders():
    cfg = SimpleNamespace(domain="clean")
    assert len(od.optdigits_c(cfg, "train")) == 899 and len(od.optdigits_c(cfg, "test")) == 898
    corrupted = od.optdigits_c(SimpleNamespace(domain="contrast-5"), "test")
    np.testing.assert_array_equal(corrupted.images, od.c_split("contrast-5")[0])
    assert od.optdigits_c.corruption_sets() == od.c_sets() and len(od.c_sets()) == 20
    with pytest.raises(ValueError, match="severity 1..5"):
        od.optdigits_c(SimpleNamespace(domain="contrast-9"), "test")
    grey = SimpleNamespace(domain="grey")
    assert len(od.optdigits_dg(grey, "train")) == 450 and len(od.optdigits_dg(grey, "test")) == 225
    half = od.optdigits_dg_half(grey, "train")
    np.testing.assert_array_equal(half.images, od.dg_domain("grey")[0][:225])
    with pytest.raises(ValueError, match="one of grey, inverted, photo, tint"):
        od.optdigits_dg(SimpleNamespace(domain=None), "train")
