"""Images/s of the training input pipeline against a plain ``mindspore.dataset`` pipeline (issue #12).

    python bench/bench_pipeline.py [--workers 1 2] [--per-class 4] [--batches 8] [--root /tmp/bench_office31]

Generates (once) an Office-31-layout JPEG tree of photo-like images (crops of scikit-learn's sample
photos, resized): ``amazon`` at 300 x 300 like Office-31's Amazon, ``webcam`` at 640 x 480 like its
Webcam. For each domain and worker count it times, in one process and alternating, best of 3:

* ``repo``: ``BatchStream.batches`` (the trainer's producer reads it) of the ``imagenet`` train transform (decode, resize to 256,
  RandomResizedCrop 224 + flip drawn on the host, normalise, NCHW float32), batch 32, as built
  by ``engine.data.build_data`` for an Office-31 config with ``data.num_workers=W``;
* ``mindspore.dataset``: ImageFolderDataset -> Decode -> Resize 256 -> RandomResizedCrop 224 ->
  RandomHorizontalFlip -> Normalize -> HWC2CHW, batch 32, ``num_parallel_workers=W``.

Both read the same files; the first batch of each run (start-up) is not timed.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engine  # noqa: E402,F401  (CPU runtime settings before MindSpore loads)

import numpy as np  # noqa: E402

DOMAINS = {"amazon": (300, 300), "webcam": (640, 480)}  # (width, height)


def make_tree(root, per_class):
    """``<root>/<domain>/images/<class>/*.jpg``; photo crops, so JPEG sizes and decode costs are realistic."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from datasets.office import OFFICE31

    photos = load_sample_images().images  # two 427 x 640 photos
    rng = np.random.default_rng(0)
    for domain, (w, h) in DOMAINS.items():
        for cls in OFFICE31.classes:
            folder = os.path.join(root, domain, "images", cls)
            os.makedirs(folder, exist_ok=True)
            for k in range(per_class):
                path = os.path.join(folder, f"frame_{k:04d}.jpg")
                if os.path.isfile(path):
                    continue
                photo = photos[rng.integers(len(photos))]
                side = int(rng.integers(200, 420))
                top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
                crop = Image.fromarray(photo[top:top + side, left:left + side])
                crop.resize((w, h), Image.BILINEAR).save(path, quality=90)
    return root


def repo_stream(root, domain, workers):
    from engine.config import load_config
    from engine.data import build_data

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(here, "configs/office31/dann_a2w.yaml"),
                      [f"data.source.root={root}", f"data.target.root={root}", f"data.source.domain={domain}",
                       f"data.target.domain={domain}", "data.source.verify_counts=false",
                       "data.target.verify_counts=false", f"data.num_workers={workers}", "data.batch_size=32"])
    return build_data(cfg, seed=0).source


def time_repo(stream, batches):
    """The training path: ``BatchStream.batches`` (what the trainer's producer thread reads)."""
    feed = stream.batches(0, batches + 1)
    next(feed)
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(feed)
    elapsed = time.perf_counter() - start
    feed.close()
    assert x.shape == (32, 3, 224, 224) and x.dtype == np.float32
    return batches * 32 / elapsed


def time_mindspore(root, domain, workers, batches):
    import mindspore.dataset as ds
    import mindspore.dataset.vision as vision

    mean = [v * 255 for v in (0.485, 0.456, 0.406)]
    std = [v * 255 for v in (0.229, 0.224, 0.225)]
    data = ds.ImageFolderDataset(os.path.join(root, domain, "images"), num_parallel_workers=workers, shuffle=True)
    data = data.map([vision.Decode(), vision.Resize(256), vision.RandomResizedCrop(224),
                     vision.RandomHorizontalFlip(), vision.Normalize(mean, std), vision.HWC2CHW()],
                    input_columns="image", num_parallel_workers=workers)
    data = data.batch(32, drop_remainder=True).repeat()
    iterator = data.create_tuple_iterator(output_numpy=True, num_epochs=1)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(iterator)
    elapsed = time.perf_counter() - start
    assert x.shape == (32, 3, 224, 224)
    del iterator
    return batches * 32 / elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/bench_office31")
    parser.add_argument("--per-class", type=int, default=4, help="images per class and domain (31 classes)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=8, help="timed batches of 32 per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many alternating runs")
    args = parser.parse_args(argv)
    from engine.runtime import init_mindspore

    init_mindspore("CPU", "graph", 0)
    make_tree(args.root, args.per_class)
    print(f"tree {args.root}: {args.per_class * 31} images per domain; batch 32, imagenet transform at 224 "
          f"(resize 256); img/s, best of {args.repeats}")
    print("| domain (image size) | workers | repo pipeline | mindspore.dataset | ratio |")
    print("|---|---|---|---|---|")
    for domain, (w, h) in DOMAINS.items():
        for workers in args.workers:
            stream = repo_stream(args.root, domain, workers)
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(time_repo(stream, args.batches))
                theirs.append(time_mindspore(args.root, domain, workers, args.batches))
            print(f"| {domain} ({w}x{h}) | {workers} | {max(ours):.0f} | {max(theirs):.0f} | "
                  f"{max(ours) / max(theirs):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
