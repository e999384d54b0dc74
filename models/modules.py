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


class Bottleneck(nn.Cell):
    """``Dense -> BatchNorm1d -> ReLU`` used between backbone and head by the DA literature."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.net = nn.SequentialCell(nn.Dense(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU())

    def construct(self, f):
        return self.net(f)


def binary_cross_entropy_with_logits(logits, target):
    """Mean BCE on logits, numerically stable: max(z,0) - z*y + log(1 + exp(-|z|))."""
    return ops.mean(ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits))))


def binary_accuracy(logits, target):
    return ops.mean(((logits > 0).astype(ms.float32) == target).astype(ms.float32))
