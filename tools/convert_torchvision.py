"""Convert torchvision ResNet weights (.pth or .safetensors) to a MindSpore backbone checkpoint.

    python tools/convert_torchvision.py resnet50-0676ba61.pth resnet50.ckpt [--arch resnet50]

The .pth is read with ``torch.load(..., weights_only=True)`` (tensors only, no arbitrary
pickle). Names stay torchvision's; BatchNorm fields become MindSpore's (weight->gamma,
bias->beta, running_mean->moving_mean, running_var->moving_variance) and
``num_batches_tracked`` is dropped. ``fc.weight``/``fc.bias`` are kept (ignored when loading a
backbone). Every backbone parameter of ``--arch`` must be present with the right shape.
The result loads with ``engine.checkpoint.load_backbone_weights`` (``model.pretrained``).

DeepLab-v2 backbones (``models/deeplab.py``, segmenter ``deeplabv2``), ``--arch deeplabv2_resnet101``:

(a) the DeepLab ImageNet+COCO init AdaptSegNet trains from (style "caffe", the default)::

        wget http://vllab.ucmerced.edu/ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth
        python tools/convert_torchvision.py DeepLab_resnet_pretrained_init-f81d91e8.pth \
            deeplabv2_init.ckpt --arch deeplabv2_resnet101

    Its keys carry a ``Scale.`` prefix (``Scale.conv1.weight``, ``Scale.layer1.0.conv1.weight``)
    that is stripped; ``Scale.layer5.*`` is its COCO classifier, dropped as AdaptSegNet drops it
    for 19 classes. Use the result with ``style: caffe``.

(b) torchvision's ResNet-101 ImageNet weights (stride on the 3x3 conv: use ``style: pytorch``)::

        wget https://download.pytorch.org/models/resnet101-63fe2227.pth
        python tools/convert_torchvision.py resnet101-63fe2227.pth deeplabv2_tv.ckpt --arch deeplabv2_resnet101

    ``fc.*`` is dropped. Both backbones have identical names and shapes, so nothing here can tell
    (a) from (b): the model's ``style`` must match the weights.

Classifier weights (``layer5``/``layer6`` of a trained AdaptSegNet model, ``fc``) are always
dropped for DeepLab; load the result with ``load_backbone_weights(model.backbone, path)``.

Wide ResNets (``models/wideresnet.py``), ``--arch wrn28_10`` / ``wrn40_2``: a whole trained CIFAR
classifier (e.g. RobustBench's ``Standard.pt``, the source model of Tent's CIFAR-10-C setting) becomes
a model checkpoint (``model.backbone.*`` + ``model.head.fc.*``, number of classes from ``fc``) that
``tools/tta.py --ckpt``, ``tools/robustness.py`` and ``eval.py`` load with the matching config::

    python tools/convert_torchvision.py Standard.pt wrn28_10_standard.ckpt --arch wrn28_10
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402,F401  (CPU runtime settings before MindSpore loads)

BN_RENAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
WRAPPER_KEYS = ("state_dict", "model")
# DataParallel; the DeepLab-v2 init file (its MS_Deeplab wraps the ResNet as ``Scale``).
STRIPPED_PREFIXES = ("module.", "Scale.")
DEEPLAB_ARCHS = {"deeplabv2_resnet101": (3, 4, 23, 3)}
# Classifiers a DeepLab backbone checkpoint leaves out: the init file's COCO head (layer5),
# AdaptSegNet's heads (layer5 on layer3, layer6 on layer4), torchvision's ImageNet fc.
DEEPLAB_DROPPED = ("layer5.", "layer6.", "fc.")
WRN_ARCHS = ("wrn28_10", "wrn40_2")


class ConversionError(ValueError):
    pass


def expected_shapes(arch, layers=None):
    """``{name: shape}`` of the MindSpore backbone ``arch`` (optionally with custom stage depths) and
    its pooled feature size (None for DeepLab backbones, which have no ``fc``)."""
    from models.resnet import ARCHS, ResNet

    if arch in DEEPLAB_ARCHS:
        from models.deeplab import DilatedResNet

        net = DilatedResNet(layers or DEEPLAB_ARCHS[arch])
        return {name: tuple(p.shape) for name, p in net.parameters_and_names()}, None
    if arch not in ARCHS:
        raise ConversionError(f"unknown --arch {arch!r}; valid: {', '.join([*ARCHS, *DEEPLAB_ARCHS, *WRN_ARCHS])}")
    block, default_layers = ARCHS[arch]
    net = ResNet(block, layers or default_layers)
    return {name: tuple(p.shape) for name, p in net.parameters_and_names()}, net.out_features


def strip_prefixes(name):
    for prefix in STRIPPED_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def rename(name, batch_norms):
    """torchvision name -> MindSpore name; ``None`` for entries that are dropped."""
    module, _, field = name.rpartition(".")
    if field == "num_batches_tracked":
        return None
    if module in batch_norms:
        return f"{module}.{BN_RENAMES[field]}"
    return name


def convert_wrn(state_dict, arch):
    """A PyTorch WRN classifier -> ``{model.* name: float32 array}`` of ``Classifier(backbone=arch)``, every name and
    shape checked against the MindSpore model."""
    from engine.config import ModelCfg
    from models import create_model
    from models.wideresnet import torch_to_mindspore_names

    state_dict = {strip_prefixes(k): np.asarray(v, np.float32) for k, v in state_dict.items()}
    if "fc.weight" not in state_dict:
        raise ConversionError(f"state dict has no fc.weight: not a whole {arch} classifier")
    model = create_model(ModelCfg(backbone=arch, num_classes=int(state_dict["fc.weight"].shape[0])), 3, 32)
    shapes = {f"model.{name}": tuple(p.shape) for name, p in model.parameters_and_names()}
    converted = torch_to_mindspore_names(state_dict, "model.")
    missing = [n for n in shapes if n not in converted]
    wrong = [f"{n} {converted[n].shape} vs {shapes[n]}" for n in shapes if n in converted
             and converted[n].shape != shapes[n]]
    extra = sorted(set(converted) - set(shapes))
    if missing or wrong or extra:
        parts = ([f"missing {len(missing)}: {', '.join(missing[:4])}"] if missing else []) + \
                ([f"wrong shape {len(wrong)}: {'; '.join(wrong[:3])}"] if wrong else []) + \
                ([f"unexpected {len(extra)}: {', '.join(extra[:4])}"] if extra else [])
        raise ConversionError(f"state dict does not fit {arch} ({' | '.join(parts)}); "
                              "pass the --arch the weights were trained for")
    return converted


def convert_state_dict(state_dict, arch, layers=None):
    """``{torchvision name: numpy array}`` -> ``{MindSpore name: float32 array}`` checked against ``arch``."""
    if arch in WRN_ARCHS:
        return convert_wrn(state_dict, arch)
    state_dict = {strip_prefixes(k): v for k, v in state_dict.items()}
    shapes, out_features = expected_shapes(arch, layers)
    if out_features is None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(DEEPLAB_DROPPED)}
    batch_norms = {k.rpartition(".")[0] for k in (*shapes, *state_dict) if k.endswith((".gamma", ".running_var"))}
    converted = {}
    for name, value in state_dict.items():
        new = rename(name, batch_norms)
        if new is not None:
            converted[new] = np.asarray(value, dtype=np.float32)
    missing = [n for n in shapes if n not in converted]
    wrong = [f"{n} {converted[n].shape} vs {shapes[n]}"
             for n in shapes if n in converted and converted[n].shape != shapes[n]]
    if out_features is not None and "fc.weight" in converted and converted["fc.weight"].shape[1:] != (out_features,):
        wrong.append(f"fc.weight {converted['fc.weight'].shape} vs (*, {out_features})")
    if missing or wrong:
        parts = ([f"missing {len(missing)}: {', '.join(missing[:4])}"] if missing else []) + \
                ([f"wrong shape {len(wrong)}: {'; '.join(wrong[:3])}"] if wrong else [])
        raise ConversionError(f"state dict does not fit {arch} ({' | '.join(parts)}); "
                              "pass the --arch the weights were trained for")
    extra = sorted(set(converted) - set(shapes) - {"fc.weight", "fc.bias"})
    if extra:
        raise ConversionError(f"state dict has {len(extra)} parameter(s) {arch} lacks, e.g. {', '.join(extra[:4])}; "
                              "pass the --arch the weights were trained for")
    return converted


def read_state_dict(path):
    """Tensors of a torchvision .pth (``weights_only=True``) or .safetensors file as numpy arrays."""
    if not os.path.isfile(path):
        raise ConversionError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ConversionError(f"{path}: reading .safetensors needs `pip install safetensors`") from None
        return load_file(path)
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError/RuntimeError for non-tensor or corrupt files
        raise ConversionError(f"cannot read {path} as a tensors-only state dict: {str(err).splitlines()[0]}") from None
    for key in WRAPPER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a {type(data).__name__}, not a state dict of tensors")
    return {k: v.detach().float().numpy() for k, v in data.items() if torch.is_tensor(v)}


def convert(src, dst, arch="resnet50", layers=None):
    import mindspore as ms

    params = convert_state_dict(read_state_dict(src), arch, layers)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], dst)
    return params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="torchvision state dict (.pth/.pt or .safetensors)")
    parser.add_argument("dst", help="output MindSpore .ckpt")
    parser.add_argument("--arch", default="resnet50",
                        help="resnet18 | resnet34 | resnet50 | resnet101 | deeplabv2_resnet101 | wrn28_10 | wrn40_2")
    parser.add_argument("--layers", default=None, help="custom blocks per stage, e.g. 1,1,1,1 (tests, ablations)")
    args = parser.parse_args(argv)
    layers = tuple(int(n) for n in args.layers.split(",")) if args.layers else None
    try:
        params = convert(args.src, args.dst, args.arch, layers)
    except ConversionError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {len(params)} tensors ({args.arch}) to {args.dst}")


if __name__ == "__main__":
    main()
