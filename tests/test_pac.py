"""PAC (Mishra et al., BMVC 2021): rotations against numpy ``rot90`` and PAC's label order, the confidence
mask and consistency against NumPy, which parameters each phase trains, the RandAugment ops against PIL,
and the stage-2 step against PyTorch written from venkatesh-saligrama/PAC ``main.py``.
"""
import engine  # noqa: F401  (runtime settings before MindSpore loads)
import losses  # noqa: F401  (registers the methods)
import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from mindspore import Tensor
from PIL import Image, ImageOps

from datasets.transforms import _rand_augment_op, randaugment
from engine.config import build_config
from engine.trainer import build_method, build_phase_optimizers, make_step
from losses.pac import ConfidentConsistencyLoss, all_rotations
from tools import torch_reference as ref

CLASSES, BATCH, LABELLED, LR, WD, T = 5, 6, 5, 0.05, 5e-4, 0.05


def pac_config(rot_iters=2, threshold=0.9):
    return build_config({
        "data": {"image_size": 28, "channels": 3, "batch_size": BATCH, "target_labeled_per_class": 1},
        "model": {"backbone": "lenet", "num_classes": CLASSES, "head": "cosine", "head_kwargs": {"temperature": T}},
        "method": {"name": "pac", "threshold": threshold, "rot_iters": rot_iters, "rot_images": 2},
        "optim": {"lr": LR, "momentum": 0.9, "nesterov": True, "weight_decay": WD, "lr_schedule": "constant"},
        "train": {"iters": 2}})


def test_rotations_are_numpy_rot90_in_pac_label_order(mode):
    """Label 0/1/2/3 = torchvision ``rotate`` by -90/0/90/180 degrees (counter-clockwise positive)."""
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    images, labels = all_rotations(Tensor(x))
    images, labels = images.asnumpy(), labels.asnumpy()
    for label, angle in enumerate((-90, 0, 90, 180)):
        block = images[2 * label:2 * label + 2]
        assert (labels[2 * label:2 * label + 2] == label).all()
        for i in range(2):  # PIL rotates counter-clockwise as torchvision.transforms.functional.rotate does
            want = np.stack([np.asarray(Image.fromarray(c).rotate(angle)) for c in x[i]])
            np.testing.assert_array_equal(block[i], want)
            np.testing.assert_array_equal(block[i], np.rot90(x[i], angle // 90, axes=(1, 2)))


def test_consistency_masks_unconfident_rows_and_uses_soft_labels(mode):
    weak = np.array([[9.0, 0.0, 0.0], [1.0, 0.8, 0.0], [0.0, 0.0, 4.0], [0.0, 5.0, 0.2]], np.float32)
    strong = np.random.default_rng(0).normal(size=weak.shape).astype(np.float32)
    p = np.exp(weak) / np.exp(weak).sum(1, keepdims=True)
    mask = p.max(1) > 0.9
    assert mask.tolist() == [True, False, True, True]  # row 2: 0.96 > 0.9, row 1 far below
    log_q = strong - np.log(np.exp(strong).sum(1, keepdims=True))
    want = np.mean(np.sum(-p * log_q, 1) * mask)
    loss, rate = ConfidentConsistencyLoss(0.9)(Tensor(weak), Tensor(strong))
    assert float(loss.asnumpy()) == pytest.approx(want, rel=1e-5)
    assert float(rate.asnumpy()) == pytest.approx(0.75)


@pytest.mark.parametrize("name", ["equalize", "posterize", "solarize", "auto_contrast"])
def test_rand_augment_ops_match_pil(name):
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3)).astype(np.uint8)
    pil = Image.fromarray(image)
    want = {"equalize": lambda: ImageOps.equalize(pil), "posterize": lambda: ImageOps.posterize(pil, 5),
            "solarize": lambda: ImageOps.solarize(pil, 256 - int(7 * 256 / 10)),
            "auto_contrast": lambda: ImageOps.autocontrast(pil)}[name]()
    got = _rand_augment_op(image.astype(np.float32) / 255.0, np.random.default_rng(0), name, 7)  # posterize: 4+2 bits
    if name == "posterize":
        want = ImageOps.posterize(pil, int(7 * 4 / 10) + 4)
    np.testing.assert_allclose(got * 255.0, np.asarray(want, np.float32), atol=1.0 if name == "auto_contrast" else 1e-3)


def test_randaugment_is_seeded_and_changes_images():
    images = np.random.default_rng(2).random((4, 28, 28, 3)).astype(np.float32)
    first, second = (randaugment(images, np.random.default_rng(5), 28) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    assert first.shape == images.shape and not np.allclose(first, images)
    np.testing.assert_array_equal(randaugment(images, None, 28), images)


@pytest.mark.slow  # two phases compiled (~8 s); the smoke suite runs both phases in the default run
def test_rotation_phase_trains_backbone_and_rotation_head_only_then_stage_two_the_class_head():
    cfg = pac_config()
    method = build_method(cfg)
    method.set_train(True)
    rng = np.random.default_rng(0)
    batch = ms.mutable({"x_s": Tensor(rng.normal(size=(BATCH, 3, 28, 28)).astype(np.float32)),
                        "y_s": Tensor(rng.integers(0, CLASSES, BATCH).astype(np.int32)),
                        "x_t": Tensor(rng.normal(size=(BATCH, 3, 28, 28)).astype(np.float32)),
                        "x_t_strong": Tensor(rng.normal(size=(BATCH, 3, 28, 28)).astype(np.float32)),
                        "x_tl": Tensor(rng.normal(size=(LABELLED, 3, 28, 28)).astype(np.float32)),
                        "y_tl": Tensor(rng.integers(0, CLASSES, LABELLED).astype(np.int32))})
    for phase, moves, stays in ((method.phases()[0], ("model.backbone", "rot_head"), ("model.head",)),
                                (method.phases()[1], ("model.backbone", "model.head"), ("rot_head",))):
        before = {n: p.asnumpy().copy() for n, p in method.parameters_and_names()}
        step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(cfg.optim, method, phase))
        outs = step(batch, Tensor(0.0, ms.float32))
        assert len(outs) == len(method.step_log_keys(phase))
        for name, param in method.parameters_and_names():
            changed = not np.array_equal(param.asnumpy(), before[name])
            if name.startswith(moves):
                assert changed, f"{phase.name}: {name} did not train"
            if name.startswith(stays):
                assert not changed, f"{phase.name}: {name} trained"


# --------------------------------------------------------------------------- PyTorch from PAC main.py
class Predictor(torch.nn.Module):
    """PAC ``model/basenet.py`` Predictor with its defaults for PAC: ``normalize=True, cls_bias=False``."""

    def __init__(self, inc, num_class, temp):
        super().__init__()
        self.fc = torch.nn.Sequential(torch.nn.Linear(inc, num_class, bias=False))
        self.temp = temp

    def forward(self, x):
        return self.fc(TF.normalize(x)) / self.temp


def pac_main_iteration(G, F1, opt_g, opt_f, x_s, y_s, x_t, y_t, x_tu, x_tu2, threshold, cons_wt=1.0):
    """main.py's training step with ``cons_wt > 0`` (no VAT, no entropy method)."""
    opt_g.zero_grad()
    opt_f.zero_grad()
    cls_loss = TF.cross_entropy(F1(G(x_s)), y_s) + TF.cross_entropy(F1(G(x_t)), y_t)
    pls = torch.softmax(F1(G(x_tu)).detach(), dim=1)
    pl_mask = (pls.max(dim=1)[0] > threshold).float()
    loss_cons = (torch.sum(-pls * torch.log_softmax(F1(G(x_tu2)), dim=1), dim=1) * pl_mask).mean()
    loss = cls_loss + cons_wt * loss_cons
    loss.backward()
    opt_g.step()
    opt_f.step()
    return cls_loss.item(), loss_cons.item(), pl_mask.mean().item()


@pytest.mark.slow  # ~10 s; the loss pieces are checked against NumPy in the default run
def test_stage_two_steps_match_pytorch_main_py():
    torch.manual_seed(0)
    G, F1 = ref.LeNet(3, 28), Predictor(100, CLASSES, T)
    opt_g = torch.optim.SGD(G.parameters(), lr=LR, momentum=0.9, weight_decay=WD, nesterov=True)
    opt_f = torch.optim.SGD(F1.parameters(), lr=LR, momentum=0.9, weight_decay=WD, nesterov=True)
    # a lower threshold than PAC's 0.9 keeps masked predictions away from one-hot, where a gradient
    # leaking through the pseudo-labels would vanish and go unnoticed
    threshold = 0.5
    cfg = pac_config(rot_iters=0, threshold=threshold)
    method = build_method(cfg)
    params = dict(method.parameters_and_names())
    start = {f"model.backbone.{k}": v.detach().numpy().copy() for k, v in G.state_dict().items()}
    start["model.head.fc.weight"] = F1.fc[0].weight.detach().numpy().copy()
    for name, value in start.items():
        params[name].set_data(Tensor(value))
    method.set_train(True)
    phase = method.phases()[0]
    step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(cfg.optim, method, phase))
    rng = np.random.default_rng(4)
    rates = []
    for it in range(3):
        x_s, x_t, x_tu = (rng.normal(size=(n, 3, 28, 28)).astype(np.float32) for n in (BATCH, LABELLED, BATCH))
        x_tu2 = rng.normal(size=x_tu.shape).astype(np.float32)
        y_s, y_t = rng.integers(0, CLASSES, BATCH).astype(np.int32), rng.integers(0, CLASSES, LABELLED).astype(np.int32)
        outs = step(ms.mutable({"x_s": Tensor(x_s), "y_s": Tensor(y_s), "x_t": Tensor(x_tu), "x_t_strong": Tensor(x_tu2),
                                "x_tl": Tensor(x_t), "y_tl": Tensor(y_t)}), Tensor(0.0, ms.float32))
        cls, cons, rate = pac_main_iteration(G, F1, opt_g, opt_f, torch.from_numpy(x_s),
                                             torch.from_numpy(y_s).long(), torch.from_numpy(x_t),
                                             torch.from_numpy(y_t).long(), torch.from_numpy(x_tu),
                                             torch.from_numpy(x_tu2), threshold)
        logged = dict(zip(method.step_log_keys(phase), (float(v.asnumpy()) for v in outs)))
        assert logged["cls"] == pytest.approx(cls, rel=1e-4) and logged["cons"] == pytest.approx(cons, rel=1e-3, abs=1e-6)
        assert logged["mask_rate"] == rate
        rates.append(rate)
    assert 0 < max(rates) and min(rates) < 1  # masked and unmasked rows both occurred
    want = {f"model.backbone.{k}": v.detach().numpy() for k, v in G.state_dict().items()}
    want["model.head.fc.weight"] = F1.fc[0].weight.detach().numpy()
    for name, value in want.items():
        moved = np.abs(value - start[name]).max()
        assert moved > 0, name
        np.testing.assert_allclose(params[name].asnumpy() - start[name], value - start[name], rtol=0,
                                   atol=5e-3 * moved + 1e-7, err_msg=f"update of {name}")
