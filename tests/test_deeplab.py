"""DeepLab-v2 and the DigitScenes net against PyTorch references written from the official code.

The PyTorch DeepLab-v2 (``tools.torch_reference.DeepLabV2``) follows AdaptSegNet's
``model/deeplab_multi.py``; the MindSpore model gets its weights through the converter
(``tools/convert_torchvision.py --arch deeplabv2_resnet101``) and must give the same main and
auxiliary logits. Tiny stage depths (1, 1, 1, 1) keep every graph small.
"""
import engine  # noqa: F401  (before MindSpore)

import math

import mindspore as ms
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # dev requirement: without it these tests are skipped
import torch.nn.functional as F
from mindspore import Tensor, nn, ops
from torch import nn as tnn

from engine.checkpoint import load_backbone_weights, read
from engine.registry import SEGMENTERS
from models.cnsn import plugin_parameter_names
from models.deeplab import DeepLabV2, DilatedSumClassifier, DigitScenesNet, digitscenes_net
from tools.convert_torchvision import ConversionError, convert_state_dict, main
from tools.torch_reference import DeepLabV2 as TorchDeepLabV2
from tools.torch_reference import DigitScenesNet as TorchDigitScenesNet
from tools.torch_reference import Bottleneck as TorchBottleneck
from tools.torch_reference import ResNet as TorchResNet

LAYERS = (1, 1, 1, 1)
K = 5
HEADS = {"layer6.": "classifier.", "layer5.": "aux_classifier."}  # official module -> ours


def randomised_torch_deeplab(style="caffe", official_two_rates=False, multi_level=True, seed=0):
    """Official network with weights of O(1) activations (its N(0, 0.01) init would make every
    comparison trivially small) and random BN statistics."""
    torch.manual_seed(seed)
    net = TorchDeepLabV2(LAYERS, K, style, official_two_rates, multi_level)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, tnn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, 1.0 / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)
            elif isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return net


def torch_state(net):
    return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def load_heads(model, torch_net):
    """Copy the official layer5/layer6 classifiers into ours (the converter drops classifiers)."""
    params = dict(model.parameters_and_names())
    for name, value in torch_state(torch_net).items():
        for official, ours in HEADS.items():
            if name.startswith(official):
                params[ours + name[len(official):]].set_data(Tensor(value))


def ms_deeplab_from_torch(torch_net, **kwargs):
    """A MindSpore DeepLab-v2 with the PyTorch network's weights, converted by the converter's code."""
    model = DeepLabV2(K, LAYERS, **kwargs)
    converted = convert_state_dict(torch_state(torch_net), "deeplabv2_resnet101", LAYERS)
    plugins = plugin_parameter_names(model.backbone)  # CrossNorm/SelfNorm keep their own init
    for name, param in model.backbone.parameters_and_names():
        if name not in plugins:
            param.set_data(Tensor(converted[name]))
    load_heads(model, torch_net)
    return model


def images(n=2, h=64, w=33, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 3, h, w)).astype(np.float32)


def run_torch(torch_net, x, train=False):
    torch_net.train(train)
    with torch.no_grad():
        aux, main_logits = torch_net(torch.from_numpy(x))
    return main_logits.numpy(), None if aux is None else aux.numpy()


def run_ms(model, x, train=False):
    model.set_train(train)
    logits, aux = model(Tensor(x))
    return logits.asnumpy(), tuple(a.asnumpy() for a in aux)


# --------------------------------------------------------------------------- shapes, parity
@pytest.mark.parametrize("style", ["caffe", "pytorch"])
def test_logits_match_official_pytorch_network(style):
    torch_net = randomised_torch_deeplab(style)
    model = ms_deeplab_from_torch(torch_net, style=style)
    x = images(h=64, w=33)  # conv1 gives 32 x 17: the ceil-mode pool gives 17 x 9 (floor: 16 x 9)
    expected, expected_aux = run_torch(torch_net, x)
    got, (got_aux,) = run_ms(model, x)
    assert expected.shape == got.shape == got_aux.shape == (2, K, 9, 5)  # output stride 8, ceil mode
    assert np.abs(expected).max() > 0.5 and np.abs(expected_aux).max() > 0.5
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_aux, expected_aux, atol=1e-4, rtol=0)


# H, W -> conv1 -> pool (ceil mode) -> layer2: 64 -> 32 -> 17 (floor: 16) -> 9 (8); 40 -> 20 -> 11 (10) -> 6 (5)
@pytest.mark.parametrize("size, out", [((65, 33), (9, 5)), ((64, 34), (9, 5)), ((70, 40), (9, 6)),
                                       ((129, 100), (17, 13))])
def test_output_stride_8_shapes_equal_official(size, out, pynative):
    torch_net = TorchDeepLabV2(LAYERS, K)
    model = DeepLabV2(K, LAYERS)
    model.set_train(False)
    x = images(1, *size)
    expected, expected_aux = run_torch(torch_net, x)
    got, (got_aux,) = run_ms(model, x)
    assert got.shape == got_aux.shape == expected.shape == expected_aux.shape == (1, K, *out)


def test_stages_are_dilated_not_strided():
    model = DeepLabV2(K, (2, 1, 2, 2))
    backbone = model.backbone
    for stage, dilation in ((backbone.layer3, 2), (backbone.layer4, 4)):
        for block in stage:
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == dilation
            assert {block.conv1.stride, block.conv2.stride, block.conv3.stride} == {(1, 1)}
    assert backbone.layer2[0].conv1.stride == (2, 2) and backbone.layer2[0].conv2.stride == (1, 1)  # caffe
    torchvision_style = DeepLabV2(K, (1, 1, 1, 1), style="pytorch").backbone
    assert torchvision_style.layer2[0].conv1.stride == (1, 1) and torchvision_style.layer2[0].conv2.stride == (2, 2)
    # downsample branches where the official _make_layer creates them: each stage's first block
    has_downsample = [[isinstance(block.downsample, nn.SequentialCell) for block in stage]
                      for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)]
    assert has_downsample == [[True, False], [True], [True, False], [True, False]]
    assert [conv.dilation for conv in model.classifier.conv2d_list] == [(r, r) for r in (6, 12, 18, 24)]


def test_official_two_rate_switch():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(1, 16, 13, 11)).astype(np.float32)

    def torch_conv(conv, x, rate):  # independent reference: PyTorch's dilated conv with the same weights
        return F.conv2d(torch.from_numpy(x), torch.from_numpy(conv.weight.asnumpy()),
                        torch.from_numpy(conv.bias.asnumpy()), padding=rate, dilation=rate).numpy()

    for official, used in ((True, 2), (False, 4)):
        head = DilatedSumClassifier(16, K, (6, 12, 18, 24), summed=2 if official else None)
        expected = sum(torch_conv(conv, f, rate) for conv, rate in zip(head.conv2d_list, (6, 12, 18, 24)[:used]))
        np.testing.assert_allclose(head(Tensor(f)).asnumpy(), expected, atol=1e-5, rtol=0)
    # and the whole network against the official one, bug included
    torch_net = randomised_torch_deeplab(official_two_rates=True)
    model = ms_deeplab_from_torch(torch_net, official_two_rates=True)
    x = images(1, 33, 33)
    expected, expected_aux = run_torch(torch_net, x)
    got, (got_aux,) = run_ms(model, x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_aux, expected_aux, atol=1e-4, rtol=0)
    assert len(model.classifier.conv2d_list) == 4  # rates 18/24 exist (checkpoints match) but are unused


# --------------------------------------------------------------------------- BatchNorm modes
def cross_entropy(logits, y):
    return ops.mean(ops.cross_entropy(logits, y, reduction="none"))


def make_sgd_step(model, lr=0.1):
    """A jitted SGD step ``step(x, y) -> (loss, aux)`` on main + 0.1 aux cross-entropy; ``aux`` is the
    model's tuple of auxiliary logits, possibly empty."""
    params = model.trainable_params()

    def loss_fn(x, y):
        logits, aux = model(x)
        loss = cross_entropy(logits, y)
        for aux_logits in aux:
            loss = loss + 0.1 * cross_entropy(aux_logits, y)
        return loss, aux

    grad_fn = ms.value_and_grad(loss_fn, None, params, has_aux=True)

    @ms.jit
    def step(x, y):
        (loss, aux), grads = grad_fn(x, y)
        updates = [ops.assign_sub(p, lr * g) for p, g in zip(params, grads)]
        return ops.depend(loss, updates), aux

    model.set_train(True)
    return lambda x, y: step(Tensor(x), Tensor(y))


@pytest.mark.parametrize("multi_level", [True, False])
def test_frozen_bn_is_eval_bn_and_untrained(multi_level):
    torch_net = randomised_torch_deeplab(multi_level=multi_level)
    model = ms_deeplab_from_torch(torch_net, multi_level=multi_level)
    names = {n for n, p in model.parameters_and_names() if p.requires_grad}
    assert not [n for n in names if n.endswith(("gamma", "beta", "moving_mean", "moving_variance"))]
    assert {n for n, _ in model.parameters_and_names()} >= {"backbone.bn1.gamma", "backbone.layer4.0.bn3.beta"}
    x = images(2, 33, 33)
    expected, expected_aux = run_torch(torch_net, x, train=False)  # the official network in eval mode
    got, got_aux = run_ms(model, x, train=True)  # frozen BN: training mode uses the stored statistics
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    if multi_level:
        np.testing.assert_allclose(got_aux[0], expected_aux, atol=1e-4, rtol=0)
    else:
        assert got_aux == ()

    bn_before = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if ".bn" in n or "downsample.1" in n}
    head_before = model.classifier.conv2d_list[0].weight.asnumpy().copy()
    conv_before = model.backbone.layer1[0].conv1.weight.asnumpy().copy()
    y = np.random.default_rng(2).integers(0, K, size=expected.shape[:1] + expected.shape[2:]).astype(np.int32)
    loss, aux = make_sgd_step(model)(x, y)
    assert len(aux) == (1 if multi_level else 0)  # an empty aux tuple passes through the jitted grad
    logp = expected - np.log(np.exp(expected).sum(1, keepdims=True))
    expected_loss = -np.take_along_axis(logp, y[:, None], 1).mean()
    if multi_level:
        logp_aux = expected_aux - np.log(np.exp(expected_aux).sum(1, keepdims=True))
        expected_loss += 0.1 * -np.take_along_axis(logp_aux, y[:, None], 1).mean()
    np.testing.assert_allclose(loss.asnumpy(), expected_loss, rtol=1e-4)
    for name, value in bn_before.items():  # affine and statistics both frozen
        np.testing.assert_array_equal(dict(model.parameters_and_names())[name].asnumpy(), value, err_msg=name)
    assert not np.allclose(model.classifier.conv2d_list[0].weight.asnumpy(), head_before)
    assert not np.allclose(model.backbone.layer1[0].conv1.weight.asnumpy(), conv_before)


def test_batch_stats_bn_matches_official_train_mode():
    torch_net = randomised_torch_deeplab()
    model = ms_deeplab_from_torch(torch_net, bn="batch_stats")
    assert not [n for n, p in model.parameters_and_names() if p.requires_grad and n.endswith(("gamma", "beta"))]
    x = images(2, 33, 33)
    initial_var = model.backbone.bn1.moving_variance.asnumpy().copy()
    expected, expected_aux = run_torch(torch_net, x, train=True)  # official: model.train(), batch statistics
    got, (got_aux,) = run_ms(model, x, train=True)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_aux, expected_aux, atol=1e-4, rtol=0)
    params = dict(model.parameters_and_names())
    assert np.abs(model.backbone.bn1.moving_variance.asnumpy() - initial_var).max() > 1e-2
    for name in ("bn1", "layer3.0.bn2", "layer4.0.downsample.1"):  # running statistics updated alike
        official = torch_net.get_submodule(name)
        for ours, theirs in (("moving_mean", official.running_mean), ("moving_variance", official.running_var)):
            np.testing.assert_allclose(params[f"backbone.{name}.{ours}"].asnumpy(), theirs.numpy(), rtol=1e-4,
                                       atol=1e-5)


# --------------------------------------------------------------------------- contract, converter
def test_registry_contract_and_head_params():
    model = SEGMENTERS.build("deeplabv2", K, layers=LAYERS)
    heads = model.head_params()
    assert {id(p) for p in heads} == {id(p) for p in model.classifier.trainable_params()
                                      + model.aux_classifier.trainable_params()} and len(heads) == 16
    assert {id(p) for p in heads} | {id(p) for p in model.backbone.trainable_params()} == \
        {id(p) for p in model.trainable_params()}
    assert not {id(p) for p in heads} & {id(p) for p in model.backbone.trainable_params()}
    single = SEGMENTERS.build("deeplabv2", K, layers=LAYERS, multi_level=False)
    assert single.aux_classifier is None and len(single.head_params()) == 8
    for bad, match in (({"style": "tf"}, "style='tf'"), ({"bn": "sync"}, "bn='sync'"),
                       ({"layers": (1, 1, 1)}, "4 positive block counts")):
        with pytest.raises(ValueError, match=match):
            SEGMENTERS.build("deeplabv2", K, **bad)
    with pytest.raises(ValueError, match="digitscenes_net has no CrossNorm"):
        digitscenes_net(11, norm_plugins={"selfnorm": True})


def test_converter_deeplab_init_file_with_scale_prefix(tmp_path):
    """(a) the DeepLab init layout: ``Scale.``-prefixed keys, a COCO classifier in layer5, legacy .pth format."""
    torch_net = randomised_torch_deeplab(seed=3)
    state = {f"Scale.{k}": v for k, v in torch_net.state_dict().items()
             if not k.startswith(("layer5.", "layer6.")) and not k.endswith("num_batches_tracked")}
    coco = tnn.Conv2d(2048, 21, 3)
    state.update({f"Scale.layer5.conv2d_list.{i}.{k}": v for i in range(4) for k, v in coco.state_dict().items()})
    pth, ckpt = tmp_path / "DeepLab_resnet_pretrained_init.pth", tmp_path / "init.ckpt"
    torch.save(state, pth, _use_new_zipfile_serialization=False)
    main([str(pth), str(ckpt), "--arch", "deeplabv2_resnet101", "--layers", "1,1,1,1"])
    names = set(read(str(ckpt))[0])
    assert "conv1.weight" in names and "layer1.0.downsample.1.moving_variance" in names
    assert not [n for n in names if n.startswith(("Scale.", "layer5", "layer6"))]

    model = DeepLabV2(K, LAYERS)
    load_backbone_weights(model.backbone, str(ckpt))
    load_heads(model, torch_net)
    x = images(1, 41, 57)
    expected, expected_aux = run_torch(torch_net, x)
    got, (got_aux,) = run_ms(model, x)
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_aux, expected_aux, atol=1e-4, rtol=0)


def test_converter_torchvision_resnet101_layout_for_pytorch_style(tmp_path):
    """(b) torchvision's layout (fc included) converts for style="pytorch" with the same names."""
    torch_net = randomised_torch_deeplab(style="pytorch", seed=4)
    backbone_state = {k: v for k, v in torch_net.state_dict().items() if not k.startswith(("layer5.", "layer6."))}
    torchvision_names = set(TorchResNet(TorchBottleneck, LAYERS, 1000).state_dict())
    state = {**backbone_state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    assert set(state) == torchvision_names  # the DeepLab backbone is named exactly like torchvision's ResNet
    torch.save(state, tmp_path / "resnet101.pth")
    main([str(tmp_path / "resnet101.pth"), str(tmp_path / "tv.ckpt"), "--arch", "deeplabv2_resnet101",
          "--layers", "1,1,1,1"])
    main([str(tmp_path / "resnet101.pth"), str(tmp_path / "cls.ckpt"), "--arch", "resnet101", "--layers", "1,1,1,1"])
    deeplab_ckpt, classification_ckpt = read(str(tmp_path / "tv.ckpt"))[0], read(str(tmp_path / "cls.ckpt"))[0]
    assert set(classification_ckpt) - set(deeplab_ckpt) == {"fc.weight", "fc.bias"}

    model = DeepLabV2(K, LAYERS, style="pytorch")
    load_backbone_weights(model.backbone, str(tmp_path / "cls.ckpt"))  # the resnet101 output loads as well
    load_backbone_weights(model.backbone, str(tmp_path / "tv.ckpt"))
    load_heads(model, torch_net)
    x = images(1, 40, 40)
    expected, expected_aux = run_torch(torch_net, x)
    got, (got_aux,) = run_ms(model, x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_aux, expected_aux, atol=1e-4, rtol=0)
    with pytest.raises(ConversionError, match="does not fit deeplabv2_resnet101"):  # a ResNet-50's depth
        convert_state_dict({k: v.numpy() for k, v in state.items()}, "deeplabv2_resnet101", (1, 1, 2, 1))


# --------------------------------------------------------------------------- DigitScenes net
def test_digitscenes_net_matches_pytorch_and_starts_like_it():
    model = SEGMENTERS.build("digitscenes_net", 11)
    assert isinstance(model, DigitScenesNet)
    torch_net = TorchDigitScenesNet(11)
    ms_params = [p for _, p in model.parameters_and_names()]
    torch_params = list(torch_net.parameters())
    assert [tuple(p.shape) for p in ms_params] == [tuple(p.shape) for p in torch_params]
    for weight, bias in zip(ms_params[::2], ms_params[1::2]):
        # PyTorch's default Conv2d init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias alike
        bound = 1.0 / math.sqrt(weight.shape[1] * 9)
        assert np.abs(weight.asnumpy()).max() <= bound + 1e-7 and np.abs(bias.asnumpy()).max() <= bound + 1e-7
        if weight.size > 10000:
            assert abs(weight.asnumpy().std() / (bound / math.sqrt(3)) - 1) < 0.05
    for ms_param, torch_param in zip(ms_params, torch_params):
        ms_param.set_data(Tensor(torch_param.detach().numpy()))
    heads = model.head_params()
    assert len(heads) == 8 and {id(p) for p in heads} == {id(p) for p in model.classifier.trainable_params()}
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3, 32, 32)).astype(np.float32)
    model.set_train(False)
    logits, aux = model(Tensor(x))
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(x)).numpy()
    assert aux == () and logits.shape == (2, 11, 32, 32)
    np.testing.assert_allclose(logits.asnumpy(), expected, atol=1e-5, rtol=0)
