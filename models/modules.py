"""Pieces shared by methods: gradient reversal, domain discriminator, bottleneck, heads."""
import mindspore as ms
from mindspore import nn, ops

from engine.registry import DISCRIMINATORS, HEADS


class GradientReverse(nn.Cell):
    """Identity forward; backward multiplies the incoming gradient by ``-coeff`` (Ganin & Lempitsky 2015).

    ``coeff`` is a Tensor input, so a schedule changes it without recompiling the graph.
    """

    def construct(self, x, coeff):
        return x

    def bprop(self, x, coeff, out, dout):
        return -coeff * dout, ops.zeros_like(coeff)


def grl_coefficient(progress, alpha=10.0, max_coeff=1.0):
    """DANN warm-up ``max * (2 / (1 + exp(-alpha p)) - 1)``, p in [0, 1]; works on Tensors in graph."""
    return max_coeff * (2.0 / (1.0 + ops.exp(-alpha * progress)) - 1.0)


@DISCRIMINATORS.register("mlp")
class DomainDiscriminator(nn.Cell):
    """MLP ``in -> hidden -> hidden -> 1`` returning the logit of "source"."""

    def __init__(self, in_features, hidden=1024, batch_norm=False, dropout=0.0):
        super().__init__()
        layers = []
        width = in_features
        for _ in range(2):
            layers.append(nn.Dense(width, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(p=dropout))
            width = hidden
        layers.append(nn.Dense(width, 1))
        self.net = nn.SequentialCell(layers)

    def construct(self, f):
        return self.net(f).squeeze(-1)


@HEADS.register("linear")
class LinearHead(nn.Cell):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Dense(in_features, num_classes)

    def construct(self, f):
        return self.fc(f)


@HEADS.register("cosine")
class CosineHead(nn.Cell):
    """``W l2norm(f) / temperature`` with no bias: the prototype classifier of MME and DANCE.

    Saito et al. (SSDA_MME ``model/basenet.py`` ``Predictor``; DANCE ``models/basenet.py``
    ``ResClassifier_MME``): features are L2-normalised, the weight rows (class prototypes) are
    not normalised in the forward pass; DANCE renormalises them after every update with
    :meth:`normalize_weights` (MME does not). (N, F) -> (N, K).
    """

    def __init__(self, in_features, num_classes, temperature=0.05):
        super().__init__()
        self.fc = nn.Dense(in_features, num_classes, has_bias=False)
        self.temperature = temperature

    def construct(self, f):
        return self.fc(l2_normalize(f)) / self.temperature

    def normalize_weights(self):
        """Rows of the weight scaled to unit L2 norm in place (usable inside a jitted step); returns the assign."""
        return ops.assign(self.fc.weight, l2_normalize(self.fc.weight))


def l2_normalize(x, eps=1e-12):
    """``x / max(||x||_2, eps)`` along the last axis (``torch.nn.functional.normalize``)."""
    norm = ops.sqrt(ops.sum(x * x, -1, keepdim=True))
    return x / ops.maximum(norm, eps)


class Bottleneck(nn.Cell):
    """``Dense -> BatchNorm1d -> ReLU`` used between backbone and head by the DA literature."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.net = nn.SequentialCell(nn.Dense(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU())

    def construct(self, f):
        return self.net(f)


def padded_conv(conv, x, stride, fixed=False):
    """``conv``'s weights applied to ``x`` with padding 1 (the discriminators' 4x4 convolutions); ``fixed``: the
    weights behind ``stop_gradient``, so a generator's adversarial term moves only the generator."""
    weight, bias = conv.weight, conv.bias
    if fixed:
        weight, bias = ops.stop_gradient(weight), ops.stop_gradient(bias)
    return ops.conv2d(x, weight, bias, stride=stride, pad_mode="pad", padding=1)


def binary_cross_entropy_with_logits(logits, target):
    """Mean BCE on logits, numerically stable: max(z,0) - z*y + log(1 + exp(-|z|))."""
    return ops.mean(ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits))))


def binary_accuracy(logits, target):
    return ops.mean(((logits > 0).astype(ms.float32) == target).astype(ms.float32))


@DISCRIMINATORS.register("fc")
class FCDiscriminator(nn.Cell):
    """AdaptSegNet's fully-convolutional discriminator (Tsai et al., CVPR 2018, ``model/discriminator.py``).

    Five 4x4 stride-2 convolutions ``C -> ndf -> 2 ndf -> 4 ndf -> 8 ndf -> 1`` (padding 1, bias),
    LeakyReLU(0.2) between them, no normalisation: (N, C, H, W) class probabilities to a
    (N, 1, H/32, W/32) map of "target" logits. ``construct(x, fixed=True)`` runs the same
    convolutions with the weights behind ``stop_gradient``: the generator's adversarial term
    then moves only the generator, as the official code's ``requires_grad = False`` on D does.
    """

    def __init__(self, in_channels, ndf=64):
        super().__init__()
        widths = (in_channels, ndf, ndf * 2, ndf * 4, ndf * 8, 1)
        self.convs = nn.CellList([nn.Conv2d(c_in, c_out, 4, 2, pad_mode="pad", padding=1, has_bias=True)
                                  for c_in, c_out in zip(widths[:-1], widths[1:])])

    def construct(self, x, fixed=False):
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = padded_conv(conv, x, 2, fixed)
            if i < last:
                x = ops.leaky_relu(x, 0.2)
        return x
