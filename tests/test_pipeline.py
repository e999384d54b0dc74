"""Input pipeline (issue #12): the background producer, the C++ decode/augment path, the up-front
image check, and NaN detection with outputs read back only every ``log_every`` steps."""
import engine  # noqa: F401  (before MindSpore)

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from datasets.base import ArrayDomain, BatchStream, DatasetMissingError
from datasets.office import FileDomain, check_images, decode_image, load_batch
from datasets.transforms import CAFFE_BGR_MEAN, CAFFE_BGR_STD, IMAGENET_MEAN, IMAGENET_STD, build_transform
from engine.prefetch import PrefetchClosed, Prefetcher
from tests.conftest import ROOT, quick_opts


def photo_jpegs(folder, sizes):
    """Crops of scikit-learn's sample photos (real image statistics) saved as JPEGs of the given (w, h)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = load_sample_images().images
    paths = []
    for k, (w, h) in enumerate(sizes):
        photo = photos[k % len(photos)]
        top, left = (37 * k) % (photo.shape[0] - h), (53 * k) % (photo.shape[1] - w)
        path = folder / f"img_{k:03d}.jpg"
        Image.fromarray(photo[top:top + h, left:left + w]).save(path, quality=92)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_jpegs(tmp_path_factory.mktemp("photos"), [(64, 48), (48, 64), (50, 50), (80, 60)] * 3)


# --------------------------------------------------------------------------- producer
def test_prefetched_batches_equal_serial_and_resumed():
    images = np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)
    domain = ArrayDomain(images, np.arange(40) % 4)
    transform = build_transform("flip_crop", 6, 1, (0.5,), (0.25,))
    stream = BatchStream(domain, 4, seed=3, stream_id=0, transform=transform, num_shards=2, shard_id=1)
    serial = [stream.batch(it) for it in range(25)]  # crosses two epochs (5 batches per epoch per shard)
    for depth, first in ((2, 0), (3, 0), (2, 11), (0, 7)):
        fresh = BatchStream(domain, 4, seed=3, stream_id=0, transform=transform, num_shards=2, shard_id=1)
        with Prefetcher(fresh.batch, first, 25, depth) as batches:
            for it in range(first, 25):
                x, y = batches.get()
                np.testing.assert_array_equal(x, serial[it][0], err_msg=f"depth {depth} from {first}, it {it}")
                np.testing.assert_array_equal(y, serial[it][1])
            with pytest.raises(PrefetchClosed):
                batches.get()
    other_shard = stream.with_shard(0).batch(3)[0]
    assert not np.array_equal(other_shard, serial[3][0])  # the shards really differ


def test_producer_error_is_raised_in_order_and_thread_stops():
    made = []

    def make(it):
        if it == 3:
            raise DatasetMissingError("cannot decode image x.jpg")
        made.append(it)
        return it

    fetcher = Prefetcher(make, 0, 10, depth=2)
    assert [fetcher.get() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(DatasetMissingError, match="x.jpg"):
        fetcher.get()
    fetcher._thread.join(2)
    assert not fetcher.alive and made == [0, 1, 2]


def test_keyboard_interrupt_and_early_close_leave_no_thread():
    def interrupted(it):
        if it == 1:
            raise KeyboardInterrupt
        return it

    fetcher = Prefetcher(interrupted, 0, 5, depth=2)
    assert fetcher.get() == 0
    with pytest.raises(KeyboardInterrupt):
        fetcher.get()
    assert fetcher.close() and not fetcher.alive

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="step failed"):
        with Prefetcher(lambda it: time.sleep(0.01) or it, 0, 10_000, depth=2) as fetcher:
            fetcher.get()
            time.sleep(0.1)  # the producer fills the queue and blocks on put
            raise RuntimeError("step failed")
    assert not fetcher.alive and threading.active_count() == before


# --------------------------------------------------------------------------- C++ decode / augment
def test_cpp_pipeline_matches_numpy_transform(photos):
    """Same draws from the same rng: the C++ crops equal the numpy transform's up to uint8 rounding."""
    labels = np.arange(len(photos)) % 3
    at_40 = FileDomain(photos, labels, ("a", "b", "c"), size=40, num_workers=2)
    at_32 = FileDomain(photos, labels, ("a", "b", "c"), size=32, num_workers=2)  # flip_translate: decoded at 32
    assert at_40.train_pipeline("flip_translate", 32, 3, IMAGENET_MEAN, IMAGENET_STD) is None  # numpy path there
    for augment, domain in (("imagenet", at_40), ("flip_crop", at_40), ("none", at_40), ("flip_translate", at_32)):
        pipeline = domain.train_pipeline(augment, 32, 3, IMAGENET_MEAN, IMAGENET_STD)
        reference = build_transform(augment, 32, 3, IMAGENET_MEAN, IMAGENET_STD)
        idx = np.arange(len(photos))
        new = pipeline(domain, idx, np.random.default_rng(5))
        old = np.transpose(reference(load_batch(domain, idx), np.random.default_rng(5)), (0, 3, 1, 2))
        diff = np.abs(new - old) * np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1) * 255  # in 0-255 units
        assert new.shape == old.shape == (len(photos), 3, 32, 32) and new.dtype == np.float32
        assert diff.mean() < 0.6 and diff.max() <= 3.0, (augment, diff.mean(), diff.max())
        if augment != "none":  # a different seed draws different crops: far apart
            other = pipeline(domain, idx, np.random.default_rng(6))
            assert (np.abs(other - new) * 58).mean() > 10


@pytest.mark.parametrize("augment,bgr", [("imagenet", False), ("flip_crop", True), ("flip_translate", False)])
def test_engine_stream_equals_random_access_batches(photos, tmp_path, monkeypatch, augment, bgr):
    """``BatchStream.batches`` through mindspore.dataset's threads == ``batch(it)``, resumed or not
    (RandomResizedCrop + flip with ImageNet statistics; random crop + flip with Caffe's BGR mean)."""
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    domain = FileDomain(photos, np.arange(len(photos)) % 3, ("a", "b", "c"), size=32 if augment == "flip_translate"
                        else 40, num_workers=2, pixel_sizes=check_images(photos))
    assert domain.streamable
    mean, std = (CAFFE_BGR_MEAN, CAFFE_BGR_STD) if bgr else (IMAGENET_MEAN, IMAGENET_STD)
    pipeline = domain.train_pipeline(augment, 32, 3, mean, std, bgr)
    stream = BatchStream(domain, 4, seed=1, stream_id=0, transform=None, pipeline=pipeline)
    # the engine prepares these batches ahead itself: the trainer starts no Python producer for them
    assert stream.engine_fed and not BatchStream(domain, 4, 1, 0, None, pipeline=None).engine_fed
    for first in (0, 5):
        feed = stream.batches(first, 9)  # 3 batches per epoch: crosses epochs
        for it in range(first, 9):
            x, y = next(feed)
            x_ref, y_ref = stream.batch(it)
            # same pixels: C++ Normalize only rounds the float32 differently (far below one grey level)
            grey = 1.0 / (255.0 * std[0])
            np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-3 * grey, err_msg=f"iteration {it}")
            np.testing.assert_array_equal(y, y_ref)
        feed.close()


def test_decode_close_to_pillow(photos):
    """The C++ decode + resize (bilinear to 2x, then a 2x2 box filter) vs the previous Pillow bilinear
    (antialiased) resize: same image,
    interpolation differences only (documented in the README)."""
    for path in photos[:4]:
        with Image.open(path) as img:
            pillow = np.asarray(img.convert("RGB").resize((40, 40), Image.BILINEAR), np.float32) / 255
        diff = np.abs(decode_image(path, 40) - pillow)
        assert diff.mean() < 0.02 and np.percentile(diff, 99) < 0.12, (diff.mean(), np.percentile(diff, 99))


def test_check_images_lists_all_bad_files_and_caches(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    good = photos[:4]
    bad = []
    for k in range(23):
        path = tmp_path / f"bad_{k:02d}.jpg"
        path.write_bytes(open(good[0], "rb").read()[: 200 + k] if k % 2 else b"not a jpeg")
        bad.append(str(path))
    with pytest.raises(DatasetMissingError) as err:
        check_images(good + bad, workers=2, source="list.txt")
    message = str(err.value)
    assert "\n" not in message and message.startswith("23 of 27 image file(s) of list.txt cannot be decoded: ")
    assert sum(p in message for p in bad) == 20 and "and 3 more" in message
    assert all(p not in message for p in good)

    import datasets.office as office

    decoded = []
    real_check = office._checked_size
    monkeypatch.setattr(office, "_checked_size", lambda path: decoded.append(path) or real_check(path))
    sizes = check_images(good)  # all four were recorded as good by the failed check: none decoded again
    assert decoded == [] and sizes == [(64, 48), (48, 64), (50, 50), (80, 60)]
    os.utime(good[1], ns=(1, 1))  # a changed mtime makes the file suspect again
    assert check_images(good) == sizes and decoded == [good[1]]
    assert os.path.isfile(tmp_path / "cache" / "image_check.json")


# --------------------------------------------------------------------------- deferred read-back
def test_nan_at_step_k_is_caught_and_last_good_checkpoint_kept(tmp_path, monkeypatch):
    """Outputs are read back every 4 iterations: a NaN loss at iteration 6 stops the run at the read-back
    of iteration 8, names iteration 6, and the checkpoint of iteration 4 stays (none is written after)."""
    import mindspore as ms

    from engine import checkpoint, trainer as trainer_mod
    from engine.config import load_config

    real_make_step = trainer_mod.make_step
    calls = []

    def make_step(*args, **kwargs):
        step = real_make_step(*args, **kwargs)

        def poisoned(batch, t):
            out = step(batch, t)
            calls.append(len(calls))
            if len(calls) == 7:  # iteration 6
                out = (ms.Tensor(np.float32("nan")),) + tuple(out[1:])
            return out

        return poisoned

    monkeypatch.setattr(trainer_mod, "make_step", make_step)
    run_dir = str(tmp_path / "run")
    cfg = load_config(os.path.join(ROOT, "configs/digits/dann_optdigits.yaml"),
                      quick_opts(run_dir, iters=12, every=4) + ["train.eval_every=100", "data.batch_size=16"])
    with pytest.raises(trainer_mod.TrainingDiverged, match=r"loss became NaN/Inf at train iteration 6; the last "
                                                           r"good checkpoint .* \(iteration 4\) is kept"):
        trainer_mod.Trainer(cfg, run_dir, show_progress=False).fit()
    assert len(calls) == 8  # detected at the read-back after iteration 7 (done = 8)
    assert checkpoint.read(os.path.join(run_dir, "last.ckpt"))[1]["iter"] == 4
    assert not [t for t in threading.enumerate() if t.name.startswith("batches-")]  # producer stopped

