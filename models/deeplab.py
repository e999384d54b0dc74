"""Dense segmenters: DeepLab-v2 ResNet (AdaptSegNet's DeeplabMulti) and the DigitScenes net.

DeepLab-v2 (Chen et al., TPAMI 2018) as used by AdaptSegNet (Tsai et al., CVPR 2018), written
from the official ``model/deeplab_multi.py`` (wasidennis/AdaptSegNet):

* stem conv7x7/2 + BN + ReLU + max-pool 3x3/2 with ``ceil_mode=True``;
* Bottleneck stages (3, 4, 23, 3); layer2 at stride 2, layer3 at stride 1 / dilation 2, layer4 at
  stride 1 / dilation 4 (output stride 8); every 3x3 conv of a stage has padding = dilation, and
  the downsample branch (1x1 conv + BN) exists in each stage's first block, as the official
  ``_make_layer`` creates it. ``style="caffe"`` (default) puts a stage's stride on the first 1x1
  conv as the official code and the DeepLab init weights do; ``style="pytorch"`` puts it on the
  3x3 conv as torchvision's ResNet-101 ImageNet weights expect;
* classifier: the sum of 3x3 convolutions with bias at rates 6, 12, 18, 24 (official names
  ``conv2d_list``; weights N(0, 0.01), bias PyTorch's default), on layer4 (``classifier``, the
  official ``layer6``, main output) and, with ``multi_level=True``, on layer3 (``aux_classifier``,
  the official ``layer5``). The official ``Classifier_Module`` returns inside its loop and so sums
  only rates 6 and 12, a bug its authors acknowledge (AdaptSegNet issues #20, #84): we sum all
  four; ``official_two_rates=True`` reproduces the official network exactly (the rate-18/24
  convolutions then exist but get no gradient, as there).

BatchNorm: ``bn="frozen"`` (default, issue #10, the usual DeepLab practice at batch 1) always
normalises with the stored statistics and never updates them, and its gamma/beta are not
trainable. ``bn="batch_stats"`` reproduces what the official training actually does: it calls
``model.train()`` with only the BN affine parameters frozen, so BN normalises with the single
image's batch statistics and updates the running statistics (momentum 0.1).

Parameter names follow torchvision under ``backbone.`` (``backbone.conv1.weight``,
``backbone.layer1.0.downsample.0.weight``, MindSpore's BN names ``gamma/beta/moving_mean/
moving_variance``), so ``tools/convert_torchvision.py --arch deeplabv2_resnet101`` output (from the
DeepLab init file or torchvision's resnet101) loads with
``engine.checkpoint.load_backbone_weights(model.backbone, path)``.

CrossNorm/SelfNorm (``norm_plugins``, :class:`models.cnsn.NormPluginBuilder`) go to
``after_stem`` (64 channels), ``in_block`` (residual branch after bn3, before the addition) and
``after_block`` (after the addition and ReLU), with optional module-level CrossNorm gating.

Every segmenter follows the ``SEGMENTERS`` contract: ``build(num_classes, in_channels=3,
norm_plugins=None, **kwargs)``; ``construct(x) -> (logits, aux)`` with logits (N, K, h, w) and
``aux`` a tuple of auxiliary logit maps (``()`` when there are none); ``head_params()`` lists the
classifier parameters (10x lr in AdaptSegNet); ``backbone`` is the encoder sub-cell.
"""
import math

from mindspore import nn, ops
from mindspore.common.initializer import HeUniform, Normal, Uniform

from engine.registry import SEGMENTERS
from models.cnsn import SEGMENTER_POSITIONS, NormPluginBuilder
from models.resnet import BN_EPS, BN_MOMENTUM, plugin_or_identity

STYLES = ("caffe", "pytorch")
BN_MODES = ("frozen", "batch_stats")
DEEPLAB_RATES = (6, 12, 18, 24)


def conv_bn_free(in_channels, out_channels, kernel_size, stride=1, dilation=1):
    """Bias-free conv, padding ``dilation * (kernel_size // 2)``, N(0, 0.01) as the official init."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="pad",
                     padding=dilation * (kernel_size // 2), dilation=dilation, has_bias=False,
                     weight_init=Normal(0.01))


def deeplab_batch_norm(channels, bn):
    """BatchNorm with untrainable gamma/beta; ``bn="frozen"`` also keeps its statistics fixed."""
    norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM,
                          use_batch_statistics=False if bn == "frozen" else None)
    norm.gamma.requires_grad = False
    norm.beta.requires_grad = False
    return norm


class DilatedSumClassifier(nn.Cell):
    """Sum of 3x3 convolutions with bias at dilation ``rates`` (padding = rate): (N, C, h, w) -> (N, K, h, w).

    Weights N(0, 0.01) (``weight_init="normal"``, DeepLab) or PyTorch's default kaiming-uniform
    (``"torch_default"``); bias U(+-1/sqrt(fan_in)), PyTorch's default, in both. ``summed``: how
    many of the convolutions (in order) enter the sum (default all).
    """

    def __init__(self, in_channels, num_classes, rates, weight_init="normal", summed=None):
        super().__init__()
        bias_bound = 1.0 / math.sqrt(in_channels * 9)
        make_weight_init = {"normal": lambda: Normal(0.01), "torch_default": lambda: HeUniform(math.sqrt(5))}
        self.conv2d_list = nn.CellList([
            nn.Conv2d(in_channels, num_classes, 3, pad_mode="pad", padding=rate, dilation=rate, has_bias=True,
                      weight_init=make_weight_init[weight_init](), bias_init=Uniform(bias_bound))
            for rate in rates])
        self.summed = len(rates) if summed is None else summed

    def construct(self, x):
        out = self.conv2d_list[0](x)
        for i in range(1, self.summed):
            out = out + self.conv2d_list[i](x)
        return out


class DeepLabBottleneck(nn.Cell):
    """1x1 reduce -> 3x3 dilated -> 1x1 expand x4, + identity or downsample branch, ReLU.

    ``style="caffe"`` strides the first 1x1 conv, ``"pytorch"`` the 3x3. ``plugins`` builds the
    ``in_block`` (after bn3) and ``after_block`` (after the final ReLU) norm plug-ins.
    """

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, dilation=1, downsample=None, style="caffe", bn="frozen",
                 plugins=None):
        super().__init__()
        width = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = conv_bn_free(in_channels, planes, 1, stride_1x1)
        self.bn1 = deeplab_batch_norm(planes, bn)
        self.conv2 = conv_bn_free(planes, planes, 3, stride_3x3, dilation)
        self.bn2 = deeplab_batch_norm(planes, bn)
        self.conv3 = conv_bn_free(planes, width, 1)
        self.bn3 = deeplab_batch_norm(width, bn)
        self.relu = nn.ReLU()
        self.plugin = plugin_or_identity(plugins, width, "in_block")
        self.after_plugin = plugin_or_identity(plugins, width, "after_block")
        self.downsample = downsample if downsample is not None else nn.Identity()

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.plugin(self.bn3(self.conv3(out)))
        return self.after_plugin(self.relu(out + self.downsample(x)))


class DilatedResNet(nn.Cell):
    """DeepLab-v2's ResNet encoder at output stride 8: (N, C, H, W) -> (layer3 (N, 1024, h, w), layer4 (N, 2048, h, w)).

    With gated CrossNorm plug-ins (``crossnorm.active_num``), ``cn_selector`` draws which module
    applies at the start of each training forward pass.
    """

    def __init__(self, layers=(3, 4, 23, 3), in_channels=3, style="caffe", bn="frozen", norm_plugins=None):
        super().__init__()
        plugins = NormPluginBuilder(norm_plugins, SEGMENTER_POSITIONS) if norm_plugins else None
        # Registered before the stages, so its parameters are named backbone.cn_selector.*.
        self.cn_selector = plugins.selector if plugins is not None else None
        self.style, self.bn = style, bn
        self.conv1 = conv_bn_free(in_channels, 64, 7, stride=2)
        self.bn1 = deeplab_batch_norm(64, bn)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1, ceil_mode=True)
        self.stem_plugin = plugin_or_identity(plugins, 64, "after_stem")
        self.in_channels = 64
        self.layer1 = self._make_layer(64, layers[0], 1, 1, plugins)
        self.layer2 = self._make_layer(128, layers[1], 2, 1, plugins)
        self.layer3 = self._make_layer(256, layers[2], 1, 2, plugins)
        self.layer4 = self._make_layer(512, layers[3], 1, 4, plugins)
        if plugins is not None:
            plugins.finalize()

    def _make_layer(self, planes, blocks, stride, dilation, plugins):
        width = planes * DeepLabBottleneck.expansion
        downsample = None
        # The official condition, dilation included: every stage's first block gets one.
        if stride != 1 or self.in_channels != width or dilation in (2, 4):
            downsample = nn.SequentialCell(conv_bn_free(self.in_channels, width, 1, stride),
                                           deeplab_batch_norm(width, self.bn))
        stage = [DeepLabBottleneck(self.in_channels, planes, stride, dilation, downsample, self.style, self.bn,
                                   plugins)]
        self.in_channels = width
        stage += [DeepLabBottleneck(width, planes, 1, dilation, None, self.style, self.bn, plugins)
                  for _ in range(1, blocks)]
        return nn.SequentialCell(stage)

    def construct(self, x):
        if self.cn_selector is not None:
            x = self.cn_selector(x)
        x = self.stem_plugin(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        f3 = self.layer3(self.layer2(self.layer1(x)))
        return f3, self.layer4(f3)


class DeepLabV2(nn.Cell):
    """DeepLab-v2 ResNet, multi-level as AdaptSegNet's DeeplabMulti; see the module docstring.

    ``construct(x) -> (logits, aux)``: logits (N, K, h, w) at output stride 8, not upsampled;
    ``aux = (aux_logits,)`` from layer3 when ``multi_level``, else ``()``.
    """

    def __init__(self, num_classes, layers=(3, 4, 23, 3), in_channels=3, style="caffe", bn="frozen",
                 multi_level=True, official_two_rates=False, norm_plugins=None):
        super().__init__()
        _check_deeplab_args(num_classes, layers, style, bn)
        self.backbone = DilatedResNet(layers, in_channels, style, bn, norm_plugins)
        summed = 2 if official_two_rates else None
        self.classifier = DilatedSumClassifier(2048, num_classes, DEEPLAB_RATES, "normal", summed)
        self.aux_classifier = DilatedSumClassifier(1024, num_classes, DEEPLAB_RATES, "normal", summed) \
            if multi_level else None
        self.multi_level = multi_level

    def construct(self, x):
        f3, f4 = self.backbone(x)
        logits = self.classifier(f4)
        if self.multi_level:
            return logits, (self.aux_classifier(f3),)
        return logits, ()

    def head_params(self):
        """The classifiers' parameters (main, then auxiliary)."""
        heads = [self.classifier] + ([self.aux_classifier] if self.multi_level else [])
        return [p for head in heads for p in head.trainable_params()]


def _check_deeplab_args(num_classes, layers, style, bn):
    if style not in STYLES:
        raise ValueError(f"deeplabv2: style={style!r}; use 'caffe' (DeepLab init weights) or 'pytorch' "
                         "(torchvision ImageNet weights)")
    if bn not in BN_MODES:
        raise ValueError(f"deeplabv2: bn={bn!r}; use one of {', '.join(BN_MODES)}")
    if len(tuple(layers)) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
        raise ValueError(f"deeplabv2: layers={layers!r}; need 4 positive block counts, e.g. [3, 4, 23, 3]")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"deeplabv2: num_classes={num_classes!r}; need a positive integer")


@SEGMENTERS.register("deeplabv2")
def deeplabv2(num_classes, in_channels=3, norm_plugins=None, layers=(3, 4, 23, 3), style="caffe", bn="frozen",
              multi_level=True, official_two_rates=False):
    """DeepLab-v2 ResNet-101 (``layers`` (3, 4, 23, 3)); see :class:`DeepLabV2`."""
    return DeepLabV2(num_classes, tuple(layers), in_channels, style, bn, multi_level, official_two_rates,
                     norm_plugins)


def torch_default_conv(in_channels, out_channels, stride=1, dilation=1):
    """3x3 conv with bias, padding = dilation, PyTorch's default init (kaiming-uniform a=sqrt(5),
    bias U(+-1/sqrt(fan_in))), so it starts like a PyTorch reference."""
    return nn.Conv2d(in_channels, out_channels, 3, stride, pad_mode="pad", padding=dilation, dilation=dilation,
                     has_bias=True, weight_init=HeUniform(math.sqrt(5)),
                     bias_init=Uniform(1.0 / math.sqrt(in_channels * 9)))


class DigitScenesNet(nn.Cell):
    """Small DeepLab-style net of the embedded DigitScenes benchmark (issue #10), no BatchNorm.

    conv 3x3 in->32, ReLU; conv 3x3 stride 2 ->64, ReLU; three 3x3 convs 64->64 at dilation 1, 2,
    4, each + ReLU; head = sum of 3x3 convs 64->K at dilation 1, 2, 3, 4 (bias); logits upsampled
    bilinearly (align_corners=True) to the input size. ``construct(x) -> (logits (N, K, H, W), ())``.
    """

    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        layers = [torch_default_conv(in_channels, 32), nn.ReLU(), torch_default_conv(32, 64, stride=2), nn.ReLU()]
        for dilation in (1, 2, 4):
            layers += [torch_default_conv(64, 64, dilation=dilation), nn.ReLU()]
        self.backbone = nn.SequentialCell(layers)
        self.classifier = DilatedSumClassifier(64, num_classes, (1, 2, 3, 4), "torch_default")

    def construct(self, x):
        logits = self.classifier(self.backbone(x))
        logits = ops.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)
        return logits, ()

    def head_params(self):
        return self.classifier.trainable_params()


@SEGMENTERS.register("digitscenes_net")
def digitscenes_net(num_classes, in_channels=3, norm_plugins=None):
    """:class:`DigitScenesNet`; it has no norm-plug-in positions."""
    if norm_plugins:
        raise ValueError("digitscenes_net has no CrossNorm/SelfNorm positions; remove model.norm_plugins "
                         "or use deeplabv2")
    return DigitScenesNet(num_classes, in_channels)
