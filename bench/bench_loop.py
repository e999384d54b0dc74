"""Wall time per iteration of the real training loop against the jitted step alone (issue #12).

    python bench/bench_loop.py lenet          # LeNet DANN on optdigits (embedded, batch 64)
    python bench/bench_loop.py resnet18       # ResNet-18 DANN at 112 x 112 on the bench_pipeline JPEG tree
    python bench/bench_loop.py lenet --iters 60 --prefetch 0   # the loop without the producer thread

``loop``: ``Trainer.fit`` with ``train.log_every = iters / 6`` and evaluation/checkpoints only at
the end; the number is the fastest ``sec_per_iter`` of the logged windows after the first (which
holds the compilation), so it covers batch making (or waiting for the producer), the step, the
tqdm-free loop and the read-back every ``log_every`` steps.
``step``: the same config's jitted step (built as the trainer builds it) on 8 batches made
beforehand, cycled, timed in the same windows (read back at the end of each); the fastest window.
The fastest window, not the median, because a shared machine's load only ever adds time; for the
same reason the two are timed ``--repeats`` times, alternating, and the fastest of each is kept.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engine  # noqa: E402,F401  (CPU runtime settings before MindSpore loads)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "lenet": ("configs/digits/dann_optdigits.yaml", []),
    "resnet18": ("configs/office31/dann_a2w.yaml",
                 ["model.backbone=resnet18", "model.pretrained=null", "data.image_size=112", "data.resize_size=128",
                  "data.source.domain=amazon", "data.target.domain=webcam", "data.source.verify_counts=false",
                  "data.target.verify_counts=false"]),
}


def config(case, iters, out_dir, extra):
    from engine.config import load_config

    path, opts = CASES[case]
    every = max(1, iters // 6)
    return load_config(os.path.join(HERE, path), opts + [
        f"train.iters={iters}", f"train.log_every={every}", f"train.eval_every={iters}",
        f"train.ckpt_every={iters}", f"train.output_dir={out_dir}"] + extra)


def time_loop(cfg):
    from engine.trainer import Trainer

    Trainer(cfg, cfg.train.output_dir, show_progress=False).fit()
    with open(os.path.join(cfg.train.output_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        windows = [json.loads(line)["sec_per_iter"] for line in handle][1:]
    return min(windows)


def time_step(cfg, iters):
    import mindspore as ms
    from mindspore import Tensor

    from engine.data import build_data
    from engine.trainer import Trainer, build_method, build_phase_optimizers, make_step

    method = build_method(cfg)
    data = build_data(cfg, cfg.train.seed, 1, 0, method.strong_views)
    trainer = Trainer(cfg, cfg.train.output_dir, show_progress=False)
    phase = method.phases()[0]
    optimizers = build_phase_optimizers(cfg.optim, method, phase)
    method.set_train(True)
    method.start_phase(phase)
    step = make_step(phase, method.loss_cells(phase), optimizers)
    batches = [trainer.make_batch(method, data, it) for it in range(8)]
    progress = [Tensor(it / phase.iters, ms.float32) for it in range(iters)]
    step(batches[0], progress[0])[0].asnumpy()  # compile
    window, times = max(1, iters // 6), []
    for first in range(0, iters - window + 1, window):
        start = time.perf_counter()
        for it in range(first, first + window):
            out = step(batches[it % len(batches)], progress[it])
        out[0].asnumpy()
        times.append((time.perf_counter() - start) / window)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--iters", type=int, default=None, help="loop iterations (default: lenet 180, resnet18 18)")
    parser.add_argument("--prefetch", type=int, default=2, help="data.prefetch of the loop run")
    parser.add_argument("--root", default="/tmp/bench_office31", help="JPEG tree (made by bench_pipeline.py)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating loop/step timings; fastest of each")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides of both runs")
    args = parser.parse_args(argv)
    from engine.runtime import init_mindspore

    init_mindspore("CPU", "graph", 0)
    iters = args.iters or (180 if args.case == "lenet" else 18)
    extra = [f"data.prefetch={args.prefetch}"] + args.opt
    if args.case == "resnet18":
        from bench.bench_pipeline import make_tree

        make_tree(args.root, 4)
        extra += [f"data.source.root={args.root}", f"data.target.root={args.root}"]
    loops, steps = [], []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            loops.append(time_loop(config(args.case, iters, os.path.join(tmp, "loop"), extra)))
            steps.append(time_step(config(args.case, iters, os.path.join(tmp, "step"), extra), iters))
    loop, step = min(loops), min(steps)
    print(f"{args.case}: loop {1e3 * loop:.1f} ms/iter, step alone {1e3 * step:.1f} ms/iter, "
          f"loop adds {100 * (loop / step - 1):+.1f}% (data.prefetch={args.prefetch})")


if __name__ == "__main__":
    main()
