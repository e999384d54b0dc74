"""ResNet-18/34/50/101 backbones (He et al., CVPR 2016) laid out exactly like torchvision's.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...) with MindSpore's BatchNorm names (``gamma``, ``beta``,
``moving_mean``, ``moving_variance``), so ``tools/convert_torchvision.py`` only renames the BN
fields. Bottleneck is torchvision's v1.5 (stride on the 3x3 conv). BN momentum 0.9 here equals
torch's 0.1; eps 1e-5. The backbone ends with global average pooling and has no ``fc``:
``out_features`` is 512 (18/34) or 2048 (50/101).

``norm_plugins`` (e.g. CrossNorm/SelfNorm, built by ``models.cnsn.build_plugin``) are inserted
``after_stem`` (after the max-pool, 64 channels) and ``in_block`` (in every residual block after
its last BN, before the residual addition) when the builder returns a Cell for that position.
"""
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal

from engine.registry import BACKBONES

BN_MOMENTUM, BN_EPS = 0.9, 1e-5


def conv(in_channels, out_channels, kernel_size, stride=1):
    """torchvision conv: bias-free, zero padding ``kernel_size // 2``, He-normal (fan_out) init."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="pad", padding=kernel_size // 2,
                     has_bias=False, weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


def batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def plugin_or_identity(build_plugin, channels, position):
    plugin = build_plugin(channels, position) if build_plugin is not None else None
    return plugin if plugin is not None else nn.Identity()


class BasicBlock(nn.Cell):
    expansion = 1

    def __init__(self, in_channels, planes, stride=1, downsample=None, build_plugin=None):
        super().__init__()
        self.conv1 = conv(in_channels, planes, 3, stride)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv(planes, planes, 3)
        self.bn2 = batch_norm(planes)
        self.relu = nn.ReLU()
        self.plugin = plugin_or_identity(build_plugin, planes, "in_block")
        self.downsample = downsample if downsample is not None else nn.Identity()

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.plugin(self.bn2(self.conv2(out)))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Cell):
    """1x1 reduce -> 3x3 (carries the stride, torchvision v1.5) -> 1x1 expand x4."""
    expansion = 4

    def __init__(self, in_channels, planes, stride=1, downsample=None, build_plugin=None):
        super().__init__()
        width = planes * self.expansion
        self.conv1 = conv(in_channels, planes, 1)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv(planes, planes, 3, stride)
        self.bn2 = batch_norm(planes)
        self.conv3 = conv(planes, width, 1)
        self.bn3 = batch_norm(width)
        self.relu = nn.ReLU()
        self.plugin = plugin_or_identity(build_plugin, width, "in_block")
        self.downsample = downsample if downsample is not None else nn.Identity()

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.plugin(self.bn3(self.conv3(out)))
        return self.relu(out + self.downsample(x))


class ResNet(nn.Cell):
    """``ResNet(block, layers)`` -> (N, C, H, W) images to (N, out_features) pooled features.

    ``image_size`` is accepted for the common backbone signature; global pooling makes any
    size >= 32 work.
    """

    def __init__(self, block, layers, in_channels=3, image_size=224, norm_plugins=None):
        super().__init__()
        build_plugin = None
        if norm_plugins:
            from models.cnsn import build_plugin as build_from_cfg

            build_plugin = lambda channels, position: build_from_cfg(norm_plugins, channels, position)  # noqa: E731
        self.conv1 = conv(in_channels, 64, 7, stride=2)
        self.bn1 = batch_norm(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        self.stem_plugin = plugin_or_identity(build_plugin, 64, "after_stem")
        self.in_channels = 64
        self.layer1 = self._make_layer(block, 64, layers[0], 1, build_plugin)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, build_plugin)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, build_plugin)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, build_plugin)
        self.out_features = 512 * block.expansion

    def _make_layer(self, block, planes, blocks, stride, build_plugin):
        downsample = None
        if stride != 1 or self.in_channels != planes * block.expansion:
            downsample = nn.SequentialCell(conv(self.in_channels, planes * block.expansion, 1, stride),
                                           batch_norm(planes * block.expansion))
        stage = [block(self.in_channels, planes, stride, downsample, build_plugin)]
        self.in_channels = planes * block.expansion
        stage += [block(self.in_channels, planes, 1, None, build_plugin) for _ in range(1, blocks)]
        return nn.SequentialCell(stage)

    def construct(self, x):
        x = self.stem_plugin(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return ops.mean(x, (2, 3))


ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def _register(arch):
    block, layers = ARCHS[arch]

    def build(in_channels=3, image_size=224, norm_plugins=None):
        return ResNet(block, layers, in_channels, image_size, norm_plugins)

    build.__name__ = build.__qualname__ = arch
    build.__doc__ = f"{arch}: {block.__name__} x {list(layers)}, {512 * block.expansion}-d pooled features."
    BACKBONES.register(arch)(build)
    return build


resnet18, resnet34, resnet50, resnet101 = (_register(arch) for arch in ARCHS)
