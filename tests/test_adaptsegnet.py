"""AdaptSegNet and segmentation source-only: the discriminator, gradient routing, the poly schedule, and a
step-for-step parity run against PyTorch code written from the official training loop
(wasidennis/AdaptSegNet, train_gta2cityscapes_multi.py)."""
import engine  # noqa: F401  (before MindSpore)

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

import losses  # noqa: F401  (registers the methods)
from engine.config import Config, DataCfg, ModelCfg, OptimCfg, TrainCfg
from engine.optim import PolyLR
from engine.trainer import build_method, build_phase_optimizers, make_step
from losses.adaptsegnet import AdaptSegNetParams
from losses.base import JOINT
from losses.seg_source_only import SegSourceOnlyParams
from models.modules import FCDiscriminator

torch = pytest.importorskip("torch")
from tools.torch_reference import FCDiscriminator as TorchFCDiscriminator  # noqa: E402


def copy_conv_weights(ms_disc, torch_disc):
    for conv, tconv in zip(ms_disc.convs, torch_disc.convs()):
        conv.weight.set_data(Tensor(tconv.weight.detach().numpy()))
        conv.bias.set_data(Tensor(tconv.bias.detach().numpy()))


def test_fc_discriminator_matches_the_official_network():
    torch.manual_seed(0)
    reference = TorchFCDiscriminator(5, ndf=8)
    disc = FCDiscriminator(5, ndf=8)
    copy_conv_weights(disc, reference)
    x = np.random.default_rng(0).random((2, 5, 64, 32)).astype(np.float32)
    out = disc(Tensor(x)).asnumpy()
    expected = reference(torch.tensor(x)).detach().numpy()
    assert out.shape == expected.shape == (2, 1, 2, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_fixed_discriminator_moves_only_its_input():
    disc = FCDiscriminator(3, ndf=4)
    x = Tensor(np.random.default_rng(1).random((1, 3, 32, 32)).astype(np.float32))
    params = disc.trainable_params()

    def free(inp):
        return ops.sum(disc(inp))

    def fixed(inp):
        return ops.sum(disc(inp, True))

    grad_free = ms.grad(free, grad_position=0, weights=params)(x)
    grad_fixed = ms.grad(fixed, grad_position=0, weights=params)(x)
    np.testing.assert_allclose(grad_fixed[0].asnumpy(), grad_free[0].asnumpy(), rtol=1e-5, atol=1e-7)
    assert all(np.abs(g.asnumpy()).sum() > 0 for g in grad_free[1])
    assert all(np.abs(g.asnumpy()).sum() == 0 for g in grad_fixed[1])


def test_poly_schedule_matches_the_official_lr_poly():
    schedule = PolyLR(2.5e-4, 250, 0.9)
    for it in (0, 1, 100, 149, 250, 300):
        expected = 2.5e-4 * (1 - min(it, 250) / 250) ** 0.9  # official lr_poly(base, i_iter, NUM_STEPS, POWER)
        assert float(schedule(Tensor(it, ms.int32)).asnumpy()) == pytest.approx(expected, rel=1e-5, abs=1e-12)


# --------------------------------------------------------------------------- the method on a tiny DeepLab-v2
from tests.test_deeplab import K, LAYERS, load_heads, randomised_torch_deeplab, torch_state  # noqa: E402
from tools.convert_torchvision import convert_state_dict  # noqa: E402
from tools.torch_reference import adaptsegnet_iteration  # noqa: E402

LR, LR_D, TOTAL, STEPS = 1e-3, 1e-3, 10, 4
ADV, ADV_AUX, AUX = 0.5, 0.2, 0.1  # adversarial weights far above the paper's, so a misrouted term shows


def ms_method(multi_level=True):
    cfg = Config(data=DataCfg(batch_size=1),
                 model=ModelCfg(backbone="deeplabv2", num_classes=K, head_lr_mult=10.0,
                                backbone_kwargs={"layers": list(LAYERS), "multi_level": multi_level}),
                 method=AdaptSegNetParams(adv_weight=ADV, adv_weight_aux=ADV_AUX, aux_weight=AUX, disc_channels=8,
                                          disc_optim={"name": "adam", "lr": LR_D, "betas": [0.9, 0.99],
                                                      "weight_decay": 0.0}),
                 optim=OptimCfg(name="sgd", lr=LR, momentum=0.9, weight_decay=5e-4, lr_schedule="poly",
                                lr_power=0.9, lr_total_iters=TOTAL),
                 train=TrainCfg(iters=STEPS))
    return cfg, build_method(cfg)


def copy_deeplab(net, torch_net):
    converted = convert_state_dict(torch_state(torch_net), "deeplabv2_resnet101", LAYERS)
    for name, param in net.backbone.parameters_and_names():
        param.set_data(Tensor(converted[name]))
    load_heads(net, torch_net)


def batches(steps, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        y_s = rng.integers(0, K, (1, 64, 64)).astype(np.int32)
        y_s[:, :8] = 255  # ignored rows
        out.append({"x_s": rng.normal(size=(1, 3, 64, 64)).astype(np.float32), "y_s": y_s,
                    "x_t": rng.normal(size=(1, 3, 64, 96)).astype(np.float32)})  # the target has another size
    return out


def ms_batch(batch):
    return ms.mutable({k: Tensor(v) for k, v in batch.items()})


@pytest.mark.parametrize("multi_level", [True, pytest.param(False, marks=pytest.mark.slow)])  # single-level: slow run
def test_joint_step_matches_the_official_loop_step_for_step(multi_level):
    torch_net = randomised_torch_deeplab(multi_level=multi_level)
    torch_net.train()
    for module in torch_net.modules():  # frozen BatchNorm: stored statistics in training too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    torch.manual_seed(1)
    torch_discs = [TorchFCDiscriminator(K, ndf=8) for _ in range(2 if multi_level else 1)]

    cfg, method = ms_method(multi_level)
    copy_deeplab(method.model.net, torch_net)
    for disc, reference in zip(method.discriminators, torch_discs):
        copy_conv_weights(disc, reference)
    method.set_train(True)
    phase = method.phases()[0]
    assert phase.joint and phase.groups == ("gen", "disc")
    step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(cfg.optim, method, phase))

    heads = [p for name, p in torch_net.named_parameters() if name.startswith(("layer5", "layer6"))]
    backbone = [p for name, p in torch_net.named_parameters()
                if p.requires_grad and not name.startswith(("layer5", "layer6"))]
    optimizer = torch.optim.SGD([{"params": backbone, "lr": LR}, {"params": heads, "lr": 10 * LR}], lr=LR,
                                momentum=0.9, weight_decay=5e-4)
    optimizers_d = [torch.optim.Adam(d.parameters(), lr=LR_D, betas=(0.9, 0.99)) for d in torch_discs]
    for it, batch in enumerate(batches(STEPS)):
        lr = LR * (1 - it / TOTAL) ** 0.9  # the official lr_poly / adjust_learning_rate(_D)
        optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = lr, 10 * lr
        for opt in optimizers_d:
            opt.param_groups[0]["lr"] = LR_D * (1 - it / TOTAL) ** 0.9
        expected = adaptsegnet_iteration(torch_net, torch_discs, optimizer, optimizers_d,
                                         torch.tensor(batch["x_s"]), torch.tensor(batch["y_s"]).long(),
                                         torch.tensor(batch["x_t"]), AUX,
                                         (ADV, ADV_AUX))
        out = [float(v.asnumpy()) for v in step(ms_batch(batch), Tensor(it / STEPS, ms.float32))]
        keys = method.step_log_keys(phase)
        got = dict(zip(keys, out))
        levels = len(torch_discs)
        reference = {"seg": expected[0], "seg_aux": expected[1], "adv": expected[2], "d_loss": expected[2 + levels]}
        if multi_level:
            reference.update(adv_aux=expected[3], d_loss_aux=expected[5])
        for key, value in reference.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (it, key)

    params = dict(method.model.net.parameters_and_names())
    official = torch_state(torch_net)
    converted = convert_state_dict(official, "deeplabv2_resnet101", LAYERS)
    for name, value in converted.items():
        if "backbone." + name in params:
            np.testing.assert_allclose(params["backbone." + name].asnumpy(), value, rtol=1e-4, atol=1e-6,
                                       err_msg=name)
    for official_name, ours in (("layer6.", "classifier."), ("layer5.", "aux_classifier.")):
        for name, value in official.items():
            if name.startswith(official_name):
                np.testing.assert_allclose(params[ours + name[len(official_name):]].asnumpy(), value,
                                           rtol=1e-4, atol=1e-6, err_msg=name)
    # Adam moves a parameter by ~lr whatever its gradient's size, so gradients at float32 noise level
    # (~1e-9, near Adam's eps) may move a few D weights differently: allow 5% of one step. MindSpore's own
    # nn.Adam (eps before the bias correction) misses by ~50% of a step, a leaked G term by far more.
    for disc, reference in zip(method.discriminators, torch_discs):
        for conv, tconv in zip(disc.convs, reference.convs()):
            for ours, theirs in ((conv.weight, tconv.weight), (conv.bias, tconv.bias)):
                np.testing.assert_allclose(ours.asnumpy(), theirs.detach().numpy(), rtol=1e-4, atol=0.05 * LR_D)


def test_discriminator_terms_reach_only_the_discriminators_and_adversarial_terms_only_the_generator():
    _, method = ms_method(multi_level=True)
    method.set_train(True)
    batch, t = ms_batch(batches(1)[0]), Tensor(0.0, ms.float32)
    keys = method.log_keys
    gen = method.model.trainable_params()
    disc = method.discriminators.trainable_params()

    def term(*names):
        def value(b, progress):
            aux = method(b, progress)[1]
            return sum(aux[keys.index(n)] for n in names)
        return value

    for names, fixed, moved in ((("d_loss", "d_loss_aux"), gen, disc), (("adv", "adv_aux"), disc, gen)):
        grads_fixed = ms.grad(term(*names), grad_position=None, weights=fixed)(batch, t)
        grads_moved = ms.grad(term(*names), grad_position=None, weights=moved)(batch, t)
        assert max(float(np.abs(g.asnumpy()).max()) for g in grads_fixed) == 0.0, names
        assert sum(float(np.abs(g.asnumpy()).sum()) for g in grads_moved) > 0, names
