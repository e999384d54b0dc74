"""Wide ResNets for 32x32 inputs: WRN-28-10 (Tent's CIFAR-10 source model) and WRN-40-2 (CNSN's CIFAR recipe).

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, in the pre-activation form of the
PyTorch code the TTA and CNSN papers use (RobustBench ``model_zoo/architectures/wide_resnet.py``,
the "Standard" WRN-28-10 of DequanWang/tent; amazon-research/crossnorm-selfnorm
``models/cifar/wideresnet_cnsn.py``, from AugMix's ``third_party/WideResNet_pytorch``):

    conv3x3(3 -> 16) -> 3 stages of n = (depth - 4) / 6 blocks (widths 16k, 32k, 64k; strides 1, 2, 2)
    -> BN -> ReLU -> global average pool (= avg_pool2d(8) on 32x32) -> the head (Linear -> classes)

Block: ``o = relu(bn1(x))``; when the width or stride changes the shortcut is ``conv1x1(o)``, else x;
``out = conv2(relu(bn2(conv1(o)))) + shortcut``. No biases in the convolutions. The backbone returns
the pooled 64k-d feature; ``Classifier``'s linear head is the PyTorch ``fc``.

``norm_plugins`` may put CrossNorm/SelfNorm after each block's addition (``after_block``, CNSN's
``pos: post``), with module-level gating (``crossnorm.active_num``) as :class:`models.cnsn.NormPluginBuilder`.

:func:`torch_to_mindspore_names` maps a PyTorch state dict (either code's names, ``module.`` prefix
allowed) to this model's parameter names, so converted weights load with ``engine.checkpoint``.
"""
from mindspore import nn, ops

from engine.registry import BACKBONES


def conv3x3(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride, pad_mode="pad", padding=1, has_bias=False)


def batch_norm(channels):
    return nn.BatchNorm2d(channels, momentum=0.9)  # PyTorch's momentum 0.1


class WideBasicBlock(nn.Cell):
    def __init__(self, in_channels, out_channels, stride, plugin=None):
        super().__init__()
        self.bn1 = batch_norm(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = batch_norm(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU()
        self.equal_in_out = in_channels == out_channels and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_channels, out_channels, 1, stride,
                                                                  pad_mode="valid", has_bias=False)
        self.plugin = plugin if plugin is not None else nn.Identity()

    def construct(self, x):
        o = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(o))))
        identity = x if self.shortcut is None else self.shortcut(o)
        return self.plugin(identity + out)


class WideResNet(nn.Cell):
    def __init__(self, depth=28, widen_factor=10, in_channels=3, image_size=32, norm_plugins=None):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"wide resnet depth must be 6n + 4 (28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        plugins = None
        if norm_plugins:
            from models.cnsn import NormPluginBuilder

            plugins = NormPluginBuilder(norm_plugins, ("after_block",))
        # registered first, so its parameters are named backbone.cn_selector.* (as deeplab's)
        self.cn_selector = plugins.selector if plugins is not None else None
        self.conv1 = conv3x3(in_channels, widths[0])
        stages = []
        for stage, stride in enumerate((1, 2, 2)):
            blocks = []
            for i in range(n):
                c_in = widths[stage] if i == 0 else widths[stage + 1]
                plugin = plugins(widths[stage + 1], "after_block") if plugins is not None else None
                blocks.append(WideBasicBlock(c_in, widths[stage + 1], stride if i == 0 else 1, plugin))
            stages.append(nn.SequentialCell(blocks))
        self.block1, self.block2, self.block3 = stages
        if plugins is not None:
            plugins.finalize()
        self.bn1 = batch_norm(widths[3])
        self.relu = nn.ReLU()
        self.out_features = widths[3]

    def construct(self, x):
        if self.cn_selector is not None:
            x = self.cn_selector(x)
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return ops.mean(self.relu(self.bn1(out)), (2, 3))


@BACKBONES.register("wrn28_10")
def wrn28_10(in_channels=3, image_size=32, norm_plugins=None):
    return WideResNet(28, 10, in_channels, image_size, norm_plugins)


@BACKBONES.register("wrn40_2")
def wrn40_2(in_channels=3, image_size=32, norm_plugins=None):
    return WideResNet(40, 2, in_channels, image_size, norm_plugins)


BN_FIELDS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def torch_to_mindspore_names(state_dict, prefix=""):
    """``{mindspore name: array}`` of a PyTorch WRN state dict for ``Classifier(backbone=wrn*)``.

    ``prefix="model."`` gives the names of a train.py checkpoint (what eval.py / tools/tta.py load).

    ``blockK.layer.i.{bn1,bn2}.*`` -> ``backbone.blockK.i.{bn1,bn2}.{gamma,beta,moving_*}``,
    ``convShortcut`` / ``conv_shortcut`` -> ``shortcut``, final ``bn1`` -> ``backbone.bn1``, ``fc`` ->
    ``head.fc``; ``num_batches_tracked`` dropped. Values are passed through (NumPy arrays expected).
    """
    out = {}
    for name, value in state_dict.items():
        name = name[len("module."):] if name.startswith("module.") else name
        if name.endswith("num_batches_tracked"):
            continue
        parts = name.split(".")
        if parts[0] == "fc":
            out[f"{prefix}head.{name}"] = value
            continue
        if parts[0].startswith("block") and parts[1] == "layer":
            parts = [parts[0]] + parts[2:]
        parts = ["shortcut" if p in ("convShortcut", "conv_shortcut") else p for p in parts]
        if parts[-2].startswith("bn"):
            parts[-1] = BN_FIELDS[parts[-1]]
        out[f"{prefix}backbone." + ".".join(parts)] = value
    return out
