"""Image-to-image translation networks of CycleGAN, as used by CyCADA (Hoffman et al., ICML 2018).

Written from jhoffman/pytorch-CycleGAN-and-pix2pix ``models/networks.py`` (CyCADA's fork):

* :class:`ResnetGenerator` (``ResnetGenerator``, Johnson et al.'s architecture): reflection-pad 3,
  7x7 conv to ``ngf``, ``n_downsampling`` stride-2 3x3 convs doubling the width, ``n_blocks``
  residual blocks (reflection-padded 3x3 convs), as many stride-2 transposed convs
  (``padding=1, output_padding=1``, i.e. the full (2H + 1) output less its first row and column: here
  the asymmetric padding ``(1, 0, 1, 0)``, since MindSpore 2.8's ``output_padding`` on CPU leaves that
  row and column at zero) back to ``ngf``, reflection-pad 3, 7x7 conv, tanh. Instance norm without
  affine parameters (``norm='instance'``: ``InstanceNorm2d(affine=False)``), so every conv has a bias.
  The reference digit script uses ``resnet_9blocks``, ``ngf=64``, two downsamplings; all three are
  arguments here (28/32 px digits work with 2 downsamplings; larger images take more).
* :class:`PatchDiscriminator` (``NLayerDiscriminator``): 4x4 convs, stride 2 for the first
  ``n_layers``, then two stride-1 convs to one logit per patch; LeakyReLU(0.2), instance norm after
  every conv but the first and last. ``construct(x, fixed=True)`` runs it with its weights behind
  ``stop_gradient`` (the reference's ``set_requires_grad(netD, False)`` during the generator step).

Initialisation as ``init_weights(init_type='normal', gain=0.02)``: conv and transposed-conv weights
~ N(0, 0.02), biases 0. Deliberate difference: no dropout in the residual blocks (the fork's digit
script leaves ``use_dropout`` on); MindSpore's dropout draws on the device, which would make resume
inexact, and CycleGAN's own docs train without it (``--no_dropout``).
"""
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from models.modules import padded_conv

INIT_GAIN = 0.02


def instance_norm(x, eps=1e-5):
    """``InstanceNorm2d(affine=False)`` in training mode: per-sample, per-channel, biased variance."""
    mean = ops.mean(x, (2, 3), keep_dims=True)
    var = ops.mean(ops.square(x - mean), (2, 3), keep_dims=True)
    return (x - mean) / ops.sqrt(var + eps)


def _conv(c_in, c_out, kernel, stride=1, padding=0):
    return nn.Conv2d(c_in, c_out, kernel, stride, pad_mode="pad" if padding else "valid", padding=padding,
                     has_bias=True, weight_init=Normal(INIT_GAIN), bias_init="zeros")


class ResnetBlock(nn.Cell):
    """``x + IN(conv(pad(ReLU(IN(conv(pad(x)))))))`` with reflection padding."""

    def __init__(self, dim):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv1, self.conv2 = _conv(dim, dim, 3), _conv(dim, dim, 3)

    def construct(self, x):
        h = ops.relu(instance_norm(self.conv1(self.pad(x))))
        return x + instance_norm(self.conv2(self.pad(h)))


class ResnetGenerator(nn.Cell):
    """(N, C_in, H, W) in [-1, 1] -> (N, C_out, H, W) in [-1, 1]; H and W divisible by 2**n_downsampling."""

    def __init__(self, in_channels, out_channels, ngf=64, n_blocks=9, n_downsampling=2):
        super().__init__()
        if n_blocks < 0 or n_downsampling < 0 or ngf < 1:
            raise ValueError(f"ResnetGenerator needs ngf >= 1, n_blocks >= 0, n_downsampling >= 0; got ngf={ngf}, "
                             f"n_blocks={n_blocks}, n_downsampling={n_downsampling}")
        self.n_downsampling = n_downsampling
        self.pad3 = nn.ReflectionPad2d(3)
        self.stem = _conv(in_channels, ngf, 7)
        self.down = nn.CellList([_conv(ngf * 2 ** i, ngf * 2 ** (i + 1), 3, 2, 1) for i in range(n_downsampling)])
        width = ngf * 2 ** n_downsampling
        self.blocks = nn.CellList([ResnetBlock(width) for _ in range(n_blocks)])
        self.up = nn.CellList([
            nn.Conv2dTranspose(width // 2 ** i, width // 2 ** (i + 1), 3, 2, pad_mode="pad", padding=(1, 0, 1, 0),
                               has_bias=True, weight_init=Normal(INIT_GAIN), bias_init="zeros")
            for i in range(n_downsampling)])
        self.out = _conv(ngf, out_channels, 7)

    def construct(self, x):
        h = ops.relu(instance_norm(self.stem(self.pad3(x))))
        for conv in self.down:
            h = ops.relu(instance_norm(conv(h)))
        for block in self.blocks:
            h = block(h)
        for conv in self.up:
            h = ops.relu(instance_norm(conv(h)))
        return ops.tanh(self.out(self.pad3(h)))


class PatchDiscriminator(nn.Cell):
    """(N, C, H, W) -> (N, 1, h, w) patch logits (LSGAN: no sigmoid)."""

    def __init__(self, in_channels, ndf=64, n_layers=3):
        super().__init__()
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"PatchDiscriminator needs ndf >= 1 and n_layers >= 1; got ndf={ndf}, n_layers={n_layers}")
        widths = [in_channels] + [ndf * min(2 ** i, 8) for i in range(n_layers + 1)] + [1]
        self.strides = tuple([2] * n_layers + [1, 1])
        self.convs = nn.CellList([_conv(c_in, c_out, 4, stride, 1)
                                  for c_in, c_out, stride in zip(widths[:-1], widths[1:], self.strides)])

    def construct(self, x, fixed=False):
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = padded_conv(conv, x, self.strides[i], fixed)
            if i < last:
                if i > 0:
                    x = instance_norm(x)
                x = ops.leaky_relu(x, 0.2)
        return x


def lsgan_loss(logits, real):
    """``GANLoss(use_lsgan=True)``: mean squared error to 1 (real) or 0 (fake) over every patch."""
    return ops.mean(ops.square(logits - (1.0 if real else 0.0)))


def l1_loss(a, b):
    return ops.mean(ops.abs(a - b))

