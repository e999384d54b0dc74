"""Gradient reversal and the DANN loss against NumPy references of the paper's formulas."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from losses.dann import DomainAdversarialLoss
from models.modules import DomainDiscriminator, GradientReverse, binary_cross_entropy_with_logits, grl_coefficient


class Scaled(nn.Cell):
    """y = sum(w * GRL(x)) so dy/dx = -coeff * w."""

    def __init__(self):
        super().__init__()
        self.grl = GradientReverse()

    def construct(self, x, w, coeff):
        return (self.grl(x, coeff) * w).sum()


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_grl_identity_forward_reversed_scaled_backward(mode, request):
    if mode == "pynative":
        request.getfixturevalue("pynative")
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    coeff = np.float32(0.37)
    np.testing.assert_array_equal(GradientReverse()(Tensor(x), Tensor(coeff)).asnumpy(), x)
    grad = ms.grad(Scaled(), grad_position=0)(Tensor(x), Tensor(w), Tensor(coeff)).asnumpy()
    np.testing.assert_allclose(grad, -coeff * w, rtol=1e-6)


def test_grl_coefficient_schedule():
    p = np.array([0.0, 0.1, 0.5, 1.0], np.float32)
    expected = 2.0 / (1.0 + np.exp(-10.0 * p)) - 1.0
    got = grl_coefficient(Tensor(p), 10.0, 1.0).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert got[0] == 0.0


def test_domain_adversarial_loss_matches_numpy_bce():
    rng = np.random.default_rng(1)
    disc = DomainDiscriminator(5, hidden=8)
    loss_cell = DomainAdversarialLoss(disc)
    f_s, f_t = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    loss, acc = loss_cell(Tensor(f_s), Tensor(f_t), Tensor(np.float32(1.0)))
    z = disc(Tensor(np.concatenate([f_s, f_t]))).asnumpy().astype(np.float64)
    y = np.concatenate([np.ones(6), np.zeros(4)])
    prob = 1.0 / (1.0 + np.exp(-z))
    bce = -np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob))
    np.testing.assert_allclose(loss.asnumpy(), bce, rtol=1e-5)
    np.testing.assert_allclose(acc.asnumpy(), np.mean((z > 0) == y), rtol=1e-6)


def test_dann_features_get_reversed_gradient_of_discriminator_loss():
    """d loss / d f through the GRL equals -coeff times the gradient without it."""
    disc = DomainDiscriminator(5, hidden=8)
    loss_cell = DomainAdversarialLoss(disc)
    rng = np.random.default_rng(2)
    f_s, f_t = Tensor(rng.normal(size=(3, 5)).astype(np.float32)), Tensor(rng.normal(size=(3, 5)).astype(np.float32))
    coeff = 0.6

    def reversed_loss(a, b):
        return loss_cell(a, b, Tensor(np.float32(coeff)))[0]

    g_rev = ms.grad(reversed_loss, grad_position=0)(f_s, f_t)

    def plain(a, b):
        d = disc(ops.concat((a, b)))
        return binary_cross_entropy_with_logits(d, ops.concat((ops.ones(3, ms.float32), ops.zeros(3, ms.float32))))

    g_plain = ms.grad(plain, grad_position=0)(f_s, f_t)
    np.testing.assert_allclose(g_rev.asnumpy(), -coeff * g_plain.asnumpy(), rtol=1e-5, atol=1e-7)
