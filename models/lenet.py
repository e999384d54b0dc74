"""LeNet of the DANN paper for 28x28 digits: conv5-32, pool, conv5-48, pool, fc100, fc100."""
from mindspore import nn

from engine.registry import BACKBONES
from models.cnsn import NormPluginBuilder, build_plugin


@BACKBONES.register("lenet")
class LeNet(nn.Cell):
    """Returns 100-d features; the classifier head (fc10) lives in :class:`models.classifier.Classifier`.

    ``norm_plugins`` (``model.norm_plugins``) inserts CrossNorm/SelfNorm cells after the first
    conv block ("after_stem", 32 channels) and/or the second ("in_block", 48 channels).
    """

    def __init__(self, in_channels=3, image_size=28, feature_dim=100, norm_plugins=None):
        super().__init__()
        layers = [nn.Conv2d(in_channels, 32, 5, pad_mode="valid", has_bias=True), nn.ReLU(), nn.MaxPool2d(2, 2),
                  build_plugin(norm_plugins, 32, "after_stem"),
                  nn.Conv2d(32, 48, 5, pad_mode="valid", has_bias=True), nn.ReLU(), nn.MaxPool2d(2, 2),
                  build_plugin(norm_plugins, 48, "in_block")]
        self.conv = nn.SequentialCell([layer for layer in layers if layer is not None])
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"lenet needs image_size >= 16, got {image_size}")
        self.flatten = nn.Flatten()
        self.fc = nn.SequentialCell(
            nn.Dense(48 * side * side, feature_dim), nn.ReLU(),
            nn.Dense(feature_dim, feature_dim), nn.ReLU(),
        )
        self.out_features = feature_dim

    def construct(self, x):
        return self.fc(self.flatten(self.conv(x)))


@BACKBONES.register("lenet_bn")
class LeNetBN(nn.Cell):
    """"LeNet-BN" of the optdigits-DG / optdigits-C recipes (issue #17), 28x28 inputs.

    conv5(3->16)-BN-ReLU-pool, conv5(16->32)-BN-ReLU-pool, FC 512->128-BN-ReLU = z (returned); the
    FC 128->10 is the head of :class:`models.classifier.Classifier`. The BatchNorm layers make it a
    Tent / Norm test-time adaptation backbone (engine/tta.py).

    ``norm_plugins`` positions: "input" (the image, 3 channels), "after_stem" (block 1, 16 channels) and
    "in_block" (block 2, 32 channels); ``crossnorm.active_num: 1`` over all three is the optdigits-DG
    CrossNorm (one random position per step, applied with probability p).
    """

    PLUGIN_POSITIONS = ("input", "after_stem", "in_block")

    def __init__(self, in_channels=3, image_size=28, feature_dim=128, norm_plugins=None):
        super().__init__()
        if image_size != 28:
            raise ValueError(f"lenet_bn is defined for 28x28 inputs (FC 512->128), got data.image_size={image_size}")
        plugin = NormPluginBuilder(norm_plugins, self.PLUGIN_POSITIONS)
        layers = [plugin(in_channels, "input"),
                  nn.Conv2d(in_channels, 16, 5, pad_mode="valid", has_bias=True), nn.BatchNorm2d(16), nn.ReLU(),
                  nn.MaxPool2d(2, 2), plugin(16, "after_stem"),
                  nn.Conv2d(16, 32, 5, pad_mode="valid", has_bias=True), nn.BatchNorm2d(32), nn.ReLU(),
                  nn.MaxPool2d(2, 2), plugin(32, "in_block")]
        self.conv = nn.SequentialCell([layer for layer in layers if layer is not None])
        self.selector = plugin.finalize()
        self.flatten = nn.Flatten()
        self.fc = nn.SequentialCell(nn.Dense(32 * 4 * 4, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU())
        self.out_features = feature_dim

    def construct(self, x):
        if self.selector is not None:
            x = self.selector(x)
        return self.fc(self.flatten(self.conv(x)))
