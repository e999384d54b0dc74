"""Export a trained model to a standalone MindIR file (MindSpore Lite, Ascend inference, ``mindspore.load``).

    python export.py --config runs/<run>/config.yaml --ckpt runs/<run>/last.ckpt                # plain model
    python export.py --config runs/<run>/config.yaml --ckpt runs/<run>/last.ckpt --width 0.25   # slimmable: one width

The model is built as eval.py builds it (the config's method and model, the checkpoint's weights),
in inference mode. The exported graph maps a preprocessed image batch (normalised as the config's
evaluation transform does) of static shape ``batch x channels x image_size x image_size``
(``--batch``, default 1; the sizes from the config unless ``--image-size``) to the logits
(eval.py's predictions are their argmax). For a slimmable backbone (SlimDA, ``models/slimmable.py``)
it writes the plain narrow sub-network of ``--width`` (default: the full width), built from the
sliced weights and that width's BatchNorm, with the classifier reading only the width's features:
the same logits as the slimmable model at that width, at that width's cost. A model that is not a
Classifier over a slimmable backbone can provide its own ``subnet(width) -> Cell``.
``--out`` defaults to ``<config name>[_w<width>].mindir`` beside the checkpoint.
"""
import argparse
import os
import sys

from engine.cli import init_device_or_exit, load_config_or_exit
from engine.runtime import DEVICES

FORMATS = ("MINDIR",)


def parse_width(text):
    try:
        width = float(text)
    except ValueError:
        width = float("nan")
    if not 0.0 < width <= 1.0:
        sys.exit(f"error: --width must be a number in (0, 1] such as 0.5, got {text!r}")
    return width


def deployable(model, width):
    """The inference Cell to export: ``x -> logits`` (a width's sub-network for slimmable models)."""
    from mindspore import nn

    from models.slimmable import SlimmableBackbone, classifier_subnet

    class FirstOutput(nn.Cell):
        """A model returning ``(logits, ...)`` reduced to its logits."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def construct(self, x):
            return self.net(x)[0]

    if hasattr(model, "subnet"):
        net = model.subnet(1.0 if width is None else width)
    elif isinstance(getattr(model, "backbone", None), SlimmableBackbone):
        net = classifier_subnet(model, 1.0 if width is None else width)
    elif width is not None:
        raise ValueError(f"--width applies to slimmable backbones (slim_*); this model's backbone is "
                         f"{type(getattr(model, 'backbone', model)).__name__}: drop --width to export the whole model")
    else:
        net = FirstOutput(model)
    net.set_train(False)
    return net


def default_out(cfg, ckpt, width):
    suffix = "" if width is None else f"_w{width:g}"
    return os.path.join(os.path.dirname(os.path.abspath(ckpt)), f"{cfg.name}{suffix}.mindir")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's saved config.yaml (or any config)")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--width", default=None, help="slimmable models: the width to export (default 1.0)")
    parser.add_argument("--format", default="MINDIR", help="export format (MINDIR)")
    parser.add_argument("--out", default=None, help="output file (default: <config name>[_w<width>].mindir beside "
                                                    "the checkpoint)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the exported input (default 1)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: data.image_size)")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    args = parser.parse_args(argv)
    if args.format.upper() not in FORMATS:
        sys.exit(f"error: --format {args.format} is not supported; use one of {', '.join(FORMATS)}")
    width = None if args.width is None else parse_width(args.width)
    if args.batch < 1 or (args.image_size is not None and args.image_size < 1):
        sys.exit("error: --batch and --image-size must be positive integers")
    if args.out is not None and not args.out.endswith(".mindir"):
        sys.exit(f"error: --out {args.out} must end with .mindir")
    cfg = load_config_or_exit(args.config, args.opt, args.device)
    init_device_or_exit(args.device, cfg.train.seed)
    import mindspore as ms
    import numpy as np

    from engine import checkpoint
    from engine.trainer import build_method

    out = args.out or default_out(cfg, args.ckpt, width)
    try:
        method = build_method(cfg)
        checkpoint.load(args.ckpt, method)
        net = deployable(method.model, width)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        sys.exit(f"error: {err.args[0] if len(err.args) == 1 else err}")
    side = args.image_size or cfg.data.image_size
    example = ms.Tensor(np.zeros((args.batch, cfg.data.channels, side, side), np.float32))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    ms.export(net, example, file_name=out, file_format="MINDIR")
    print(f"wrote {out}: input {tuple(example.shape)} float32 -> logits"
          + (f", width {width:g}" if width is not None else ""))
    return out


if __name__ == "__main__":
    main()
