"""CrossNorm/SelfNorm at the official segmentation positions (amazon-science/crossnorm-selfnorm,
``segmentation/config/gtav/gtav_fcn50_cnsn.yaml``): SelfNorm in the residual branch, CrossNorm
after every block, one CrossNorm module active per step (``active_num: 1``) with p = 0.5."""
import engine  # noqa: F401  (before MindSpore)

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from models.cnsn import (CrossNorm, CrossNormSelector, NormPluginBuilder, SelfNorm, build_plugin,
                         plugin_parameter_names)
from models.deeplab import DeepLabV2
from models.lenet import LeNet
from tests.test_deeplab import (K, LAYERS, images, ms_deeplab_from_torch, randomised_torch_deeplab, run_ms,
                                run_torch, make_sgd_step)

OFFICIAL = {"crossnorm": {"p": 0.5, "mode": "2-instance", "crop": "style", "positions": ["after_block"],
                          "active_num": 1},
            "selfnorm": {"two": False, "positions": ["in_block"]}}


def crossnorm_only(p=1.0, active_num=1, crop="style"):
    return {"crossnorm": {"p": p, "mode": "2-instance", "crop": crop, "positions": ["after_block"],
                          "active_num": active_num}}


class Probe(nn.Cell):
    """``modules`` gated CrossNorms built like a network builds them, each applied to the same input."""

    def __init__(self, norm_plugins, modules=5):
        super().__init__()
        builder = NormPluginBuilder(norm_plugins)
        self.selector = builder.selector
        self.plugins = nn.CellList([builder(4, "after_block") for _ in range(modules)])
        builder.finalize()

    def construct(self, x):
        x = self.selector(x)
        outs = ()
        for plugin in self.plugins:
            outs = outs + (plugin(x),)
        return outs


def changed_modules(probe, x):
    return [i for i, out in enumerate(probe(Tensor(x))) if not np.array_equal(out.asnumpy(), x)]


def probe_input():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(6, 4, 5, 5)) * rng.uniform(0.5, 3, (6, 4, 1, 1)) + rng.normal(size=(6, 4, 1, 1))) \
        .astype(np.float32)


def test_exactly_active_num_crossnorms_change_features_per_call():
    x = probe_input()
    probe = Probe(crossnorm_only(p=1.0))
    probe.set_train(True)
    calls = [changed_modules(probe, x) for _ in range(40)]
    assert all(len(changed) == 1 for changed in calls)  # one module per training call
    counts = np.bincount([changed[0] for changed in calls], minlength=5)
    assert (counts >= 2).all(), counts  # every module gets chosen (Binomial(40, 1/5) < 2: p < 2e-3 each)
    probe.set_train(False)
    assert changed_modules(probe, x) == []  # none in eval

    two = Probe(crossnorm_only(p=1.0, active_num=2))
    two.set_train(True)
    assert all(len(changed_modules(two, x)) == 2 for _ in range(10))

    half = Probe(crossnorm_only(p=0.5))
    half.set_train(True)
    sizes = [len(changed_modules(half, x)) for _ in range(40)]
    assert set(sizes) <= {0, 1} and 8 <= sum(sizes) <= 32  # Binomial(40, 0.5): outside w.p. < 1e-4


def test_deeplab_builds_the_official_positions():
    model = DeepLabV2(K, (2, 1, 1, 1), norm_plugins=OFFICIAL)
    backbone = model.backbone
    blocks = [block for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
              for block in stage]
    assert isinstance(backbone.stem_plugin, nn.Identity)
    assert isinstance(backbone.cn_selector, CrossNormSelector) and backbone.cn_selector.num_modules == len(blocks) == 5
    for index, block in enumerate(blocks):
        (selfnorm,), (crossnorm,) = block.plugin.cells(), block.after_plugin.cells()
        assert isinstance(selfnorm, SelfNorm) and not selfnorm.two
        assert isinstance(crossnorm, CrossNorm) and crossnorm.crop_style and not crossnorm.crop_content
        assert crossnorm.selector is backbone.cn_selector and crossnorm.selector_index == index
    assert backbone.cn_selector.p == 0.5 and backbone.cn_selector.active_num == 1
    plain = {n for n, _ in DeepLabV2(K, (2, 1, 1, 1)).backbone.parameters_and_names()}
    names = {n for n, _ in backbone.parameters_and_names()}
    plugin_names = plugin_parameter_names(backbone)
    assert names - plugin_names == plain  # what pretrained weights must provide is unchanged
    assert {"cn_selector.chosen", "layer1.1.plugin.0.g_weight", "layer4.0.after_plugin.0.calls"} <= plugin_names


def test_selfnorm_scales_the_residual_branch_only():
    """A SelfNorm whose gate is 0 removes the residual branch: the official network with bn3 = 0."""
    torch_net = randomised_torch_deeplab()
    model = ms_deeplab_from_torch(torch_net, norm_plugins={"selfnorm": {"two": False, "positions": ["in_block"]}})
    selfnorms = [cell for _, cell in model.cells_and_names() if isinstance(cell, SelfNorm)]
    assert len(selfnorms) == 4
    x = images(2, 33, 33)
    for beta in (30.0, -30.0):  # gate sigmoid(beta): 1 (no-op), then 0
        for selfnorm in selfnorms:
            selfnorm.g_weight.set_data(Tensor(np.zeros(selfnorm.g_weight.shape, np.float32)))
            selfnorm.g_bn.beta.set_data(Tensor(np.full(selfnorm.g_bn.beta.shape, beta, np.float32)))
        if beta < 0:
            for name, module in torch_net.named_modules():
                if name.endswith("bn3"):
                    module.weight.data.zero_()
                    module.bias.data.zero_()
        expected, expected_aux = run_torch(torch_net, x)
        got, (got_aux,) = run_ms(model, x)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_aux, expected_aux, atol=1e-4, rtol=0)


def test_forced_crossnorm_acts_after_the_block_relu(pynative):
    model = ms_deeplab_from_torch(randomised_torch_deeplab(), norm_plugins=crossnorm_only(p=1.0, crop="none"))
    backbone = model.backbone
    x = images(3, 33, 33)
    backbone.set_train(False)
    f3, f4 = (f.asnumpy() for f in backbone(Tensor(x)))
    backbone.set_train(True)  # frozen BN: only the chosen CrossNorm differs from eval
    backbone.cn_selector.force([3])  # layer4's block: aux features untouched
    g3, g4 = (f.asnumpy() for f in backbone(Tensor(x)))
    np.testing.assert_array_equal(g3, f3)
    assert not np.allclose(g4, f4, atol=1e-3)
    # 2-instance CrossNorm of the block output after its ReLU: every instance takes the channel means
    # of an instance j of the batch and, where it has any, keeps its normalised content with j's std
    assert (g4 < -1e-3).any()  # restyled after the ReLU, so negative values appear
    for i in range(3):
        j = np.abs(g4[i].mean((1, 2)) - f4.mean((2, 3))).max(1).argmin()
        np.testing.assert_allclose(g4[i].mean((1, 2)), f4[j].mean((1, 2)), atol=1e-4)
        varied = (f4[i].std((1, 2)) > 0.1) & (f4[j].std((1, 2)) > 0.1)  # eps matters below
        np.testing.assert_allclose(g4[i].std((1, 2))[varied], f4[j].std((1, 2))[varied], rtol=1e-3, atol=1e-4)
        normalised = [(f[varied] - f[varied].mean((1, 2), keepdims=True)) / f[varied].std((1, 2), keepdims=True)
                      for f in (g4[i], f4[i])]
        np.testing.assert_allclose(*normalised, atol=1e-3)
    backbone.cn_selector.force([1])  # layer2's block: both outputs change
    g3, _ = (f.asnumpy() for f in backbone(Tensor(x)))
    assert not np.allclose(g3, f3, atol=1e-3)


def test_gated_crossnorm_trains_in_a_jitted_step():
    torch_net = randomised_torch_deeplab()
    model = ms_deeplab_from_torch(torch_net, norm_plugins=crossnorm_only(p=1.0))
    x = images(2, 33, 33)
    expected, _ = run_ms(model, x, train=False)
    y = np.zeros((2, 5, 5), np.int32)
    chosen = []
    step = make_sgd_step(model, lr=0.0)
    for _ in range(6):
        loss, aux = step(x, y)
        assert len(aux) == 1 and np.isfinite(loss.asnumpy())
        chosen.append(int(model.backbone.cn_selector.chosen.asnumpy()[0]))
    assert set(chosen) <= {0, 1, 2, 3} and len(set(chosen)) > 1  # drawn anew each step, in-graph
    np.testing.assert_array_equal(run_ms(model, x, train=False)[0], expected)  # eval: no CrossNorm


def test_bad_gating_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="active_num=5 but the network has only 4 CrossNorm"):
        DeepLabV2(K, LAYERS, norm_plugins=crossnorm_only(active_num=5))
    with pytest.raises(ValueError, match="active_num must be a positive integer"):
        NormPluginBuilder(crossnorm_only(active_num=0))
    with pytest.raises(ValueError, match="cannot gate its CrossNorm"):
        LeNet(norm_plugins={"crossnorm": {"active_num": 1}, "positions": ["in_block"]})
    with pytest.raises(ValueError, match=r"crossnorm.positions: unknown position\(s\) \['after_block'\]"):
        build_plugin({"crossnorm": {"positions": ["after_block"]}}, 32, "after_stem")
    with pytest.raises(ValueError, match="must be a list of positions"):
        NormPluginBuilder({"selfnorm": {"positions": "in_block"}})
    # per-plugin positions also work for the classification backbones
    cells = build_plugin({"crossnorm": {"positions": ["in_block"]}, "selfnorm": True}, 48, "in_block")
    assert [type(c) for c in cells.cells()] == [CrossNorm]
    assert ms.get_context("mode") == ms.GRAPH_MODE
