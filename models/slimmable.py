"""Slimmable LeNet and ResNet-50 for SlimDA (Meng et al., CVPR 2022, arXiv 2206.06620).

Width-switchable layers follow Slimmable Networks (Yu et al., ICLR 2019): one set of full-width
weights; width ``w`` uses the first ``round(w * C)`` channels of every layer (round half up, at
least 1; the input image's channels are never slimmed) and has its own *private* (switchable)
BatchNorm. The default width set is ``DEFAULT_WIDTHS`` = (1.0, 0.75, 0.5, 0.35, 0.25, 0.125);
ResNet-50 at 0.125 costs 1/53 of the full multiply-adds at 224 (not 1/64: the stem reads all three
input channels, so it shrinks only 8x).

**Training: channel masks.** ``backbone(x, width_index)`` takes a 0-d int32 Tensor indexing
``backbone.widths``, so one compiled step with static shapes serves every width. Each layer runs
at full width and multiplies its output by the 0/1 mask of its first ``round(w * C)`` channels,
after BatchNorm (BN of a zeroed channel would give beta). The next layer's inputs beyond the
width are then zero, so a masked layer computes exactly what the layer with sliced weights
computes, in the forward and the backward pass (the weights of inactive channels get zero
gradient). The features keep the full width's size (zeros beyond the width), so heads keep one
shape. Called without an index, a backbone runs at full width, so any method can use it as a
plain backbone.

**Switchable BatchNorm** (:class:`SwitchableBatchNorm2d`) holds ``gamma``, ``beta``,
``moving_mean`` and ``moving_variance`` as ``[n_widths, C]`` Parameters and uses the row of the
width. In training it normalises with the batch statistics (biased variance) and updates only that
row's running statistics, only for the active channels, as ``nn.BatchNorm2d`` on the sliced input
would: ``running = momentum * running + (1 - momentum) * batch`` with the unbiased variance and
momentum 0.9 (= PyTorch's 0.1), eps 1e-5, as ``models/resnet.py``.

**Deployment: slicing.** ``backbone.subnet(width)`` returns an ordinary narrow network (plain
``nn.Conv2d`` / ``nn.Dense`` / ``nn.BatchNorm2d`` holding the width's weights and BN row) whose
outputs equal the slimmable network's at that width in inference mode, minus the zero columns;
:func:`classifier_subnet` adds a :class:`models.classifier.Classifier`'s bottleneck and head with
their input columns sliced likewise. ``export.py`` writes it as MindIR.

**Cost** (:func:`count_flops_params`): "FLOPs" are multiply-accumulates of the convolutions and
fully-connected layers (``k_h k_w C_in C_out H_out W_out`` and ``in x out``), the convention of the
ResNet and slimmable-network papers (ResNet-50 at 224: 4.09 G with its 1000-way fc); BatchNorm,
ReLU, pooling, bias and residual additions are not counted. Parameters are those of the width's
plain sub-network that training updates (conv/dense weights and biases, BN gamma and beta; not
the running statistics), i.e. ``sum(p.size for p in subnet.trainable_params())``.
"""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeNormal

from engine.registry import BACKBONES
from models import resnet
from models.modules import Bottleneck as FeatureBottleneck, LinearHead

DEFAULT_WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25, 0.125)


def active_channels(channels, width):
    """Channels kept at ``width``: ``round(width * channels)`` (half up), at least 1."""
    return max(1, int(math.floor(width * channels + 0.5)))


def check_widths(widths):
    """``widths`` as a tuple of floats; ValueError unless distinct, in (0, 1] and containing 1.0."""
    widths = tuple(float(w) for w in widths)
    if not widths or len(set(widths)) != len(widths) or not all(0.0 < w <= 1.0 for w in widths) \
            or 1.0 not in widths:
        raise ValueError(f"slimmable widths must be distinct numbers in (0, 1] including 1.0, got {list(widths)}")
    return widths


def channel_masks(channels, widths):
    """``[n_widths, channels]`` float32 0/1 table: row i keeps the first ``active_channels(C, widths[i])``."""
    return (np.arange(channels)[None, :] < np.array([[active_channels(channels, w)] for w in widths])
            ).astype(np.float32)


def _spatial_out(size, kernel, stride, padding, dilation, pad_mode):
    """Output side of a conv/pool along one axis (``padding`` = total padding on that axis)."""
    if pad_mode == "same":
        return -(-size // stride)
    return (size + padding - dilation * (kernel - 1) - 1) // stride + 1


class SlimConv2d(nn.Conv2d):
    """``nn.Conv2d`` at full width; ``construct(x, width_index)`` zeroes the output channels beyond the width.

    ``slim_input=False`` marks a layer reading the image (its input channels are never slimmed).
    ``mask_output=False`` leaves the masking to the BatchNorm that follows.
    """

    init_fan = "in"  # MindSpore's default conv init scales with the fan-in (slim_conv: He fan_out)

    def __init__(self, in_channels, out_channels, kernel_size, widths=DEFAULT_WIDTHS, slim_input=True,
                 mask_output=True, **conv_kwargs):
        super().__init__(in_channels, out_channels, kernel_size, **conv_kwargs)
        if self.group != 1:
            raise ValueError("SlimConv2d supports group=1 only")
        self.widths = check_widths(widths)
        self.slim_input, self.mask_output = slim_input, mask_output
        self.output_masks = Tensor(channel_masks(out_channels, self.widths)[:, :, None, None])

    def construct(self, x, width_index):
        y = super().construct(x)
        if self.mask_output:
            y = y * ops.gather(self.output_masks, width_index, 0)
        return y

    def active_in(self, width_index):
        return active_channels(self.in_channels, self.widths[width_index]) if self.slim_input else self.in_channels

    def active_out(self, width_index):
        return active_channels(self.out_channels, self.widths[width_index])

    def sliced(self, width_index):
        """A plain ``nn.Conv2d`` holding the weights of the width's channels."""
        c_in, c_out = self.active_in(width_index), self.active_out(width_index)
        plain = nn.Conv2d(c_in, c_out, self.kernel_size, self.stride, pad_mode=self.pad_mode, padding=self.padding,
                          dilation=self.dilation, has_bias=self.has_bias)
        plain.weight.set_data(Tensor(self.weight.asnumpy()[:c_out, :c_in]))
        if self.has_bias:
            plain.bias.set_data(Tensor(self.bias.asnumpy()[:c_out]))
        return plain

    def cost(self, width_index, in_hw):
        """``(macs, params, out_hw)`` of the width's sliced conv on an ``in_hw`` input."""
        c_in, c_out = self.active_in(width_index), self.active_out(width_index)
        pads = (self.padding,) * 4 if isinstance(self.padding, int) else tuple(self.padding)
        out_hw = tuple(_spatial_out(size, k, s, pads[2 * axis] + pads[2 * axis + 1], d, self.pad_mode)
                       for axis, (size, k, s, d) in enumerate(zip(in_hw, self.kernel_size, self.stride,
                                                                  self.dilation)))
        weights = c_out * c_in * self.kernel_size[0] * self.kernel_size[1]
        return weights * out_hw[0] * out_hw[1], weights + (c_out if self.has_bias else 0), out_hw


class SlimDense(nn.Dense):
    """``nn.Dense`` at full width; ``construct(x, width_index)`` zeroes the outputs beyond the width.

    ``in_block`` > 1 says the input is a flattened ``(C, h, w)`` map with ``in_block = h * w``
    values per channel, so the width keeps the first ``round(w * C) * in_block`` inputs.
    """

    init_fan = "in"

    def __init__(self, in_channels, out_channels, widths=DEFAULT_WIDTHS, in_block=1, **dense_kwargs):
        super().__init__(in_channels, out_channels, **dense_kwargs)
        if in_channels % in_block:
            raise ValueError(f"SlimDense: in_channels {in_channels} is not a multiple of in_block {in_block}")
        self.widths = check_widths(widths)
        self.in_block = in_block
        self.output_masks = Tensor(channel_masks(out_channels, self.widths))

    def construct(self, x, width_index):
        return super().construct(x) * ops.gather(self.output_masks, width_index, 0)

    def active_in(self, width_index):
        return active_channels(self.in_channels // self.in_block, self.widths[width_index]) * self.in_block

    def active_out(self, width_index):
        return active_channels(self.out_channels, self.widths[width_index])

    def sliced(self, width_index):
        c_in, c_out = self.active_in(width_index), self.active_out(width_index)
        plain = nn.Dense(c_in, c_out, has_bias=self.has_bias)
        plain.weight.set_data(Tensor(self.weight.asnumpy()[:c_out, :c_in]))
        if self.has_bias:
            plain.bias.set_data(Tensor(self.bias.asnumpy()[:c_out]))
        return plain

    def cost(self, width_index):
        c_in, c_out = self.active_in(width_index), self.active_out(width_index)
        return c_in * c_out, c_in * c_out + (c_out if self.has_bias else 0)


class SwitchableBatchNorm2d(nn.Cell):
    """Private BatchNorm per width (Slimmable Networks' switchable BN), output masked to the width.

    ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``: ``[n_widths, C]``; ``construct(x,
    width_index)`` uses row ``width_index``. Training: batch mean and biased variance normalise,
    and only the active channels of that row's running statistics move (unbiased variance, MindSpore
    momentum convention). Inference: that row's running statistics.
    """

    def __init__(self, channels, widths=DEFAULT_WIDTHS, eps=resnet.BN_EPS, momentum=resnet.BN_MOMENTUM):
        super().__init__()
        self.widths = check_widths(widths)
        self.channels, self.eps, self.momentum = channels, eps, momentum
        rows = (len(self.widths), channels)
        self.gamma = Parameter(Tensor(np.ones(rows, np.float32)), name="gamma")
        self.beta = Parameter(Tensor(np.zeros(rows, np.float32)), name="beta")
        self.moving_mean = Parameter(Tensor(np.zeros(rows, np.float32)), name="moving_mean", requires_grad=False)
        self.moving_variance = Parameter(Tensor(np.ones(rows, np.float32)), name="moving_variance",
                                         requires_grad=False)
        self.masks = Tensor(channel_masks(channels, self.widths))
        self.row_selector = Tensor(np.eye(len(self.widths), dtype=np.float32))

    def construct(self, x, width_index):
        dtype = x.dtype
        x = x.astype(ms.float32)  # statistics in float32 also under mixed precision
        mask = ops.gather(self.masks, width_index, 0)
        gamma = ops.gather(self.gamma, width_index, 0)
        beta = ops.gather(self.beta, width_index, 0)
        if self.training:
            mean = ops.mean(x, (0, 2, 3))
            centred = x - mean.reshape(1, -1, 1, 1)
            var = ops.mean(centred * centred, (0, 2, 3))
            count = x.shape[0] * x.shape[2] * x.shape[3]
            unbiased = var * (count / max(count - 1, 1))
            # only row width_index, only its active channels: the others never saw this width's input
            update = (ops.gather(self.row_selector, width_index, 0).reshape(-1, 1) * mask.reshape(1, -1)) > 0
            new_mean = self.momentum * self.moving_mean + (1 - self.momentum) * ops.stop_gradient(mean)
            new_var = self.momentum * self.moving_variance + (1 - self.momentum) * ops.stop_gradient(unbiased)
            x = ops.depend(x, ops.assign(self.moving_mean, ops.select(update, new_mean, self.moving_mean)))
            x = ops.depend(x, ops.assign(self.moving_variance, ops.select(update, new_var, self.moving_variance)))
            scale = gamma * ops.rsqrt(var + self.eps) * mask
            y = centred * scale.reshape(1, -1, 1, 1) + (beta * mask).reshape(1, -1, 1, 1)
        else:
            mean = ops.gather(self.moving_mean, width_index, 0)
            var = ops.gather(self.moving_variance, width_index, 0)
            scale = gamma * ops.rsqrt(var + self.eps) * mask
            y = x * scale.reshape(1, -1, 1, 1) + ((beta - mean * scale) * mask).reshape(1, -1, 1, 1)
        return y.astype(dtype)

    def active_out(self, width_index):
        return active_channels(self.channels, self.widths[width_index])

    def sliced(self, width_index):
        """A plain ``nn.BatchNorm2d`` over the width's channels holding its row of parameters and statistics."""
        active = self.active_out(width_index)
        plain = nn.BatchNorm2d(active, eps=self.eps, momentum=self.momentum)
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            getattr(plain, name).set_data(Tensor(getattr(self, name).asnumpy()[width_index, :active]))
        return plain

    def cost(self, width_index):
        return 0, 2 * self.active_out(width_index)


class SlimmableBackbone(nn.Cell):
    """Common part of the slimmable backbones: the width set and the width <-> index mapping."""

    def __init__(self, widths, width=1.0):
        super().__init__()
        self.widths = check_widths(widths)
        self.width = float(width)
        # the width construct runs at when it gets no index: 1.0 in a model bank, the trained width for a
        # network trained at one width alone (model.backbone_kwargs: {width: w})
        self.default_width_index = Tensor(self.width_index(width), ms.int32)

    def init_as_narrow(self):
        """Rescale the initial weights so the active slice at ``self.width`` starts as the plain narrow
        network would: each layer's init scales as 1/sqrt(fan), and the narrow fan is a fraction of the
        full one (without this a width-0.25 LeNet, which has no BatchNorm to compensate, does not
        train: its activations shrink by sqrt(0.25) per layer)."""
        index = self.width_index(self.width)
        for _, cell in self.cells_and_names():
            if not isinstance(cell, (SlimConv2d, SlimDense)):
                continue
            fan_ratio = (cell.active_in(index) / cell.in_channels if cell.init_fan == "in"
                         else cell.active_out(index) / cell.out_channels)
            if fan_ratio < 1.0:
                for param in (cell.weight, cell.bias) if cell.has_bias else (cell.weight,):
                    param.set_data(Tensor(param.asnumpy() / math.sqrt(fan_ratio)))

    def width_index(self, width):
        """Index of ``width`` in ``self.widths``; ValueError naming the valid widths."""
        for index, candidate in enumerate(self.widths):
            if math.isclose(candidate, float(width), rel_tol=0, abs_tol=1e-9):
                return index
        raise ValueError(f"width {width} is not one of this slimmable backbone's widths "
                         f"{', '.join(f'{w:g}' for w in self.widths)}")

    def feature_width(self, width):
        """Non-zero features at ``width`` (the first ones of ``out_features``)."""
        return active_channels(self.out_features, self.widths[self.width_index(width)])

    def subnet(self, width):
        """Plain narrow network equal to this one at ``width`` (inference mode), features unpadded."""
        raise NotImplementedError

    def cost(self, width, image_size):
        """``(macs, params)`` of the width's sub-network on ``image_size`` x ``image_size`` inputs."""
        raise NotImplementedError


def _no_plugins(norm_plugins):
    if norm_plugins:
        raise ValueError("slimmable backbones do not support model.norm_plugins; remove them or use a plain backbone")


@BACKBONES.register("slim_lenet")
class SlimLeNet(SlimmableBackbone):
    """:class:`models.lenet.LeNet` (conv5-32, pool, conv5-48, pool, fc100, fc100) with slimmable layers."""

    def __init__(self, in_channels=3, image_size=28, feature_dim=100, norm_plugins=None, widths=DEFAULT_WIDTHS,
                 width=1.0):
        super().__init__(widths, width)
        _no_plugins(norm_plugins)
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"slim_lenet needs image_size >= 16, got {image_size}")
        self.conv1 = SlimConv2d(in_channels, 32, 5, self.widths, slim_input=False, pad_mode="valid", has_bias=True)
        self.conv2 = SlimConv2d(32, 48, 5, self.widths, pad_mode="valid", has_bias=True)
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = SlimDense(48 * side * side, feature_dim, self.widths, in_block=side * side)
        self.fc2 = SlimDense(feature_dim, feature_dim, self.widths)
        self.out_features = feature_dim
        self.init_as_narrow()

    def construct(self, x, width_index=None):
        if width_index is None:
            width_index = self.default_width_index
        x = self.pool(self.relu(self.conv1(x, width_index)))
        x = self.flatten(self.pool(self.relu(self.conv2(x, width_index))))
        return self.relu(self.fc2(self.relu(self.fc1(x, width_index)), width_index))

    def subnet(self, width):
        index = self.width_index(width)
        net = nn.SequentialCell([self.conv1.sliced(index), nn.ReLU(), nn.MaxPool2d(2, 2),
                                 self.conv2.sliced(index), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                                 self.fc1.sliced(index), nn.ReLU(), self.fc2.sliced(index), nn.ReLU()])
        net.out_features = self.fc2.active_out(index)
        return net

    def cost(self, width, image_size):
        index = self.width_index(width)
        macs1, params1, hw = self.conv1.cost(index, (image_size, image_size))
        macs2, params2, _ = self.conv2.cost(index, (hw[0] // 2, hw[1] // 2))
        (macs3, params3), (macs4, params4) = self.fc1.cost(index), self.fc2.cost(index)
        return macs1 + macs2 + macs3 + macs4, params1 + params2 + params3 + params4


def slim_conv(in_channels, out_channels, kernel_size, widths, stride=1, slim_input=True):
    """:func:`models.resnet.conv` (bias-free, padding k // 2, He fan_out init), unmasked: its BN masks."""
    conv = SlimConv2d(in_channels, out_channels, kernel_size, widths, slim_input=slim_input, mask_output=False,
                      stride=stride, pad_mode="pad", padding=kernel_size // 2, has_bias=False,
                      weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))
    conv.init_fan = "out"
    return conv


class SlimBottleneck(nn.Cell):
    """:class:`models.resnet.Bottleneck` (v1.5, stride on the 3x3) with slimmable convs and switchable BN."""

    def __init__(self, in_channels, planes, stride, widths, downsample=False):
        super().__init__()
        out_channels = planes * resnet.Bottleneck.expansion
        self.conv1 = slim_conv(in_channels, planes, 1, widths)
        self.bn1 = SwitchableBatchNorm2d(planes, widths)
        self.conv2 = slim_conv(planes, planes, 3, widths, stride)
        self.bn2 = SwitchableBatchNorm2d(planes, widths)
        self.conv3 = slim_conv(planes, out_channels, 1, widths)
        self.bn3 = SwitchableBatchNorm2d(out_channels, widths)
        self.relu = nn.ReLU()
        # torchvision names: downsample.0 (conv), downsample.1 (BN)
        self.downsample = nn.CellList([slim_conv(in_channels, out_channels, 1, widths, stride),
                                       SwitchableBatchNorm2d(out_channels, widths)]) if downsample else None

    def construct(self, x, width_index):
        out = self.relu(self.bn1(self.conv1(x, width_index), width_index))
        out = self.relu(self.bn2(self.conv2(out, width_index), width_index))
        out = self.bn3(self.conv3(out, width_index), width_index)
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample[1](self.downsample[0](x, width_index), width_index)
        return self.relu(out + shortcut)

    def cost(self, width_index, in_hw):
        macs = params = 0
        hw = in_hw
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            conv_macs, conv_params, hw = conv.cost(width_index, hw)
            macs, params = macs + conv_macs, params + conv_params + bn.cost(width_index)[1]
        if self.downsample is not None:
            conv_macs, conv_params, _ = self.downsample[0].cost(width_index, in_hw)
            macs, params = macs + conv_macs, params + conv_params + self.downsample[1].cost(width_index)[1]
        return macs, params, hw


class NarrowBottleneck(resnet.Bottleneck):
    """A width of a :class:`SlimBottleneck` as a plain :class:`models.resnet.Bottleneck` (its construct)."""

    def __init__(self, slim, width_index):
        nn.Cell.__init__(self)
        for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"):
            setattr(self, name, getattr(slim, name).sliced(width_index))
        self.relu = nn.ReLU()
        self.plugin = nn.Identity()
        self.downsample = nn.Identity() if slim.downsample is None else nn.SequentialCell(
            [slim.downsample[0].sliced(width_index), slim.downsample[1].sliced(width_index)])


class SlimResNet(SlimmableBackbone):
    """ResNet with Bottleneck blocks (``layers`` per stage; (3, 4, 6, 3) = ResNet-50), slimmable.

    Parameter names are :class:`models.resnet.ResNet`'s (torchvision's); the BN fields are
    ``[n_widths, C]``. :meth:`load_pretrained` loads ``tools/convert_torchvision.py`` weights into
    every width (each BN row starts from the pretrained BN).
    """

    def __init__(self, layers=(3, 4, 6, 3), in_channels=3, image_size=224, norm_plugins=None,
                 widths=DEFAULT_WIDTHS, width=1.0):
        super().__init__(widths, width)
        _no_plugins(norm_plugins)
        self.conv1 = slim_conv(in_channels, 64, 7, self.widths, stride=2, slim_input=False)
        self.bn1 = SwitchableBatchNorm2d(64, self.widths)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        channels = 64
        stages = []
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if stage == 0 else 2
            out_channels = planes * resnet.Bottleneck.expansion
            stage_blocks = [SlimBottleneck(channels, planes, stride, self.widths, downsample=True)]
            stage_blocks += [SlimBottleneck(out_channels, planes, 1, self.widths) for _ in range(1, blocks)]
            stages.append(nn.CellList(stage_blocks))
            channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_features = channels
        self.init_as_narrow()

    def construct(self, x, width_index=None):
        if width_index is None:
            width_index = self.default_width_index
        x = self.maxpool(self.relu(self.bn1(self.conv1(x, width_index), width_index)))
        for block in self.layer1:
            x = block(x, width_index)
        for block in self.layer2:
            x = block(x, width_index)
        for block in self.layer3:
            x = block(x, width_index)
        for block in self.layer4:
            x = block(x, width_index)
        return ops.mean(x, (2, 3))

    def stages(self):
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def subnet(self, width):
        return NarrowResNet(self, self.width_index(width))

    def cost(self, width, image_size):
        index = self.width_index(width)
        macs, params, hw = self.conv1.cost(index, (image_size, image_size))
        params += self.bn1.cost(index)[1]
        hw = tuple(_spatial_out(side, 3, 2, 2, 1, "pad") for side in hw)  # max-pool 3x3 / 2, padding 1
        for stage in self.stages():
            for block in stage:
                block_macs, block_params, hw = block.cost(index, hw)
                macs, params = macs + block_macs, params + block_params
        return macs, params

    def load_plain(self, plain):
        """Copy a plain :class:`models.resnet.ResNet` of the same depth into every width (BN rows tiled)."""
        source = dict(plain.parameters_and_names())
        for name, param in self.parameters_and_names():
            value = source[name].asnumpy()
            if param.shape != value.shape:  # switchable BN row: same start for every width
                value = np.broadcast_to(value, param.shape)
            param.set_data(Tensor(np.ascontiguousarray(value), param.dtype))

    def load_pretrained(self, path):
        """Load ImageNet weights (``tools/convert_torchvision.py`` output) with the checks of a plain ResNet."""
        from engine.checkpoint import load_backbone_weights

        plain = resnet.ResNet(resnet.Bottleneck, self.layer_counts(), self.conv1.in_channels)
        load_backbone_weights(plain, path)
        self.load_plain(plain)

    def layer_counts(self):
        return tuple(len(stage) for stage in self.stages())


class NarrowResNet(resnet.ResNet):
    """A width of a :class:`SlimResNet` as a plain :class:`models.resnet.ResNet` (its construct and names)."""

    def __init__(self, slim, width_index):
        nn.Cell.__init__(self)
        self.conv1 = slim.conv1.sliced(width_index)
        self.bn1 = slim.bn1.sliced(width_index)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        self.stem_plugin = nn.Identity()
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.SequentialCell([NarrowBottleneck(block, width_index) for block in stage]) for stage in slim.stages())
        self.out_features = slim.layer4[-1].bn3.active_out(width_index)


@BACKBONES.register("slim_resnet50")
def slim_resnet50(in_channels=3, image_size=224, norm_plugins=None, widths=DEFAULT_WIDTHS, width=1.0):
    """Slimmable ResNet-50: 2048-d pooled features (zero beyond the width)."""
    return SlimResNet((3, 4, 6, 3), in_channels, image_size, norm_plugins, widths, width)


def count_flops_params(backbone_name, width, input_size, in_channels=3, num_classes=None):
    """``(mflops, params)`` of slimmable backbone ``backbone_name`` at ``width`` (module docstring: convention).

    ``num_classes`` adds a linear classifier on the width's features. Analytical: no forward pass
    (the backbone is built without initialising its weights, only its layer geometry is read).
    """
    from mindspore.nn.utils import no_init_parameters

    with no_init_parameters():
        backbone = BACKBONES.build(backbone_name, in_channels=in_channels, image_size=input_size)
    if not isinstance(backbone, SlimmableBackbone):
        raise ValueError(f"backbone {backbone_name!r} is not slimmable; slimmable backbones: "
                         f"{', '.join(n for n in BACKBONES.names() if n.startswith('slim_'))}")
    macs, params = backbone.cost(width, input_size)
    if num_classes:
        features = backbone.feature_width(width)
        macs, params = macs + features * num_classes, params + features * num_classes + num_classes
    return macs / 1e6, params


class DeployedClassifier(nn.Cell):
    """``x -> logits`` of one width of a :class:`models.classifier.Classifier` with a slimmable backbone."""

    def __init__(self, backbone, bottleneck, head):
        super().__init__()
        self.backbone, self.bottleneck, self.head = backbone, bottleneck, head

    def construct(self, x):
        return self.head(self.bottleneck(self.backbone(x)))


def with_fewer_inputs(cell, in_features):
    """A copy of a linear head or feature bottleneck reading only its first ``in_features`` inputs.

    In the slimmable model the other inputs are zero, so the copy computes the same outputs.
    """
    if not isinstance(cell, (LinearHead, FeatureBottleneck)):
        raise ValueError(f"cannot narrow a {type(cell).__name__} to a sub-network's features: slimmable "
                         "classifiers support the 'linear' head and the Dense-BN-ReLU bottleneck")
    dense = next(c for _, c in cell.cells_and_names() if isinstance(c, nn.Dense))
    narrow = type(cell)(in_features, dense.out_channels)
    source = dict(cell.parameters_and_names())
    for name, param in narrow.parameters_and_names():
        value = source[name].asnumpy()
        param.set_data(Tensor(value[..., :in_features] if value.shape != param.shape else value))
    return narrow


def classifier_subnet(model, width):
    """The deployable plain network of ``model`` (a Classifier over a slimmable backbone) at ``width``.

    The first layer reading the features (the bottleneck if any, else the head) keeps only the
    columns of the width's features; the rest of the model is unchanged.
    """
    backbone = model.backbone
    if not isinstance(backbone, SlimmableBackbone):
        raise ValueError(f"the model's backbone ({type(backbone).__name__}) is not slimmable")
    sub = backbone.subnet(width)
    features = sub.out_features
    head_inputs = features if isinstance(model.bottleneck, nn.Identity) else model.features_dim
    bottleneck = nn.Identity() if isinstance(model.bottleneck, nn.Identity) else with_fewer_inputs(
        model.bottleneck, features)
    # a head with several classifiers (SlimDA: C_s | C_t and C_a) names the one it deploys
    head = model.head.deployed_linear() if hasattr(model.head, "deployed_linear") else model.head
    return DeployedClassifier(sub, bottleneck, with_fewer_inputs(head, head_inputs))
