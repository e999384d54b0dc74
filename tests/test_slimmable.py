"""Slimmable layers, backbones, FLOPs/params counter and MindIR export (issue #13, models/slimmable.py, export.py)."""
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from models.slimmable import (DEFAULT_WIDTHS, SlimConv2d, SlimDense, SlimLeNet, SlimResNet, SwitchableBatchNorm2d,
                              active_channels, classifier_subnet, count_flops_params)
from tests.conftest import ROOT

RNG = np.random.default_rng(0)


def index(i):
    return Tensor(i, ms.int32)


def randomize(cell, scale=0.3):
    """Random values in every parameter (BN variances positive) so that widths and rows differ."""
    for name, param in cell.parameters_and_names():
        value = RNG.normal(0.0, scale, param.shape).astype(np.float32)
        if name.endswith("moving_variance"):
            value = RNG.uniform(0.5, 2.0, param.shape).astype(np.float32)
        elif name.endswith("gamma"):
            value = RNG.uniform(0.5, 1.5, param.shape).astype(np.float32)
        param.set_data(Tensor(value))


def conv2d_reference(x, weight, bias, stride, padding):
    """Direct convolution by loops over the kernel taps (cross-correlation, as every DL framework)."""
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    out = np.zeros((n, c_out, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, i, j])
    return out + bias.reshape(1, -1, 1, 1)


def zero_beyond(x, active):
    x = x.copy()
    x[:, active:] = 0
    return x


# ---------------------------------------------------------------- (1) layers: slice == plain layer == NumPy
@pytest.mark.parametrize("width_index", [1, 4])
def test_slim_conv_equals_sliced_conv_and_numpy(width_index):
    conv = SlimConv2d(10, 12, 3, DEFAULT_WIDTHS, stride=2, pad_mode="pad", padding=1, has_bias=True)
    randomize(conv)
    width = DEFAULT_WIDTHS[width_index]
    c_in, c_out = active_channels(10, width), active_channels(12, width)
    x = zero_beyond(RNG.normal(size=(2, 10, 7, 7)).astype(np.float32), c_in)  # the previous layer's mask
    y = conv(Tensor(x), index(width_index)).asnumpy()
    ref = conv2d_reference(x[:, :c_in].astype(np.float64), conv.weight.asnumpy()[:c_out, :c_in],
                           conv.bias.asnumpy()[:c_out], 2, 1)
    np.testing.assert_allclose(y[:, :c_out], ref, rtol=1e-5, atol=1e-5)
    assert not y[:, c_out:].any()
    plain = conv.sliced(width_index)
    assert isinstance(plain, nn.Conv2d) and plain.weight.shape == (c_out, c_in, 3, 3)
    np.testing.assert_allclose(plain(Tensor(x[:, :c_in])).asnumpy(), ref, rtol=1e-5, atol=1e-5)


def test_slim_dense_equals_sliced_dense_and_numpy():
    width_index, block = 3, 4  # 0.35 of 5 channels x 4 values each: the first 2 x 4 inputs
    dense = SlimDense(20, 9, DEFAULT_WIDTHS, in_block=block)
    randomize(dense)
    c_in, c_out = active_channels(5, 0.35) * block, active_channels(9, 0.35)
    assert (c_in, c_out) == (8, 3)
    x = RNG.normal(size=(3, 20)).astype(np.float32)
    x[:, c_in:] = 0
    y = dense(Tensor(x), index(width_index)).asnumpy()
    ref = x[:, :c_in] @ dense.weight.asnumpy()[:c_out, :c_in].T + dense.bias.asnumpy()[:c_out]
    np.testing.assert_allclose(y[:, :c_out], ref, rtol=1e-5, atol=1e-6)
    assert not y[:, c_out:].any()
    np.testing.assert_allclose(dense.sliced(width_index)(Tensor(x[:, :c_in])).asnumpy(), ref, rtol=1e-5, atol=1e-6)


def test_switchable_bn_inference_uses_its_row():
    bn = SwitchableBatchNorm2d(8, DEFAULT_WIDTHS)
    randomize(bn)
    bn.set_train(False)
    width_index, active = 2, 4
    x = RNG.normal(size=(2, 8, 3, 3)).astype(np.float32)
    y = bn(Tensor(x), index(width_index)).asnumpy()
    row = {n: getattr(bn, n).asnumpy()[width_index, :active].reshape(1, -1, 1, 1)
           for n in ("gamma", "beta", "moving_mean", "moving_variance")}
    ref = (x[:, :active] - row["moving_mean"]) / np.sqrt(row["moving_variance"] + 1e-5) * row["gamma"] + row["beta"]
    np.testing.assert_allclose(y[:, :active], ref, rtol=1e-5, atol=1e-5)
    assert not y[:, active:].any()  # masked after BN: beta does not leak into inactive channels
    plain = bn.sliced(width_index)
    plain.set_train(False)
    np.testing.assert_allclose(plain(Tensor(x[:, :active])).asnumpy(), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- (2) BN statistics are private per width
@pytest.mark.parametrize("width_index", [0, 3])
def test_switchable_bn_training_updates_only_its_row(width_index):
    channels = 8
    bn = SwitchableBatchNorm2d(channels, DEFAULT_WIDTHS)
    randomize(bn)
    before = {n: getattr(bn, n).asnumpy().copy() for n in ("moving_mean", "moving_variance")}
    active = active_channels(channels, DEFAULT_WIDTHS[width_index])
    x = RNG.normal(1.0, 2.0, size=(4, channels, 3, 3)).astype(np.float32)  # inactive channels non-zero too
    plain = nn.BatchNorm2d(active, eps=1e-5, momentum=0.9)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        getattr(plain, name).set_data(Tensor(getattr(bn, name).asnumpy()[width_index, :active]))
    bn.set_train(True)
    plain.set_train(True)
    y = bn(Tensor(x), index(width_index)).asnumpy()
    y_plain = plain(Tensor(x[:, :active])).asnumpy()
    np.testing.assert_allclose(y[:, :active], y_plain, rtol=1e-5, atol=1e-5)
    assert not y[:, active:].any()
    for name in ("moving_mean", "moving_variance"):
        after = getattr(bn, name).asnumpy()
        others = [r for r in range(len(DEFAULT_WIDTHS)) if r != width_index]
        np.testing.assert_array_equal(after[others], before[name][others])
        np.testing.assert_array_equal(after[width_index, active:], before[name][width_index, active:])
        np.testing.assert_allclose(after[width_index, :active], getattr(plain, name).asnumpy(), rtol=1e-5)
    # and the arithmetic itself: momentum 0.9 (MindSpore convention), unbiased variance for the running value
    batch = x[:, :active].astype(np.float64)
    np.testing.assert_allclose(bn.moving_mean.asnumpy()[width_index, :active],
                               0.9 * before["moving_mean"][width_index, :active] + 0.1 * batch.mean((0, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.asnumpy()[width_index, :active],
                               0.9 * before["moving_variance"][width_index, :active]
                               + 0.1 * batch.var((0, 2, 3), ddof=1), rtol=1e-5)


# ---------------------------------------------------------------- (3) networks: slim at width w == subnet(w)
def test_slim_lenet_full_width_is_lenet():
    from models.lenet import LeNet

    slim, plain = SlimLeNet(), LeNet()
    randomize(slim, 0.1)
    slim_params, plain_params = slim.trainable_params(), plain.trainable_params()
    assert [p.shape for p in slim_params] == [p.shape for p in plain_params]
    for source, target in zip(slim_params, plain_params):
        target.set_data(Tensor(source.asnumpy()))
    x = Tensor(RNG.normal(size=(3, 3, 28, 28)).astype(np.float32))
    np.testing.assert_allclose(slim(x).asnumpy(), plain(x).asnumpy(), rtol=1e-5, atol=1e-6)


def test_slim_lenet_every_width_equals_its_subnet():
    slim = SlimLeNet()
    randomize(slim, 0.1)
    x = Tensor(RNG.normal(size=(3, 3, 28, 28)).astype(np.float32))
    for i, width in enumerate(slim.widths):
        out = slim(x, index(i)).asnumpy()
        sub = slim.subnet(width)
        sub_out = sub(x).asnumpy()
        assert sub_out.shape == (3, active_channels(100, width)) and out.shape == (3, 100)
        np.testing.assert_allclose(out[:, :sub.out_features], sub_out, rtol=1e-5, atol=1e-6)
        assert not out[:, sub.out_features:].any()


def test_masked_gradients_equal_sliced_gradients():
    """Training with masks = training the sliced network: same gradients, zero beyond the width."""
    slim = SlimLeNet()
    randomize(slim, 0.1)
    width = 0.25
    sub = slim.subnet(width)
    x = Tensor(RNG.normal(size=(2, 3, 28, 28)).astype(np.float32))
    target = Tensor(RNG.normal(size=(2, sub.out_features)).astype(np.float32))

    def slim_loss(x):
        return ((slim(x, index(slim.width_index(width)))[:, :sub.out_features] - target) ** 2).sum()

    def sub_loss(x):
        return ((sub(x) - target) ** 2).sum()

    slim_grads = ms.grad(slim_loss, None, slim.trainable_params())(x)
    sub_grads = ms.grad(sub_loss, None, sub.trainable_params())(x)
    for slim_grad, sub_grad in zip(slim_grads, sub_grads):
        slim_grad, sub_grad = slim_grad.asnumpy(), sub_grad.asnumpy()
        active = tuple(slice(0, n) for n in sub_grad.shape)
        np.testing.assert_allclose(slim_grad[active], sub_grad, rtol=1e-4, atol=1e-6)
        outside = np.ones(slim_grad.shape, bool)
        outside[active] = False
        assert not slim_grad[outside].any() and np.abs(sub_grad).max() > 0


def test_slim_resnet_widths_equal_subnets_and_full_width_is_resnet(tmp_path):
    """ResNet-50's stages and channel counts with (1, 2, 1, 1) blocks (time), on a 32 x 32 input."""
    from models.resnet import Bottleneck, ResNet

    layers = (1, 2, 1, 1)  # every kind of block: downsampling (stride 1 and 2) and identity shortcut
    slim = SlimResNet(layers, image_size=32)
    randomize(slim, 0.05)
    slim.set_train(False)
    x = Tensor(RNG.normal(size=(2, 3, 32, 32)).astype(np.float32))
    outs = {}
    for width in (1.0, 0.25):
        out = slim(x, index(slim.width_index(width))).asnumpy()
        sub = slim.subnet(width)
        sub.set_train(False)
        sub_out = sub(x).asnumpy()
        assert sub_out.shape == (2, active_channels(2048, width))
        np.testing.assert_allclose(out[:, :sub.out_features], sub_out, rtol=1e-4, atol=1e-5)
        assert not out[:, sub.out_features:].any() and np.abs(sub_out).max() > 1e-3
        outs[width] = sub
    # width 1.0 holds exactly the parameter names (torchvision's) and shapes of the plain ResNet
    plain = ResNet(Bottleneck, layers)
    plain_shapes = {n: p.shape for n, p in plain.parameters_and_names()}
    assert {n: p.shape for n, p in outs[1.0].parameters_and_names()} == plain_shapes
    # the pretrained path: a plain ResNet's weights (convert_torchvision.py's names) go into every width's BN row
    randomize(plain, 0.05)
    plain.set_train(False)
    ms.save_checkpoint(plain, str(tmp_path / "plain.ckpt"))
    slim.load_pretrained(str(tmp_path / "plain.ckpt"))
    assert np.array_equal(slim.layer2[1].bn2.gamma.asnumpy()[5], plain.layer2[1].bn2.gamma.asnumpy())
    np.testing.assert_allclose(slim(x).asnumpy(), plain(x).asnumpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- (4) FLOPs (multiply-adds) and parameters
def test_resnet50_counts_match_torchvision():
    # torchvision resnet50 (1000 classes): 25,557,032 parameters, 4.09 GMACs (4,089,184,256)
    assert count_flops_params("slim_resnet50", 1.0, 224, 3, num_classes=1000) == (4089.184256, 25557032)
    mflops = [count_flops_params("slim_resnet50", w, 224, 3)[0] for w in DEFAULT_WIDTHS]
    assert mflops == sorted(mflops, reverse=True) and 50 < mflops[0] / mflops[-1] < 64


def test_lenet_counts_match_hand_formula_and_subnet_params():
    slim = SlimLeNet()
    for width in DEFAULT_WIDTHS:
        c1, c2, f = (active_channels(c, width) for c in (32, 48, 100))
        # conv5 on 28 -> 24x24, pool -> 12, conv5 -> 8x8, pool -> 4x4, fc 16*c2 -> f -> f, head f -> 10
        macs = 25 * 3 * c1 * 24 * 24 + 25 * c1 * c2 * 8 * 8 + 16 * c2 * f + f * f + f * 10
        params = sum(p.size for p in slim.subnet(width).trainable_params()) + f * 10 + 10
        assert count_flops_params("slim_lenet", width, 28, 3, num_classes=10) == (pytest.approx(macs / 1e6), params)


def test_resnet_counts_match_subnet_shapes(pynative):
    """Independent count: run the plain subnet and add up conv/dense multiply-adds from the real output shapes."""
    from engine.registry import BACKBONES

    slim = BACKBONES.build("slim_resnet50", image_size=42)  # odd sides after the stem
    for width in (0.5, 0.125):
        sub = slim.subnet(width)
        sub.set_train(False)
        macs = []

        def hook(cell, inputs, output):
            per_output = cell.in_channels * cell.kernel_size[0] * cell.kernel_size[1]
            macs.append(per_output * output.size // output.shape[0])

        for _, cell in sub.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                cell.register_forward_hook(hook)
        sub(Tensor(np.zeros((1, 3, 42, 42), np.float32)))
        params = sum(p.size for p in sub.trainable_params())
        assert count_flops_params("slim_resnet50", width, 42, 3) == (pytest.approx(sum(macs) / 1e6), params)


# ---------------------------------------------------------------- (5) MindIR export round trip
def build_and_save(tmp_path, config, opts, name="model"):
    from engine import checkpoint
    from engine.config import load_config
    from engine.trainer import build_method

    cfg = load_config(config, opts)
    method = build_method(cfg)
    randomize(method.model, 0.1)
    ckpt = str(tmp_path / f"{name}.ckpt")
    checkpoint.save(ckpt, method)
    return method.model, ckpt


def load_mindir(path, x):
    graph = nn.GraphCell(ms.load(path))
    return graph(Tensor(x)).asnumpy()


def test_export_slim_width_round_trip(tmp_path):
    import export

    opts = ["model.backbone=slim_lenet"]
    model, ckpt = build_and_save(tmp_path, "configs/digits/source_only_optdigits.yaml", opts)
    model.set_train(False)
    x = RNG.normal(size=(1, 3, 28, 28)).astype(np.float32)
    width = 0.35
    out = export.main(["--config", "configs/digits/source_only_optdigits.yaml", "--ckpt", ckpt, "--width", str(width),
                       "--device", "CPU", "--out", str(tmp_path / "slim.mindir"), "--opt", *opts])
    features = model.backbone(Tensor(x), index(model.backbone.width_index(width)))
    expected = model.head(model.bottleneck(features)).asnumpy()
    np.testing.assert_allclose(load_mindir(out, x), expected, rtol=1e-5, atol=1e-5)
    # the exported net is the narrow one: its head reads only the width's 35 features
    assert classifier_subnet(model, width).head.fc.weight.shape == (10, 35)


def test_classifier_subnet_with_bottleneck():
    """With a bottleneck, the bottleneck (not the head) reads only the width's features."""
    from models.classifier import Classifier

    model = Classifier(SlimLeNet(), 10, bottleneck_dim=16)
    randomize(model, 0.1)
    model.set_train(False)
    x = Tensor(RNG.normal(size=(2, 3, 28, 28)).astype(np.float32))
    deployed = classifier_subnet(model, 0.5)
    deployed.set_train(False)
    assert deployed.bottleneck.net[0].weight.shape == (16, 50) and deployed.head.fc.weight.shape == (10, 16)
    expected = model.head(model.bottleneck(model.backbone(x, index(2)))).asnumpy()
    np.testing.assert_allclose(deployed(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_export_plain_dann_round_trip(tmp_path):
    import export

    config = "configs/digits/dann_optdigits.yaml"
    model, ckpt = build_and_save(tmp_path, config, [])
    model.set_train(False)
    x = RNG.normal(size=(1, 3, 28, 28)).astype(np.float32)
    out = export.main(["--config", config, "--ckpt", ckpt, "--device", "CPU"])
    assert out == str(tmp_path / "dann_optdigits.mindir")
    np.testing.assert_allclose(load_mindir(out, x), model(Tensor(x))[0].asnumpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- (6) CLI errors: one line, no traceback
def test_export_cli_errors(tmp_path):
    def run(*args):
        proc = subprocess.run([sys.executable, "export.py", "--device", "CPU", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
        return lines[0]

    config = "configs/digits/dann_optdigits.yaml"
    assert "--width must be a number in (0, 1]" in run("--config", config, "--ckpt", "x.ckpt", "--width", "wide")
    assert "--format ONNX is not supported" in run("--config", config, "--ckpt", "x.ckpt", "--format", "ONNX")
    missing = str(tmp_path / "missing.ckpt")
    assert f"checkpoint not found: {missing}" in run("--config", config, "--ckpt", missing)
    _, ckpt = build_and_save(tmp_path, config, [])
    line = run("--config", config, "--ckpt", ckpt, "--width", "0.5")
    assert "--width applies to slimmable backbones" in line and "drop --width" in line
    _, slim_ckpt = build_and_save(tmp_path, config, ["model.backbone=slim_lenet"], "slim")
    line = run("--config", config, "--ckpt", slim_ckpt, "--width", "0.3", "--opt", "model.backbone=slim_lenet")
    assert "width 0.3 is not one of" in line and "0.35" in line


def test_single_width_backbone_starts_as_the_plain_narrow_network():
    """``width=w``: construct runs at w without an index, and each layer's active slice has the plain narrow
    layer's init range (MindSpore's default conv/dense init is uniform in +-1/sqrt(fan_in))."""
    from models.slimmable import SlimLeNet

    narrow = SlimLeNet(width=0.25)
    assert int(narrow.default_width_index.asnumpy()) == narrow.widths.index(0.25)
    index = narrow.width_index(0.25)
    for layer in (narrow.conv2, narrow.fc1, narrow.fc2):
        c_in, c_out = layer.active_in(index), layer.active_out(index)
        fan_in = c_in * (layer.kernel_size[0] * layer.kernel_size[1] if hasattr(layer, "kernel_size") else 1)
        bound = float(np.abs(layer.weight.asnumpy()[:c_out, :c_in]).max())
        assert 0.9 / np.sqrt(fan_in) < bound <= 1.0 / np.sqrt(fan_in) + 1e-6, (layer, bound, 1 / np.sqrt(fan_in))
    x = Tensor(np.random.default_rng(0).normal(size=(2, 3, 28, 28)).astype(np.float32))
    np.testing.assert_allclose(narrow(x).asnumpy(), narrow(x, Tensor(index, ms.int32)).asnumpy(), rtol=0, atol=0)
