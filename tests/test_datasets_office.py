"""Office-31 / ImageCLEF file domains on tiny real JPEG trees, and the ``imagenet`` transform."""
import engine  # noqa: F401  (before MindSpore)

import numpy as np
import pytest
from PIL import Image

import datasets.office  # noqa: F401  (registers office31 / imageclef)
from datasets.base import DatasetMissingError
from datasets.office import IMAGECLEF, OFFICE31, FileDomain
from datasets.transforms import TRANSFORMS, _crop_boxes
from engine.config import Config, DataCfg, DomainCfg
from engine.data import build_data, build_domain

PER_CLASS = 2


def write_jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = tuple(int(v) for v in (value % 256, (value * 7) % 256, (value * 13) % 256))
    Image.new("RGB", (40, 30), colour).save(path, quality=95)


def make_office31_tree(root):
    """``<root>/<domain>/images/<class>/*.jpg``: PER_CLASS images of each of the 31 classes in A, D, W."""
    for d, domain in enumerate(("amazon", "dslr", "webcam")):
        for c, cls in enumerate(OFFICE31.classes):
            for k in range(PER_CLASS):
                write_jpeg(root / domain / "images" / cls / f"frame_{k:04d}.jpg", 100 * d + 3 * c + k)
    return root


def make_imageclef_tree(root, list_files):
    """``<root>/<domain>/<c>/*.jpg`` (PER_CLASS per class) with one TLlib list per domain,
    ``list_files = {domain: list path relative to root}``."""
    for domain, list_file in list_files.items():
        lines = []
        for c in range(len(IMAGECLEF.classes)):
            for k in range(PER_CLASS):
                rel = f"{domain}/{c}/img_{c}_{k}.jpg"
                write_jpeg(root / rel, 5 * c + k)
                lines.append(f"{rel} {c}")
        (root / list_file).parent.mkdir(parents=True, exist_ok=True)
        (root / list_file).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def office_root(tmp_path_factory):
    return make_office31_tree(tmp_path_factory.mktemp("office31"))


@pytest.fixture(scope="module")
def clef_root(tmp_path_factory):
    return make_imageclef_tree(tmp_path_factory.mktemp("imageclef"), {"b": "list/bList.txt", "c": "c_list.txt"})


def data_cfg(**kw):
    return DataCfg(**{"image_size": 16, "resize_size": 20, "num_workers": 2, **kw})


def domain_cfg(name, domain, root, **kw):
    return DomainCfg(name=name, domain=domain, root=str(root), verify_counts=False, **kw)


def test_office31_folder_layout_class_order_and_loading(office_root):
    dom = build_domain(domain_cfg("office31", "A", office_root), "train", data_cfg())
    assert isinstance(dom, FileDomain) and len(dom) == 31 * PER_CLASS
    assert dom.class_names == OFFICE31.classes and list(OFFICE31.classes) == sorted(OFFICE31.classes)
    assert dom.class_names[:3] == ("back_pack", "bike", "bike_helmet") and dom.num_classes == 31
    np.testing.assert_array_equal(dom.labels, np.repeat(np.arange(31), PER_CLASS))
    assert dom.paths[2].endswith("amazon/images/bike/frame_0000.jpg")
    image = dom.load(2)
    assert image.shape == (20, 20, 3) and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1
    expected = np.asarray(Image.open(dom.paths[2]).convert("RGB").resize((20, 20), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(image, expected, atol=1e-6)
    webcam = build_domain(domain_cfg("office31", "webcam", office_root), "test", data_cfg(resize_size=0))
    assert webcam.load(0).shape == (16, 16, 3)  # resize_size 0 -> image_size


def test_batch_loader_keeps_index_order_and_is_worker_independent(office_root):
    dom = build_domain(domain_cfg("office31", "D", office_root), "train", data_cfg(num_workers=3))
    idx = np.array([7, 0, 61, 7, 33])
    batch = dom.batch_loader(dom, idx)
    assert batch.shape == (5, 20, 20, 3) and batch.dtype == np.float32
    for row, i in zip(batch, idx):
        np.testing.assert_array_equal(row, dom.load(i))
    assert len({float(b.mean()) for b in batch}) == 4  # distinct images, repeated index twice
    single = dom.subset(np.arange(len(dom)))
    single.num_workers = 1
    np.testing.assert_array_equal(single.batch_loader(single, idx), batch)
    sub = dom.subset([61, 0])
    assert isinstance(sub, FileDomain) and list(sub.labels) == [30, 0]
    np.testing.assert_array_equal(sub.batch_loader(sub, [0, 1]), batch[[2, 1]])


def test_image_lists_standard_and_explicit(office_root, tmp_path):
    root = tmp_path / "office31"
    lines = [f"dslr/images/{cls}/frame_0001.jpg {c}" for c, cls in enumerate(OFFICE31.classes) if c % 2 == 0]
    (root / "image_list").mkdir(parents=True)
    (root / "image_list" / "dslr.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        rel = line.split()[0]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((office_root / rel).read_bytes())
    dom = build_domain(domain_cfg("office31", "D", root), "train", data_cfg())
    assert len(dom) == 16 and list(dom.labels) == list(range(0, 31, 2))

    custom = tmp_path / "few.txt"
    custom.write_text("dslr/images/mug/frame_0001.jpg 17\n\ndslr/images/bike/frame_0001.jpg 1\n")
    dom = build_domain(domain_cfg("office31", "D", office_root, image_list=str(custom)), "train", data_cfg())
    assert list(dom.labels) == [17, 1] and dom.paths[0].endswith("mug/frame_0001.jpg")


def test_imageclef_lists_and_class_names(clef_root):
    for alias, name in (("B", "bList.txt"), ("c", "c_list.txt")):
        dom = build_domain(domain_cfg("imageclef", alias, clef_root), "train", data_cfg())
        assert len(dom) == 12 * PER_CLASS and dom.num_classes == 12
        np.testing.assert_array_equal(dom.labels, np.repeat(np.arange(12), PER_CLASS))
    assert dom.class_names[0] == "aeroplane" and dom.class_names[-1] == "people"
    assert list(IMAGECLEF.classes) == sorted(IMAGECLEF.classes)
    assert dom.batch_loader(dom, [3]).shape == (1, 20, 20, 3)


def test_build_data_streams_file_domains(office_root):
    cfg = Config()
    cfg.data = DataCfg(source=domain_cfg("office31", "A", office_root), target=domain_cfg("office31", "W", office_root),
                       batch_size=4, image_size=16, resize_size=20, train_transform="imagenet",
                       source_val_fraction=0.0, num_workers=2)
    cfg.model.num_classes = 31
    data = build_data(cfg, seed=0)
    x, y = data.source.batch(0)
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    x_again, _ = data.source.batch(0)
    np.testing.assert_array_equal(x, x_again)  # deterministic per iteration


def test_verify_counts_reports_mismatch(office_root):
    cfg = domain_cfg("office31", "amazon", office_root)
    cfg.verify_counts = True
    with pytest.raises(ValueError, match=r"has 62 images in 31 classes .* expected 2817 in 31.*verify_counts: false"):
        build_domain(cfg, "train", data_cfg())


def test_missing_domain_names_layout_and_source(office_root, tmp_path):
    with pytest.raises(DatasetMissingError, match=r"'webcam' not found: expected .*webcam/images .*"
                                                  r"<root>/webcam/images/<class>/\*\.jpg.*download Office-31 manually"):
        build_domain(domain_cfg("office31", "W", tmp_path), "train", data_cfg())
    with pytest.raises(ValueError, match=r"unknown domain 'x'; valid: amazon \(a\)"):
        build_domain(domain_cfg("office31", "x", office_root), "train", data_cfg())
    (tmp_path / "p").mkdir()
    with pytest.raises(DatasetMissingError, match=r"needs an image list: none of .*pList\.txt"):
        build_domain(domain_cfg("imageclef", "p", tmp_path), "train", data_cfg())


def test_missing_file_in_list_is_named(clef_root, tmp_path):
    lst = tmp_path / "broken.txt"
    lst.write_text("b/0/img_0_0.jpg 0\nb/0/not_there.jpg 0\n")
    with pytest.raises(DatasetMissingError, match=r"lists 1 missing file\(s\), first .*b/0/not_there\.jpg"):
        build_domain(domain_cfg("imageclef", "b", clef_root, image_list=str(lst)), "train", data_cfg())
    lst.write_text("b/0/img_0_0.jpg zero\n")
    with pytest.raises(ValueError, match=r"broken\.txt:1: expected 'relative/path\.jpg label'"):
        build_domain(domain_cfg("imageclef", "b", clef_root, image_list=str(lst)), "train", data_cfg())


def test_corrupt_jpeg_is_named(office_root, tmp_path):
    good = (office_root / "amazon" / "images" / "mug" / "frame_0000.jpg").read_bytes()
    truncated, garbage = tmp_path / "truncated.jpg", tmp_path / "garbage.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    garbage.write_bytes(b"not a jpeg at all")
    dom = FileDomain([str(office_root / "amazon" / "images" / "mug" / "frame_0000.jpg"), str(truncated),
                      str(garbage)], [17, 17, 17], OFFICE31.classes, 20, num_workers=2)
    assert dom.load(0).shape == (20, 20, 3)
    for bad in (truncated, garbage):
        with pytest.raises(DatasetMissingError, match=rf"cannot decode image {bad}"):
            dom.batch_loader(dom, [0, dom.paths.index(str(bad))])


def test_imagenet_transform():
    images = np.random.default_rng(0).random((6, 20, 24, 3)).astype(np.float32)
    augment = TRANSFORMS.get("imagenet")
    out = augment(images, np.random.default_rng(1), 16)
    assert out.shape == (6, 16, 16, 3) and out.dtype == np.float32
    assert images.min() <= out.min() and out.max() <= images.max()  # bilinear stays in range
    np.testing.assert_array_equal(out, augment(images, np.random.default_rng(1), 16))
    np.testing.assert_array_equal(augment(images, None, 16), images[:, 2:18, 4:20])  # center crop

    tops, lefts, heights, widths = _crop_boxes(np.random.default_rng(2), 1000, 20, 24)
    area = heights * widths / (20 * 24)
    ratio = widths / heights
    assert (tops >= 0).all() and (tops + heights <= 20).all() and (lefts + widths <= 24).all()
    assert 0.05 < area.min() and area.max() <= 1 and 0.6 < ratio.min() and ratio.max() < 1.5
    # bilinear resampling of a linear ramp is linear; mirrored crops have a falling x ramp
    ys, xs = np.meshgrid(np.arange(20) / 20, np.arange(24) / 24, indexing="ij")
    ramp = np.repeat(np.stack([xs, ys, xs + ys], -1)[None], 20, 0).astype(np.float32)
    out = augment(ramp, np.random.default_rng(4), 16)[:, 1:-1, 1:-1]
    for channel, axis in ((0, 2), (1, 1)):
        np.testing.assert_allclose(np.diff(out[..., channel], 2, axis=axis), 0, atol=1e-5)
    x_slope = np.sign(np.diff(out[..., 0], axis=2).mean(axis=(1, 2)))
    assert (np.diff(out[..., 1], axis=1) > 0).all() and {-1.0, 1.0} == set(x_slope)
