"""CycleGAN's networks and losses (models/translation.py) against PyTorch written from the reference.

The PyTorch side is ``ResnetGenerator``, ``ResnetBlock``, ``NLayerDiscriminator``, ``GANLoss`` and
``init_weights`` of jhoffman/pytorch-CycleGAN-and-pix2pix ``models/networks.py`` (CyCADA's fork) with
``norm='instance'`` (``InstanceNorm2d(affine=False)``, so convolutions have biases) and no dropout.
tests/test_cycada.py reuses these classes for its step-for-step comparison.
"""
import functools

import engine  # noqa: F401  (runtime settings before MindSpore loads)
import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor
from torch import nn as tnn

from models.translation import PatchDiscriminator, ResnetGenerator, instance_norm, l1_loss, lsgan_loss

NORM = functools.partial(tnn.InstanceNorm2d, affine=False)


class TorchResnetBlock(tnn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_block = tnn.Sequential(tnn.ReflectionPad2d(1), tnn.Conv2d(dim, dim, 3, padding=0, bias=True),
                                         NORM(dim), tnn.ReLU(True), tnn.ReflectionPad2d(1),
                                         tnn.Conv2d(dim, dim, 3, padding=0, bias=True), NORM(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class TorchResnetGenerator(tnn.Module):
    """networks.py ``ResnetGenerator`` (its ``n_downsampling = 2`` made an argument)."""

    def __init__(self, input_nc, output_nc, ngf=64, n_blocks=6, n_downsampling=2):
        super().__init__()
        model = [tnn.ReflectionPad2d(3), tnn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=True), NORM(ngf),
                 tnn.ReLU(True)]
        for i in range(n_downsampling):
            mult = 2 ** i
            model += [tnn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                      NORM(ngf * mult * 2), tnn.ReLU(True)]
        mult = 2 ** n_downsampling
        model += [TorchResnetBlock(ngf * mult) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [tnn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1,
                                          output_padding=1, bias=True), NORM(int(ngf * mult / 2)), tnn.ReLU(True)]
        model += [tnn.ReflectionPad2d(3), tnn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), tnn.Tanh()]
        self.model = tnn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class TorchNLayerDiscriminator(tnn.Module):
    """networks.py ``NLayerDiscriminator`` with instance norm, ``use_sigmoid=False`` (LSGAN)."""

    def __init__(self, input_nc, ndf=64, n_layers=3):
        super().__init__()
        kw, padw = 4, 1
        sequence = [tnn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), tnn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
            sequence += [tnn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw,
                                    bias=True), NORM(ndf * nf_mult), tnn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        sequence += [tnn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=True),
                     NORM(ndf * nf_mult), tnn.LeakyReLU(0.2, True)]
        sequence += [tnn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.model = tnn.Sequential(*sequence)

    def forward(self, x):
        return self.model(x)


def torch_init_weights(net, gain=0.02):
    """networks.py ``init_weights(net, 'normal', gain)``."""
    for m in net.modules():
        name = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            tnn.init.normal_(m.weight.data, 0.0, gain)
            if getattr(m, "bias", None) is not None:
                tnn.init.constant_(m.bias.data, 0.0)


def torch_lsgan(pred, real):
    """networks.py ``GANLoss(use_lsgan=True)``: ``MSELoss`` against a target of 1 or 0 expanded to ``pred``."""
    target = torch.tensor(1.0 if real else 0.0).expand_as(pred)
    return tnn.MSELoss()(pred, target)


def load_torch(ms_net, torch_net):
    """Copy ``torch_net``'s parameters into ``ms_net`` by order, checking each shape."""
    ms_params = list(ms_net.get_parameters())
    torch_params = [p.detach().numpy().copy() for p in torch_net.parameters()]
    assert len(ms_params) == len(torch_params)
    for mine, theirs in zip(ms_params, torch_params):
        assert tuple(mine.shape) == theirs.shape, mine.name
        mine.set_data(Tensor(theirs))


@pytest.mark.parametrize("size, ngf, n_blocks, n_down", [(28, 4, 2, 2),
                                                          pytest.param(32, 3, 1, 2, marks=pytest.mark.slow),
                                                          pytest.param(16, 2, 1, 1, marks=pytest.mark.slow)])
def test_generator_matches_the_reference(size, ngf, n_blocks, n_down):
    torch.manual_seed(0)
    ref = TorchResnetGenerator(3, 3, ngf, n_blocks, n_down)
    torch_init_weights(ref)
    net = ResnetGenerator(3, 3, ngf, n_blocks, n_down)
    load_torch(net, ref)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    want = ref(torch.from_numpy(x)).detach().numpy()
    got = net(Tensor(x)).asnumpy()
    assert got.shape == want.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size, layers", [(28, 3), pytest.param(32, 3, marks=pytest.mark.slow),
                                           pytest.param(16, 2, marks=pytest.mark.slow)])
def test_patch_discriminator_matches_the_reference(size, layers):
    torch.manual_seed(1)
    ref = TorchNLayerDiscriminator(3, 4, layers)
    torch_init_weights(ref)
    net = PatchDiscriminator(3, 4, layers)
    load_torch(net, ref)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    want = ref(torch.from_numpy(x)).detach().numpy()
    for fixed in (False, True):  # stop_gradient on the weights changes nothing forward
        got = net(Tensor(x), fixed).asnumpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_fixed_discriminator_passes_gradient_to_its_input_only():
    net = PatchDiscriminator(3, 4, 2)
    x = Tensor(np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32))

    def loss(inp, fixed):
        return lsgan_loss(net(inp, fixed), True)

    weights = net.trainable_params()
    for fixed, expect_weight_grad in ((False, True), (True, False)):
        grad_x, grad_w = ms.grad(loss, grad_position=0, weights=weights)(x, fixed)
        assert np.abs(grad_x.asnumpy()).sum() > 0
        assert (max(np.abs(g.asnumpy()).max() for g in grad_w) > 0) == expect_weight_grad


def test_initialisation_is_normal_002_with_zero_bias():
    ms.set_seed(3)
    net = ResnetGenerator(3, 3, 16, 2)
    for name, p in net.parameters_and_names():
        v = p.asnumpy()
        if name.endswith("bias"):
            assert not v.any(), name
        elif v.size >= 2000:
            assert abs(v.std() - 0.02) < 0.002 and abs(v.mean()) < 0.002, name


def test_losses_against_numpy():
    rng = np.random.default_rng(4)
    pred = rng.normal(size=(3, 1, 2, 2)).astype(np.float32)
    a, b = rng.normal(size=(2, 3, 4, 4)).astype(np.float32), rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    assert float(lsgan_loss(Tensor(pred), True).asnumpy()) == pytest.approx(np.mean((pred - 1) ** 2), rel=1e-6)
    assert float(lsgan_loss(Tensor(pred), False).asnumpy()) == pytest.approx(np.mean(pred ** 2), rel=1e-6)
    for real in (True, False):
        assert float(lsgan_loss(Tensor(pred), real).asnumpy()) == pytest.approx(
            float(torch_lsgan(torch.from_numpy(pred), real)), rel=1e-6)
    assert float(l1_loss(Tensor(a), Tensor(b)).asnumpy()) == pytest.approx(np.abs(a - b).mean(), rel=1e-6)
    x = rng.normal(2.0, 3.0, size=(2, 3, 5, 5)).astype(np.float32)
    want = tnn.InstanceNorm2d(3, affine=False)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(instance_norm(Tensor(x)).asnumpy(), want, rtol=1e-4, atol=1e-5)


def test_bad_sizes_fail_with_one_line():
    with pytest.raises(ValueError, match="n_blocks >= 0"):
        ResnetGenerator(3, 3, 8, -1)
    with pytest.raises(ValueError, match="n_layers >= 1"):
        PatchDiscriminator(3, 8, 0)
