"""GTA5 / Cityscapes loaders on tiny trees of real PNGs, the id -> train-id table, seg_augment, colorize."""
import engine  # noqa: F401  (before MindSpore)

import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from datasets import cityscapes as cs
from datasets.base import BatchStream, DatasetMissingError
from datasets.segmentation import SegArrayDomain, SegFileDomain, colorize, seg_augment
from engine.config import DataCfg, DomainCfg
from engine.data import build_domain

# the mapping hard-coded in AdaptSegNet's dataset/gta5_dataset.py (an independent copy of the table)
ADAPTSEGNET_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITY_TRAIN = ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bochum/bochum_000000_000313"]
CITY_VAL = ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]


def reference_train_ids(raw):
    out = np.full(raw.shape, 255, np.uint8)
    for label_id, train_id in ADAPTSEGNET_ID_TO_TRAINID.items():
        out[raw == label_id] = train_id
    return out


def write_rgb(path, seed, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)


def write_label_ids(path, seed, size, palette_mode=False):
    """Raw label ids 0..34 (34 is in no table) as an 8-bit PNG: mode L (Cityscapes) or P (GTA5)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.random.default_rng(seed).integers(0, 35, (size[1], size[0])).astype(np.uint8)
    img = Image.fromarray(ids, "L")
    if palette_mode:
        img = Image.fromarray(ids, "P")
        img.putpalette([v for lab in range(256) for v in ((lab * 7) % 256, (lab * 13) % 256, (lab * 29) % 256)])
    img.save(path)


@pytest.fixture(scope="module")
def city_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    for split, names in (("train", CITY_TRAIN), ("val", CITY_VAL)):
        for k, name in enumerate(names):
            write_rgb(root / "leftImg8bit" / split / f"{name}_leftImg8bit.png", 10 * k + len(split), (64, 32))
            write_label_ids(root / "gtFine" / split / f"{name}_gtFine_labelIds.png", 10 * k + len(split) + 1, (64, 32))
    return root


@pytest.fixture(scope="module")
def gta_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gta5")
    for k in range(1, 5):
        write_rgb(root / "images" / f"{k:05d}.png", k, (40, 24))
        write_label_ids(root / "labels" / f"{k:05d}.png", 100 + k, (40, 24), palette_mode=True)
    savemat(root / "split.mat", {"trainIds": np.array([[1], [3]]), "valIds": np.array([[2]]),
                                 "testIds": np.array([[4]])})
    return root


def seg_cfg(name, root, resize=None, **kw):
    cfg = DomainCfg(name=name, root=str(root), **{"verify_counts": False, **kw})
    cfg.resize = resize  # DomainCfg.resize: [w, h] or None
    return cfg


def build(cfg, split="train"):
    return build_domain(cfg, split, DataCfg(num_workers=2))


def copy_tree(src, tmp_path):
    return shutil.copytree(src, tmp_path / "copy")


def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- label table
def test_id_to_train_id_follows_the_cityscapesscripts_table():
    from cityscapesscripts.helpers.labels import labels

    for lab in labels:
        expected = lab.trainId if 0 <= lab.trainId < 255 else 255  # 255 and -1 are ignored
        if lab.id >= 0:
            assert cs.id_to_train_id(np.uint8(lab.id)) == expected, lab.name
            assert cs.id_to_train_id(np.array([lab.id], np.int32))[0] == expected, lab.name
        if expected != 255:
            assert cs.CITYSCAPES_CLASSES[expected] == lab.name
            assert tuple(cs.CITYSCAPES_PALETTE[expected]) == lab.color
            assert cs.TRAIN_ID_TO_ID[expected] == lab.id
    raw = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(cs.id_to_train_id(raw), reference_train_ids(raw))  # AdaptSegNet's table
    np.testing.assert_array_equal(cs.id_to_train_id(np.array([-1, 34, 300, 26])), [255, 255, 255, 13])
    assert len(cs.CITYSCAPES_CLASSES) == 19 and cs.CITYSCAPES_CLASSES[:2] == ("road", "sidewalk")


# --------------------------------------------------------------------------- cityscapes
def test_cityscapes_train_and_val(city_root):
    train = build(seg_cfg("cityscapes", city_root, resize=[32, 16]), "train")
    assert isinstance(train, SegFileDomain) and train.task == "segmentation" and len(train) == 3
    assert train.num_classes == 19 and train.ignore_index == 255
    assert [p.split("leftImg8bit/train/")[1] for p in train.image_paths] == [f"{n}_leftImg8bit.png" for n in CITY_TRAIN]
    images = train.batch_loader(train, np.array([2, 0]))
    assert images.shape == (2, 16, 32, 3) and images.dtype == np.float32
    raw_image = Image.open(train.image_paths[2]).convert("RGB")
    np.testing.assert_allclose(images[0], np.asarray(raw_image.resize((32, 16), Image.BICUBIC)) / 255.0, atol=1e-7)
    labels = train.labels[np.array([2, 0])]
    assert labels.shape == (2, 16, 32) and labels.dtype == np.uint8
    raw_label = Image.open(train.label_paths[2])
    np.testing.assert_array_equal(labels[0], reference_train_ids(np.asarray(raw_label.resize((32, 16), Image.NEAREST))))
    assert (labels == 255).any() and (labels < 19).any()
    np.testing.assert_array_equal(train.load(0), train.batch_loader(train, [0])[0])

    val = build(seg_cfg("cityscapes", city_root, resize=[32, 16]), "test")
    assert len(val) == 2 and "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png" in val.label_paths[1]
    assert val.batch_loader(val, np.arange(2)).shape == (2, 16, 32, 3)
    full = val.labels[np.arange(2)]  # evaluation labels stay at the original resolution
    assert full.shape == (2, 32, 64)
    np.testing.assert_array_equal(full[1], reference_train_ids(np.asarray(Image.open(val.label_paths[1]))))
    sub = val.subset([1])
    assert len(sub) == 1 and sub.image_paths == val.image_paths[1:] and sub.label_paths == val.label_paths[1:]
    default = build(seg_cfg("cityscapes", city_root), "train")
    assert default.size == (1024, 512) and default.label_size == (1024, 512)


def test_cityscapes_image_list_and_unlabelled_train(city_root, tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("bochum/bochum_000000_000313_leftImg8bit.png\n\n")
    dom = build(seg_cfg("cityscapes", city_root, resize=[16, 8], image_list=str(listing)))
    assert len(dom) == 1 and dom.image_paths[0].endswith("bochum/bochum_000000_000313_leftImg8bit.png")
    assert dom.label_paths[0].endswith("gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png")

    root = copy_tree(city_root, tmp_path)
    shutil.rmtree(root / "gtFine" / "train")  # target train images need no labels
    unlabelled = build(seg_cfg("cityscapes", root, resize=[16, 8]))
    assert unlabelled.label_paths is None and len(unlabelled) == 3
    assert (unlabelled.labels[np.arange(3)] == 255).all() and unlabelled.labels[np.arange(3)].shape == (3, 8, 16)
    shutil.rmtree(root / "gtFine" / "val")  # ... but evaluation does
    with pytest.raises(DatasetMissingError) as err:
        build(seg_cfg("cityscapes", root), "test")
    assert "gtFine/val" in one_line(err) and "gtFine_trainvaltest.zip" in str(err.value)


def test_cityscapes_bad_trees(city_root, tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        build(seg_cfg("cityscapes", tmp_path / "nowhere"))
    assert "leftImg8bit/train" in one_line(err) and "cityscapes-dataset.com" in str(err.value)
    with pytest.raises(ValueError) as err:  # published counts checked by default
        build(seg_cfg("cityscapes", city_root, verify_counts=True), "test")
    assert "500" in one_line(err) and "verify_counts" in str(err.value)

    root = copy_tree(city_root, tmp_path)
    missing = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DatasetMissingError) as err:
        build(seg_cfg("cityscapes", root), "test")
    assert str(missing) in one_line(err) and "missing" in str(err.value)

    write_label_ids(missing, 0, (32, 16))  # half the image size
    with pytest.raises(ValueError) as err:
        build(seg_cfg("cityscapes", root, verify_counts=True), "test")
    message = one_line(err)
    assert "lindau_000000_000019_leftImg8bit.png 64x32 vs label 32x16" in message and "verify_counts: false" in message
    accepted = build(seg_cfg("cityscapes", root, resize=[16, 8]), "test")  # verify_counts false: both resized
    assert accepted.labels[np.array([1])].shape == (1, 16, 32)

    corrupt = root / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png"
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(DatasetMissingError) as err:
        build(seg_cfg("cityscapes", root), "test")
    assert str(corrupt) in one_line(err) and "unreadable" in str(err.value)


def test_truncated_png_fails_at_decode_naming_the_file(gta_root, tmp_path):
    root = copy_tree(gta_root, tmp_path)
    image, label = root / "images" / "00002.png", root / "labels" / "00003.png"
    for path in (image, label):  # cut inside the pixel data: the header still reads, the pixels do not
        data = path.read_bytes()
        path.write_bytes(data[:data.index(b"IDAT") + 40])
    dom = build(seg_cfg("gta5", root, resize=[20, 12]))
    with pytest.raises(DatasetMissingError) as err:
        dom.batch_loader(dom, np.array([0, 1]))
    assert str(image) in one_line(err) and "re-extract" in str(err.value)
    with pytest.raises(DatasetMissingError) as err:
        dom.labels[np.array([2])]
    assert str(label) in one_line(err)


# --------------------------------------------------------------------------- gta5
def test_gta5_all_list_and_split_mat(gta_root, tmp_path):
    dom = build(seg_cfg("gta5", gta_root, resize=[20, 12]))
    assert [p.rsplit("/", 1)[1] for p in dom.image_paths] == ["00001.png", "00002.png", "00003.png", "00004.png"]
    assert dom.class_names == cs.CITYSCAPES_CLASSES
    images, labels = dom.batch_loader(dom, np.array([3, 1])), dom.labels[np.array([3, 1])]
    assert images.shape == (2, 12, 20, 3) and labels.shape == (2, 12, 20)
    raw = Image.open(dom.label_paths[3])
    assert raw.mode == "P"  # GTA5 stores label ids as palette indices
    np.testing.assert_array_equal(labels[0], reference_train_ids(np.asarray(raw.resize((20, 12), Image.NEAREST))))
    expected = np.asarray(Image.open(dom.image_paths[1]).resize((20, 12), Image.BICUBIC)) / 255.0
    np.testing.assert_allclose(images[1], expected, atol=1e-7)
    assert build(seg_cfg("gta5", gta_root)).size == (1280, 720)

    listing = tmp_path / "gta5_list.txt"
    listing.write_text("00004.png\n00002.png\n")
    listed = build(seg_cfg("gta5", gta_root, image_list=str(listing)))
    assert [p.rsplit("/", 1)[1] for p in listed.label_paths] == ["00004.png", "00002.png"]
    for subset, names in (("train", ["00001.png", "00003.png"]), ("val", ["00002.png"]), ("test", ["00004.png"])):
        split = build(seg_cfg("gta5", gta_root, domain=subset))
        assert [p.rsplit("/", 1)[1] for p in split.image_paths] == names
    with pytest.raises(ValueError, match="12403"):
        build(seg_cfg("gta5", gta_root, domain="train", verify_counts=True))
    with pytest.raises(ValueError, match="unknown domain"):
        build(seg_cfg("gta5", gta_root, domain="A"))
    with pytest.raises(ValueError, match="either image_list or domain"):
        build(seg_cfg("gta5", gta_root, domain="val", image_list=str(listing)))


def test_gta5_bad_trees(gta_root, tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        build(seg_cfg("gta5", tmp_path / "nowhere"))
    assert "images" in one_line(err) and "download.visinf.tu-darmstadt.de" in str(err.value)
    root = copy_tree(gta_root, tmp_path)
    (root / "split.mat").unlink()
    with pytest.raises(DatasetMissingError) as err:
        build(seg_cfg("gta5", root, domain="val"))
    assert "split.mat" in one_line(err)
    (root / "labels" / "00003.png").unlink()
    (root / "labels" / "00004.png").unlink()
    with pytest.raises(DatasetMissingError) as err:
        build(seg_cfg("gta5", root))
    message = one_line(err)
    assert message.startswith("2 image/label file(s)") and str(root / "labels" / "00003.png") in message
    write_label_ids(root / "labels" / "00003.png", 0, (40, 20))
    write_label_ids(root / "labels" / "00004.png", 0, (40, 24))
    with pytest.raises(ValueError, match="1 image/label pair"):
        build(seg_cfg("gta5", root, verify_counts=True))
    rgb_label = root / "labels" / "00004.png"
    write_rgb(rgb_label, 0, (40, 24))
    dom = build(seg_cfg("gta5", root, resize=[20, 12], image_list=None))
    with pytest.raises(DatasetMissingError) as err:
        dom.labels[np.array([3])]
    assert str(rgb_label) in one_line(err) and "mode L or P" in str(err.value)


# --------------------------------------------------------------------------- in-memory domain, augmentation
def test_seg_array_domain_and_batch_stream():
    rng = np.random.default_rng(0)
    images = rng.random((6, 4, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (6, 4, 5)).astype(np.uint8)
    dom = SegArrayDomain(images, labels, ("a", "b", "c"), [(1, 2, 3)] * 3)
    assert len(dom) == 6 and dom.num_classes == 3 and dom.palette.shape == (3, 3)
    sub = dom.subset([4, 1])
    np.testing.assert_array_equal(sub.labels, labels[[4, 1]])
    stream = BatchStream(dom, 2, seed=0, stream_id=0, transform=lambda x, r: x)
    x, y = stream.batch(1)
    idx = stream.indices(1)
    np.testing.assert_array_equal(x, images[idx].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(y, labels[idx])
    with pytest.raises(ValueError, match="do not match"):
        SegArrayDomain(images, labels[:, :3], ("a",), [(0, 0, 0)])


def test_seg_augment_scale_matches_torch_interpolation():
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    rng = np.random.default_rng(0)
    images = rng.random((2, 8, 12, 3)).astype(np.float32)
    labels = rng.integers(0, 19, (2, 8, 12)).astype(np.uint8)
    x_t = torch.from_numpy(images).permute(0, 3, 1, 2)
    y_t = torch.from_numpy(labels)[:, None].float()

    up_x, up_y = seg_augment(images, labels, np.random.default_rng(1), scale=(2.0, 2.0), crop=(24, 16))
    ref_x = functional.interpolate(x_t, size=(16, 24), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    ref_y = functional.interpolate(y_t, size=(16, 24), mode="nearest-exact")[:, 0].byte()
    np.testing.assert_allclose(up_x, ref_x.numpy(), atol=1e-6)
    np.testing.assert_array_equal(up_y, ref_y.numpy())

    down_x, down_y = seg_augment(images, labels, np.random.default_rng(1), scale=(0.5, 0.5))  # crop = input size
    ref_x = functional.interpolate(x_t, size=(4, 6), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    ref_y = functional.interpolate(y_t, size=(4, 6), mode="nearest-exact")[:, 0].byte()
    assert down_x.shape == (2, 8, 12, 3) and down_y.shape == (2, 8, 12)
    np.testing.assert_allclose(down_x[:, :4, :6], ref_x.numpy(), atol=1e-6)
    np.testing.assert_array_equal(down_y[:, :4, :6], ref_y.numpy())
    assert (down_x[:, 4:] == 0).all() and (down_y[:, 4:] == 255).all() and (down_y[:, :, 6:] == 255).all()


def test_seg_augment_crop_and_flip_move_images_and_labels_together():
    rng = np.random.default_rng(0)
    images = rng.random((16, 8, 12, 3)).astype(np.float32)
    labels = rng.integers(0, 250, (16, 8, 12)).astype(np.uint8)
    x, y = seg_augment(images, labels, np.random.default_rng(5), crop=(6, 4), flip=True)
    again = seg_augment(images, labels, np.random.default_rng(5), crop=(6, 4), flip=True)
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(y, again[1])
    assert x.shape == (16, 4, 6, 3) and y.shape == (16, 4, 6)
    flipped = []
    for i in range(16):
        hits = [(t, c, f) for t in range(5) for c in range(7) for f in (False, True)
                if np.array_equal(x[i], (images[i, t:t + 4, c:c + 6][:, ::-1] if f else images[i, t:t + 4, c:c + 6]))]
        assert len(hits) == 1
        t, c, f = hits[0]
        window = labels[i, t:t + 4, c:c + 6]
        np.testing.assert_array_equal(y[i], window[:, ::-1] if f else window)
        flipped.append(f)
    assert 0 < sum(flipped) < 16
    assert not np.array_equal(seg_augment(images, labels, np.random.default_rng(6), crop=(6, 4))[0], x)
    same_x, same_y = seg_augment(images, labels, np.random.default_rng(5))  # everything off: unchanged
    np.testing.assert_array_equal(same_x, images)
    np.testing.assert_array_equal(same_y, labels)


def test_colorize():
    ids = np.array([[0, 1, 255], [18, 19, 2]], np.uint8)
    rgb = colorize(ids, cs.CITYSCAPES_PALETTE)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    for (r, c), train_id in np.ndenumerate(ids):
        expected = cs.CITYSCAPES_PALETTE[train_id] if train_id < 19 else (0, 0, 0)
        np.testing.assert_array_equal(rgb[r, c], expected)
    np.testing.assert_array_equal(rgb[0, 0], (128, 64, 128))  # road
    np.testing.assert_array_equal(colorize(ids.astype(np.int64) - 1, cs.CITYSCAPES_PALETTE)[0, 0], (0, 0, 0))
