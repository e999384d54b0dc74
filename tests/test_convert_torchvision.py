"""torchvision -> MindSpore ResNet conversion: logits of converted tiny ResNets match PyTorch."""
import engine  # noqa: F401  (before MindSpore)

import sys
import types

import mindspore as ms
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # dev requirement: without it these tests are skipped
from mindspore import nn
from torch import nn as tnn

from engine.checkpoint import load_backbone_weights, read
from engine.registry import BACKBONES
from engine.runtime import init_mindspore
from models import resnet
from tools.convert_torchvision import ConversionError, convert_state_dict, main
from tools.torch_reference import BasicBlock as TorchBasicBlock
from tools.torch_reference import Bottleneck as TorchBottleneck
from tools.torch_reference import ResNet as TorchResNet

NUM_CLASSES = 7


def randomised_torch_resnet(block, layers, seed=0):
    torch.manual_seed(seed)
    net = TorchResNet(block, layers, NUM_CLASSES)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module", autouse=True)
def graph_mode():
    init_mindspore("CPU", "graph", seed=0)


@pytest.mark.parametrize("arch, torch_block", [("resnet18", TorchBasicBlock), ("resnet50", TorchBottleneck)])
def test_converted_logits_match_torch(tmp_path, arch, torch_block):
    layers = (1, 1, 1, 1)
    torch_net = randomised_torch_resnet(torch_block, layers)
    pth, ckpt = tmp_path / f"{arch}.pth", tmp_path / f"{arch}.ckpt"
    torch.save(torch_net.state_dict(), pth)
    main([str(pth), str(ckpt), "--arch", arch, "--layers", "1,1,1,1"])

    block = resnet.ARCHS[arch][0]
    backbone = resnet.ResNet(block, layers)
    load_backbone_weights(backbone, str(ckpt))
    data, _ = read(str(ckpt))
    head = nn.Dense(backbone.out_features, NUM_CLASSES)
    head.weight.set_data(data["fc.weight"])
    head.bias.set_data(data["fc.bias"])
    model = nn.SequentialCell(backbone, head)
    model.set_train(False)

    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(x)).numpy()
    got = model(ms.Tensor(x)).asnumpy()
    assert np.abs(expected).max() > 0.1  # not a trivially small comparison
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_parameter_names_follow_torchvision():
    torch_names = {k for k in randomised_torch_resnet(TorchBottleneck, (2, 1, 1, 1)).state_dict()
                   if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
    ms_names = {n for n, _ in resnet.ResNet(resnet.Bottleneck, (2, 1, 1, 1)).parameters_and_names()}
    renamed = {n.replace("gamma", "weight").replace("beta", "bias").replace("moving_mean", "running_mean")
               .replace("moving_variance", "running_var") for n in ms_names}
    assert renamed == torch_names
    assert resnet.resnet50().out_features == 2048 and "resnet101" in BACKBONES


def test_missing_and_mismatched_parameters_are_named(tmp_path):
    state = {k: v.numpy() for k, v in randomised_torch_resnet(TorchBasicBlock, (1, 1, 1, 1)).state_dict().items()}
    missing = dict(state)
    del missing["layer2.0.bn1.running_var"], missing["layer2.0.bn1.running_mean"]
    with pytest.raises(ConversionError, match=r"missing 2: layer2\.0\.bn1\.moving_mean"):
        convert_state_dict(missing, "resnet18", (1, 1, 1, 1))
    with pytest.raises(ConversionError, match=r"wrong shape .*layer1\.0\.conv1\.weight"):
        convert_state_dict({**state, "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1))}, "resnet18", (1, 1, 1, 1))
    with pytest.raises(ConversionError, match="does not fit resnet50"):  # BasicBlock weights, Bottleneck arch
        convert_state_dict(state, "resnet50", (1, 1, 1, 1))
    with pytest.raises(ConversionError, match="unknown --arch 'resnet99'"):
        convert_state_dict(state, "resnet99")
    with pytest.raises(SystemExit, match="weights file not found"):
        main([str(tmp_path / "absent.pth"), str(tmp_path / "out.ckpt")])


class ScaleByTwo(nn.Cell):
    def __init__(self, channels, position):
        super().__init__()
        self.channels, self.position = channels, position

    def construct(self, x):
        return x * 2.0


def test_norm_plugins_built_lazily_at_both_positions(monkeypatch):
    calls = []

    def build_plugin(cfg, channels, position):
        calls.append((channels, position))
        return ScaleByTwo(channels, position) if position in cfg["positions"] else None

    monkeypatch.setitem(sys.modules, "models.cnsn", types.SimpleNamespace(build_plugin=build_plugin))
    plain = resnet.ResNet(resnet.Bottleneck, (1, 1, 1, 1))
    assert calls == []  # no plugins configured: models.cnsn is never consulted

    net = resnet.ResNet(resnet.Bottleneck, (1, 1, 1, 1), norm_plugins={"positions": ["after_stem", "in_block"]})
    assert calls == [(64, "after_stem"), (256, "in_block"), (512, "in_block"), (1024, "in_block"), (2048, "in_block")]
    assert isinstance(net.stem_plugin, ScaleByTwo) and net.layer3[0].plugin.channels == 1024
    only_stem = resnet.ResNet(resnet.Bottleneck, (1, 1, 1, 1), norm_plugins={"positions": ["after_stem"]})
    assert isinstance(only_stem.layer1[0].plugin, nn.Identity)

    ms.load_param_into_net(net, dict(plain.parameters_and_names()))
    x = ms.Tensor(np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32))
    plain.set_train(False)
    net.set_train(False)
    assert net(x).shape == (1, 2048)
    assert not np.allclose(net(x).asnumpy(), plain(x).asnumpy())


def test_safetensors_input_matches_pth(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    state = {k: v.numpy() for k, v in randomised_torch_resnet(TorchBasicBlock, (1, 1, 1, 1)).state_dict().items()}
    safetensors_numpy.save_file(state, str(tmp_path / "w.safetensors"))
    main([str(tmp_path / "w.safetensors"), str(tmp_path / "w.ckpt"), "--arch", "resnet18", "--layers", "1,1,1,1"])
    data, _ = read(str(tmp_path / "w.ckpt"))
    expected = convert_state_dict(state, "resnet18", (1, 1, 1, 1))
    assert set(data) == set(expected) and "fc.weight" in data and "layer1.0.bn1.num_batches_tracked" not in data
    np.testing.assert_array_equal(data["layer2.0.bn2.moving_variance"].asnumpy(), state["layer2.0.bn2.running_var"])


def test_wrn40_2_classifier_converts_through_the_cli_and_matches(tmp_path, capsys):
    from engine.checkpoint import load
    from engine.config import ModelCfg
    from models import create_model
    from tests.test_tta import TorchWideResNet

    torch.manual_seed(3)
    ref = TorchWideResNet(40, 2, num_classes=NUM_CLASSES)
    with torch.no_grad():
        for module in ref.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5), module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 1.5)
    src, dst = tmp_path / "wrn.pt", tmp_path / "wrn.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, src)  # DataParallel names
    main([str(src), str(dst), "--arch", "wrn40_2"])
    assert "wrn40_2" in capsys.readouterr().out

    class Run(nn.Cell):  # the parameter names of a train.py checkpoint: model.*
        def __init__(self):
            super().__init__()
            self.model = create_model(ModelCfg(backbone="wrn40_2", num_classes=NUM_CLASSES), 3, 32)

    run = Run()
    load(str(dst), run)
    run.model.set_train(False)
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = ref.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run.model(ms.Tensor(x))[0].asnumpy(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConversionError, match="wrn28_10"):  # WRN-40-2 weights do not fit WRN-28-10
        convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, "wrn28_10")
