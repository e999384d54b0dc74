"""Time the repo's jitted training step of several configs on the same data (overhead of regularizers).

    python bench/bench_step.py configs/digits/dann_optdigits.yaml configs/digits/dann_ocr_optdigits.yaml ...

Each config's step is built exactly as train.py builds it (method, optimizers, make_step) and fed
real batches from its data streams, or with ``--synthetic`` random batches of the config's shapes
(for tasks whose data is not on disk); prints median ms/step, the ratio to the first config and
the implied time of the timed phase's iterations (evaluation not included). ``--phase NAME`` times
that phase's step instead of the method's last one (``--phase translation`` for CyCADA's CycleGAN step).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engine  # noqa: E402,F401  (CPU runtime settings before MindSpore loads)


def synthetic_batches(cfg, method, count=8):
    """Random batches with the shapes and keys the config's step expects (label maps for segmenters)."""
    import numpy as np
    from mindspore import Tensor, mutable

    from engine.registry import SEGMENTERS

    d, rng = cfg.data, np.random.default_rng(0)
    dense = cfg.model.backbone in SEGMENTERS

    def image_shape(domain):  # (C, H, W); segmentation domains are resized to [w, h]
        w, h = domain.resize if dense and domain.resize else (d.image_size, d.image_size)
        return (d.channels, h, w)

    shape_s, shape_t = image_shape(d.source), image_shape(d.target)
    label_shape = (d.batch_size,) + shape_s[1:] if dense else (d.batch_size,)
    batches = []
    for _ in range(count):
        batch = {"x_s": rng.normal(size=(d.batch_size,) + shape_s),
                 "y_s": rng.integers(0, cfg.model.num_classes, label_shape),
                 "x_t": rng.normal(size=(d.batch_size,) + shape_t)}
        if method.strong_views:
            views = (method.strong_views * d.batch_size,) + shape_s
            batch["x_s_strong"], batch["x_t_strong"] = rng.normal(size=views), rng.normal(size=views)
        batch = {k: v.astype(np.int32 if k == "y_s" else np.float32) for k, v in batch.items()}
        batch.update(method.host_random(rng, d.batch_size))
        batches.append(mutable({k: Tensor(v) for k, v in batch.items()}))
    return batches


def pick_phase(method, name=None):
    """The method's phase called ``name`` (default: its last phase, the adaptation one)."""
    phases = method.phases()
    if name is None:
        return phases[-1]
    by_name = {phase.name: phase for phase in phases}
    if name not in by_name:
        raise SystemExit(f"--phase {name!r}: {type(method).__name__} has phases {', '.join(by_name)}")
    return by_name[name]


def step_time(path, steps, warmup, synthetic=False, overrides=(), phase_name=None):
    import mindspore as ms
    from mindspore import Tensor

    from engine.config import load_config
    from engine.data import build_data
    from engine.trainer import Trainer, build_method, build_phase_optimizers, make_step

    cfg = load_config(path, overrides)
    method = build_method(cfg)
    method.set_train(True)
    phase = pick_phase(method, phase_name)
    iters = phase.iters
    step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(cfg.optim, method, phase))
    if synthetic:
        batches = synthetic_batches(cfg, method)
    else:
        data = build_data(cfg, 0, strong_views=method.strong_views)
        trainer = Trainer(cfg, "unused")
        batches = [trainer.make_batch(method, data, it) for it in range(8)]
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = step(batches[i % len(batches)], Tensor(0.5, ms.float32))
        out[0].asnumpy()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), iters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--synthetic", action="store_true", help="random batches of the config's shapes")
    parser.add_argument("--phase", default=None,
                        help="time this phase's step (default: the method's last phase), e.g. translation for cycada")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every config")
    args = parser.parse_args()
    from engine.runtime import init_mindspore

    device = init_mindspore("auto", "graph", 0)
    import mindspore as ms

    print(f"median ms/step over {args.steps} steps, MindSpore {ms.__version__} graph mode on {device}")
    base = None
    for path in args.configs:
        ms_step, iters = step_time(path, args.steps, args.warmup, args.synthetic, args.opt, args.phase)
        base = base or ms_step
        print(f"  {os.path.basename(path):32s} {ms_step:8.1f} ms   x{ms_step / base:.2f}   "
              f"{iters} iterations ~ {ms_step * iters / 60000:.1f} min")


if __name__ == "__main__":
    main()
