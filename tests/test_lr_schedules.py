"""The cosine schedule against PyTorch's CosineAnnealingLR, stepped per iteration and per epoch."""
import engine  # noqa: F401  (before MindSpore)

import mindspore as ms
import pytest
import torch
from mindspore import Tensor

from engine.config import OptimCfg
from engine.optim import build_lr


@pytest.mark.parametrize("per_epoch", [1, 7])
def test_cosine_matches_torch_cosine_annealing(per_epoch):
    epochs, lr = 5, 0.02
    schedule = build_lr(OptimCfg(lr=lr, lr_schedule="cosine", lr_step_every=per_epoch), 0.5, epochs * per_epoch)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr * 0.5)
    torch_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for it in range(epochs * per_epoch + 3):  # past the end it stays at the minimum, as a poly schedule does
        if it and it % per_epoch == 0 and it // per_epoch <= epochs:
            opt.step()
            torch_schedule.step()  # Dassl: once per epoch
        expected = opt.param_groups[0]["lr"]
        assert float(schedule(Tensor(it, ms.int32)).asnumpy()) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_cosine_needs_a_length():
    with pytest.raises(ValueError, match="lr_step_every"):
        build_lr(OptimCfg(lr_schedule="cosine", lr_step_every=10), 1.0, 5)
