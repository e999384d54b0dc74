"""DTN: the small conv net of ADDA/CyCADA for SVHN -> MNIST (32x32 digits).

conv5-64/s2 -> conv5-128/s2 -> conv5-256/s2 (each BN, Dropout, ReLU), then fc512-BN-ReLU-Dropout.
``norm_plugins`` (CrossNorm/SelfNorm) go after the first block ("after_stem", 64 channels) and/or
the second ("in_block", 128 channels).
"""
from mindspore import nn

from engine.registry import BACKBONES
from models.cnsn import build_plugin


def conv_block(c_in, c_out, drop):
    return [nn.Conv2d(c_in, c_out, 5, stride=2, pad_mode="pad", padding=2, has_bias=True),
            nn.BatchNorm2d(c_out), nn.Dropout(p=drop), nn.ReLU()]


@BACKBONES.register("dtn")
class DTN(nn.Cell):
    """Returns ``feature_dim``-d features; the classifier head lives in :class:`models.classifier.Classifier`."""

    def __init__(self, in_channels=3, image_size=32, feature_dim=512, norm_plugins=None):
        super().__init__()
        layers = (conv_block(in_channels, 64, 0.1) + [build_plugin(norm_plugins, 64, "after_stem")]
                  + conv_block(64, 128, 0.3) + [build_plugin(norm_plugins, 128, "in_block")]
                  + conv_block(128, 256, 0.5))
        self.conv = nn.SequentialCell([layer for layer in layers if layer is not None])
        side = image_size
        for _ in range(3):
            side = (side + 1) // 2  # k5, s2, p2 halves the side, rounding up
        self.flatten = nn.Flatten()
        self.fc = nn.SequentialCell(nn.Dense(256 * side * side, feature_dim), nn.BatchNorm1d(feature_dim),
                                    nn.ReLU(), nn.Dropout(p=0.5))
        self.out_features = feature_dim

    def construct(self, x):
        return self.fc(self.flatten(self.conv(x)))
