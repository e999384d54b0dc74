"""Test-time adaptation (engine/tta.py): Tent's step against PyTorch code written from DequanWang/tent
``tent.py`` (configure_model, collect_params, forward_and_adapt, Adam), what it updates, the batch
statistics, the reset between sets, and the tools/tta.py CLI + suite in smoke mode."""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import engine  # noqa: E402,F401  (runtime settings before MindSpore loads)
import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402
from torch import nn as tnn  # noqa: E402

from engine.config import ModelCfg  # noqa: E402
from engine.tta import OCR_TEST_LAMBDA, TestTimeAdapter, adapt_stream, bn_affine_parameters  # noqa: E402
from models.classifier import create_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lenet_bn(seed=0):
    ms.set_seed(seed)
    model = create_model(ModelCfg(backbone="lenet_bn", num_classes=10))
    rng = np.random.default_rng(seed)
    for bn in [c for _, c in model.cells_and_names() if type(c).__name__.startswith("BatchNorm")]:
        # trained-looking BatchNorm state, so that batch and running statistics differ
        n = bn.gamma.shape[0]
        bn.gamma.set_data(Tensor(rng.uniform(0.5, 1.5, n).astype(np.float32)))
        bn.beta.set_data(Tensor(rng.normal(0, 0.2, n).astype(np.float32)))
        bn.moving_mean.set_data(Tensor(rng.normal(0, 0.5, n).astype(np.float32)))
        bn.moving_variance.set_data(Tensor(rng.uniform(0.5, 2.0, n).astype(np.float32)))
    return model


class TorchLeNetBN(tnn.Module):
    """The issue's LeNet-BN in PyTorch; weights copied from the MindSpore model in definition order."""

    def __init__(self):
        super().__init__()
        self.features = tnn.Sequential(
            tnn.Conv2d(3, 16, 5), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(16, 32, 5), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Linear(512, 128), tnn.BatchNorm1d(128), tnn.ReLU())
        self.head = tnn.Linear(128, 10)

    def forward(self, x):
        z = self.features(x)
        return self.head(z), z

    def load_from(self, model):
        params = [p.asnumpy() for p in model.get_parameters()]  # conv w, b; bn mean, var, gamma, beta; ...
        targets = []
        for m in list(self.features) + [self.head]:
            if isinstance(m, (tnn.Conv2d, tnn.Linear)):
                targets += [m.weight, m.bias]
            elif isinstance(m, BN_TYPES):
                targets += [m.running_mean, m.running_var, m.weight, m.bias]
        assert len(targets) == len(params)
        with torch.no_grad():
            for target, value in zip(targets, params):
                target.copy_(torch.from_numpy(value.reshape(target.shape)))
        return self


# ---- written from DequanWang/tent tent.py (BatchNorm1d included: this repository adapts every BatchNorm)
BN_TYPES = (tnn.BatchNorm1d, tnn.BatchNorm2d)


def configure_model(model):
    model.train()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, BN_TYPES):
            m.requires_grad_(True)
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
    return model


def collect_params(model):
    return [p for m in model.modules() if isinstance(m, BN_TYPES) for n, p in m.named_parameters()
            if n in ("weight", "bias")]


def softmax_entropy(x):
    return -(x.softmax(1) * x.log_softmax(1)).sum(1)


def forward_and_adapt(x, model, optimizer, x_strong=None, weight=0.2, lam=OCR_TEST_LAMBDA):
    outputs, z = model(x)
    loss = softmax_entropy(outputs).mean(0)
    if x_strong is not None:  # Tent+OCR: OCR's official Demix_Loss residual entropy on the strong view
        _, z_aug = model(x_strong)
        p = model.head((z_aug - lam * z) / (1 - lam)).softmax(1)
        loss = loss - weight * (-(p * torch.log(p + 1e-5)).sum(1)).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return outputs
# ----


def batch(seed, n=16):
    return np.random.default_rng(seed).normal(0, 1, (n, 3, 28, 28)).astype(np.float32)


@pytest.mark.parametrize("method", ["tent", "tent_ocr"])
def test_tent_steps_match_pytorch_tent(method):
    model = lenet_bn()
    ref = configure_model(TorchLeNetBN().load_from(model))
    optimizer = torch.optim.Adam(collect_params(ref), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    adapter = TestTimeAdapter(model, method)
    initial = [p.asnumpy().copy() for p in bn_affine_parameters(model)]
    frozen = {p.name: p.asnumpy().copy() for p in model.get_parameters()
              if id(p) not in {id(q) for q in bn_affine_parameters(model)}}
    for step in range(3):
        x, x_strong = batch(step), (batch(100 + step) if method == "tent_ocr" else None)
        pred = adapter.predict(Tensor(x), None if x_strong is None else Tensor(x_strong)).asnumpy()
        want = forward_and_adapt(torch.from_numpy(x), ref, optimizer,
                                 None if x_strong is None else torch.from_numpy(x_strong))
        np.testing.assert_array_equal(pred, want.argmax(1).numpy())  # scored: the outputs before the update
    got = [p.asnumpy() for p in bn_affine_parameters(model)]
    want = [p.detach().numpy() for p in collect_params(ref)]
    assert len(got) == len(want) == 6
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-6)
    # 3 Adam steps of lr 1e-3 moved every BatchNorm affine parameter
    assert min(np.abs(g - g0).max() for g, g0 in zip(got, initial)) > 1e-4
    for p in model.get_parameters():  # only the BatchNorm affine parameters train (running stats aside)
        if p.name in frozen and "moving" not in p.name:
            np.testing.assert_array_equal(p.asnumpy(), frozen[p.name], err_msg=p.name)


def test_norm_uses_test_batch_statistics_not_running_ones():
    x = batch(7, 32)
    model = lenet_bn()
    ref = TorchLeNetBN().load_from(model).train()  # PyTorch train mode = batch statistics
    with torch.no_grad():
        want = ref(torch.from_numpy(x))[0].argmax(1).numpy()
    norm = TestTimeAdapter(model, "norm")
    np.testing.assert_array_equal(norm.predict(Tensor(x)).asnumpy(), want)
    for p in model.get_parameters():  # running statistics play no part
        if "moving" in p.name:
            p.set_data(Tensor(np.full(p.shape, 7.0, np.float32)))
    np.testing.assert_array_equal(norm.predict(Tensor(x)).asnumpy(), want)
    source = TestTimeAdapter(lenet_bn(), "source")  # ... while the source model uses them
    with torch.no_grad():
        want_eval = TorchLeNetBN().load_from(lenet_bn()).eval()(torch.from_numpy(x))[0].argmax(1).numpy()
    np.testing.assert_array_equal(source.predict(Tensor(x)).asnumpy(), want_eval)
    assert (want_eval != want).any()  # the fixture's statistics differ enough to change predictions


class Domain:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)


def test_reset_between_sets_restores_model_and_optimizer():
    sets = [(f"s{k}", Domain(batch(10 + k, 24).transpose(0, 2, 3, 1), np.arange(24) % 10)) for k in range(3)]
    identity = lambda images, rng: images  # noqa: E731
    adapter = TestTimeAdapter(lenet_bn(), "tent")
    start = {p.name: p.asnumpy().copy() for p in adapter._state_parameters()}
    episodic = adapt_stream(adapter, sets, identity, batch_size=8)
    for name, value in start.items():  # an adapted stream changed the state ...
        if "gamma" in name:
            assert not np.array_equal(dict((p.name, p.asnumpy()) for p in adapter._state_parameters())[name], value)
    adapter.reset()  # ... reset brings back every parameter, moment and step counter
    for p in adapter._state_parameters():
        np.testing.assert_array_equal(p.asnumpy(), start[p.name], err_msg=p.name)
    # episodic = every set adapted from the same starting point: set k alone on a fresh adapter agrees
    alone = adapt_stream(TestTimeAdapter(lenet_bn(), "tent"), sets[2:], identity, batch_size=8)
    assert episodic[2]["error"] == alone[0]["error"]
    continual = adapt_stream(adapter, sets, identity, batch_size=8, reset_each_set=False, rounds=2)
    assert [r["round"] for r in continual] == [0, 0, 0, 1, 1, 1]
    assert continual[0]["error"] == episodic[0]["error"]  # the stream starts from the reset state too


def test_models_without_batchnorm_are_refused_with_a_hint():
    plain = create_model(ModelCfg(backbone="lenet", num_classes=10))  # the DANN LeNet has no BatchNorm
    with pytest.raises(ValueError, match="needs BatchNorm layers.*lenet_bn"):
        TestTimeAdapter(plain, "tent")
    with pytest.raises(ValueError, match="unknown TTA method 'tent2'"):
        TestTimeAdapter(lenet_bn(), "tent2")


def test_tta_cli_errors(tmp_path):
    cfg = os.path.join(ROOT, "configs", "tta", "source_only_optdigits_c.yaml")
    for args, needle in ((["--config", cfg, "--ckpt", str(tmp_path / "none.ckpt")], "checkpoint not found"),
                         (["--table", str(tmp_path / "missing.json")], "cannot read TTA results")):
        proc = subprocess.run([sys.executable, "tools/tta.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr


@pytest.mark.slow  # the default run keeps a sibling test of the same path; the TTA and robustness pieces are tested one by one
def test_tta_and_robustness_cli_in_process(tmp_path):
    """tools/tta.py and tools/robustness.py end to end (config -> model -> checkpoint -> tables) on an untrained
    LeNet-BN checkpoint, one corruption set; the numbers are meaningless, the wiring is what is checked."""
    from engine import checkpoint
    from engine.config import load_config
    from engine.trainer import build_method
    from tools import robustness, tta
    from engine.tta import METHODS

    assert tuple(tta.METHOD_NAMES) == METHODS
    cfg_path = os.path.join(ROOT, "configs", "tta", "source_only_optdigits_c.yaml")
    ckpt = str(tmp_path / "last.ckpt")
    checkpoint.save(ckpt, build_method(load_config(cfg_path, [])))
    reports = tta.main(["--config", cfg_path, "--ckpt", ckpt, "--protocol", "episodic", "continual", "--rounds", "2",
                        "--sets", "contrast-5", "--device", "CPU", "--method", "source", "norm", "tent_ocr",
                        "--batch-size", "449"])  # 898 = 2 x 449: one batch shape, one compilation per function
    assert set(reports["continual"]["methods"]) == {"source", "norm", "tent_ocr"}  # (tent: the parity test)
    assert [r["round"] for r in reports["continual"]["methods"]["norm"]["sets"]] == [0, 1]
    # norm does not learn: both rounds and the episodic pass give the same error
    errors = [r["error"] for r in reports["continual"]["methods"]["norm"]["sets"]]
    assert errors == [reports["episodic"]["methods"]["norm"]["sets"][0]["error"]] * 2
    table = tta.main(["--table", str(tmp_path / "tta_continual.json"), str(tmp_path / "tta_continual.json")])
    assert "| Tent+OCR |" in table and "| Tent |" not in table and "round 2" in table
    report = robustness.main(["--config", cfg_path, "--ckpt", ckpt, "--steps", "2", "--sets", "contrast-5",
                              "--device", "CPU", "--batch-size", "449"])
    assert {"clean_acc", "fgsm_acc", "pgd_acc"} <= set(report) and os.path.isfile(tmp_path / "robustness.md")
    assert report["corruption_error"] == pytest.approx(reports["episodic"]["methods"]["source"]["summary"]
                                                       ["mean_error"])  # two code paths, one number


@pytest.mark.slow
def test_tta_suite_smoke(tmp_path):
    env = dict(os.environ, SMOKE="1", SEEDS="0", RUNS=str(tmp_path / "runs"))
    proc = subprocess.run(["bash", "scripts/run_tta.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for protocol in ("episodic", "continual"):
        table = (tmp_path / "runs" / f"table_{protocol}.md").read_text()
        assert all(f"| {m} |" in table for m in ("source", "Norm", "Tent", "Tent+OCR")), table
    table = (tmp_path / "runs" / "table_robustness.md").read_text()
    assert "| source_only_optdigits_c | 1 |" in table and "| source_only_ocr_optdigits_c | 1 |" in table, table


# ---- PyTorch WRN written from RobustBench wide_resnet.py / CNSN wideresnet_cnsn.py (no CNSN)
class TorchWideBlock(tnn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1, self.relu1 = tnn.BatchNorm2d(in_planes), tnn.ReLU()
        self.conv1 = tnn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = tnn.BatchNorm2d(out_planes), tnn.ReLU()
        self.conv2 = tnn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else tnn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class TorchNetworkBlock(tnn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride):
        super().__init__()
        self.layer = tnn.Sequential(*[TorchWideBlock(i == 0 and in_planes or out_planes, out_planes,
                                                     i == 0 and stride or 1) for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class TorchWideResNet(tnn.Module):
    def __init__(self, depth, widen_factor, num_classes=10):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = tnn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = TorchNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = TorchNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = TorchNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1, self.relu = tnn.BatchNorm2d(ch[3]), tnn.ReLU()
        self.fc = tnn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.nn.functional.avg_pool2d(self.relu(self.bn1(out)), 8)
        return self.fc(out.view(-1, self.nChannels))
# ----


# 1: stage 1 keeps the width (identity shortcut); 2: 1x1 shortcut
@pytest.mark.parametrize("widen", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_wideresnet_loads_converted_pytorch_weights_and_matches(widen):
    from models.classifier import Classifier
    from models.wideresnet import WideResNet, torch_to_mindspore_names
    from engine.checkpoint import _check_and_assign

    torch.manual_seed(widen)
    ref = TorchWideResNet(10, widen)
    with torch.no_grad():  # non-trivial BatchNorm state
        for m in ref.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    state = {k: Tensor(v.numpy()) for k, v in torch_to_mindspore_names(
        {k: v.detach().clone() for k, v in ref.state_dict().items()}).items()}
    model = Classifier(WideResNet(10, widen), 10)
    _check_and_assign(dict(model.parameters_and_names()), state, "converted", "model")  # every name, every shape
    x = batch(3, 4).repeat(8, axis=2).repeat(8, axis=3)[:, :, :32, :32].copy()  # (4, 3, 32, 32)
    for train in (False, True):
        ref.train(train)
        model.set_train(train)
        with torch.no_grad():
            want = ref(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model(Tensor(x))[0].asnumpy(), want, rtol=1e-4, atol=1e-4)
