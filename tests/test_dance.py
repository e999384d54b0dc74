"""DANCE (issue #15): its losses against NumPy, the memory bank update and the self-similarity masking, and
step-for-step parity with PyTorch code written from the official VisionLearningGroup/DANCE ``train_dance.py``
(``utils/loss.py``, ``models/LinearAverage.py``, ``models/basenet.py``, ``utils/lr_schedule.py``)."""
import math

import engine  # noqa: F401  (runtime settings before MindSpore loads)
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from engine.config import build_config
from engine.trainer import build_method, build_phase_optimizers, make_step
from losses.dance import MemoryBank, entropy, entropy_separation, neighbourhood_clustering

T = 0.05


# --------------------------------------------------------------------------- NumPy references (per sample)
def np_entropy_of(row):
    e = np.exp(row - row.max())
    p = e / e.sum()
    return -sum(q * math.log(q + 1e-5) for q in p)


def np_clustering(g_t, f_t, memory, idx, temperature):
    """Each target image: its prototype logits, then one similarity per memory row that is not a batch image's,
    then one per other batch image (the masked ones enter as -1/T)."""
    f = f_t / np.linalg.norm(f_t, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(f)):
        to_memory = [-1.0 / temperature if j in set(idx) else f[i] @ memory[j] / temperature
                     for j in range(len(memory))]
        to_batch = [-1.0 / temperature if k == i else f[i] @ f[k] / temperature for k in range(len(f))]
        total += np_entropy_of(np.concatenate([g_t[i], to_memory, to_batch]))
    return total / len(f)


def test_losses_match_numpy(mode):
    rng = np.random.default_rng(0)
    g_t = rng.normal(0, 3, (5, 4))
    f_t = rng.normal(0, 1, (5, 6))
    memory = rng.normal(0, 1, (9, 6))
    memory /= np.linalg.norm(memory, axis=1, keepdims=True)
    idx = np.array([7, 2, 0, 5, 3], np.int32)
    rho, margin = math.log(4) / 2, 0.5

    def losses(g, f, mem, index):
        f_unit = f / ms.ops.norm(f, dim=-1, keepdim=True)
        return entropy(g), entropy_separation(g, rho, margin), neighbourhood_clustering(g, f_unit, mem, index, T)

    fn = ms.jit(losses) if mode == "graph" else losses
    got = [float(v.asnumpy()) for v in fn(*(Tensor(a, ms.float32) for a in (g_t, f_t, memory)), Tensor(idx))]
    entropies = [np_entropy_of(row) for row in g_t]
    want = [np.mean(entropies), -np.mean([max(abs(h - rho), margin) for h in entropies]),
            np_clustering(g_t, f_t, memory, idx, T)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_own_memory_rows_and_self_pairs_are_masked():
    """A bank holding the batch's own features (as after its last visit): masked, those rows add only exp(-1/T)
    terms, so the loss equals the NumPy loss over a bank without them. Unmasked they would dominate."""
    rng = np.random.default_rng(1)
    f_t = rng.normal(0, 1, (4, 6)).astype(np.float32)
    f_unit = f_t / np.linalg.norm(f_t, axis=1, keepdims=True)
    others = rng.normal(0, 1, (3, 6))
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    memory = np.concatenate([f_unit, others]).astype(np.float32)  # rows 0..3: the batch itself
    g_t = np.zeros((4, 2), np.float32)
    own_rows = Tensor(np.arange(4, dtype=np.int32))
    got = float(neighbourhood_clustering(Tensor(g_t), Tensor(f_unit), Tensor(memory), own_rows, T).asnumpy())
    assert got == pytest.approx(np_clustering(g_t, f_t, memory, [0, 1, 2, 3], T), rel=1e-5)
    unmasked = np.mean([np_entropy_of(np.concatenate([[0.0, 0.0], memory @ f / T, [-1 / T] * 4])) for f in f_unit])
    assert abs(got - unmasked) > 0.1


def test_memory_bank_update_follows_linear_average():
    """First update: the rows take the (renormalised) features, momentum ignored; later ones mix with the old rows."""
    bank = MemoryBank(5, 3, momentum=0.5)
    first = np.array([[3.0, 0.0, 4.0], [0.0, 2.0, 0.0]], np.float32)
    update = ms.jit(bank.update)
    update(Tensor(first), Tensor(np.array([4, 1], np.int32)))
    want = np.zeros((5, 3), np.float32)
    want[4], want[1] = [0.6, 0.0, 0.8], [0.0, 1.0, 0.0]
    np.testing.assert_allclose(bank.memory.asnumpy(), want, atol=1e-6)
    second = np.array([[0.0, 0.0, 1.0]], np.float32)
    update(Tensor(second), Tensor(np.array([4], np.int32)))
    mixed = 0.5 * np.array([0.6, 0.0, 0.8]) + 0.5 * second[0]
    want[4] = mixed / np.linalg.norm(mixed)
    np.testing.assert_allclose(bank.memory.asnumpy(), want, atol=1e-6)


def test_dance_needs_the_cosine_head():
    cfg = build_config({"model": {"head": "linear", "num_classes": 6}, "method": {"name": "dance"}})
    with pytest.raises(ValueError, match="model.head: cosine"):
        build_method(cfg)


# --------------------------------------------------------------------------- parity with train_dance.py
K, B, N, STEPS, LR, ETA, MARGIN, MULTI, MEMORY_MOMENTUM = 4, 6, 10, 3, 0.01, 0.05, 0.5, 0.1, 0.0


def torch_dance_run(torch_state, batches):
    """``train_dance.py``'s loop on a LeNet ``G`` and a ``ResClassifier_MME`` ``C1``: the log and states per step."""
    import torch
    import torch.nn.functional as F
    from tools import torch_reference as ref

    G = ref.LeNet(3, 28)  # noqa: N806 (the official names)
    C1 = torch.nn.Linear(100, K, bias=False)  # noqa: N806  ResClassifier_MME.fc
    G.load_state_dict({k[len("model.backbone."):]: torch.from_numpy(v) for k, v in torch_state.items()
                       if k.startswith("model.backbone.")})
    C1.weight.data = torch.from_numpy(torch_state["model.head.fc.weight"]).clone()

    def classify(x):  # ResClassifier_MME.forward
        return C1(F.normalize(x)) / T

    def entropy_t(p):  # utils/loss.py
        p = F.softmax(p, dim=1)
        return -torch.mean(torch.sum(p * torch.log(p + 1e-5), 1))

    def entropy_margin(p, value, margin):
        p = F.softmax(p, dim=1)
        return -torch.mean(torch.clamp(torch.abs(-torch.sum(p * torch.log(p + 1e-5), 1) - value), min=margin))

    memory, flag = torch.zeros(N, 100), 0  # LinearAverage(2048, ndata, T, momentum=0.0)
    opt_g = torch.optim.SGD([{"params": [p], "lr": MULTI, "weight_decay": 5e-4} for p in G.parameters()],
                            momentum=0.9, weight_decay=0.0005, nesterov=True)
    opt_c1 = torch.optim.SGD([C1.weight], lr=1.0, momentum=0.9, weight_decay=0.0005, nesterov=True)
    param_lr_g = [g["lr"] for g in opt_g.param_groups]
    param_lr_f = [g["lr"] for g in opt_c1.param_groups]
    thr = math.log(K) / 2
    logs, states, memories = [], [], []
    for step, (x_s, y_s, x_t, index) in enumerate(batches):
        for opt, param_lr in ((opt_g, param_lr_g), (opt_c1, param_lr_f)):  # inv_lr_scheduler
            lr = LR * (1 + 10.0 * min(1.0, step / STEPS)) ** (-0.75)
            for group, mult in zip(opt.param_groups, param_lr):
                group["lr"] = lr * mult
        img_s, label_s, img_t = torch.from_numpy(x_s), torch.from_numpy(y_s.astype(np.int64)), torch.from_numpy(x_t)
        index_t = torch.from_numpy(index.astype(np.int64))
        opt_g.zero_grad()
        opt_c1.zero_grad()
        w = C1.weight.data  # C1.module.weight_norm()
        C1.weight.data = w.div(w.norm(p=2, dim=1, keepdim=True).expand_as(w))
        out_s = classify(G(img_s))
        loss_s = F.cross_entropy(out_s, label_s)
        feat_t = G(img_t)
        out_t = classify(feat_t)
        feat_t = F.normalize(feat_t)
        feat_mat = torch.mm(feat_t, memory.t()) / T
        feat_mat[:, index_t] = -1 / T
        feat_mat2 = torch.matmul(feat_t, feat_t.t()) / T
        feat_mat2.masked_fill_(torch.eye(feat_mat2.size(0)).bool(), -1 / T)
        loss_nc = ETA * entropy_t(torch.cat([out_t, feat_mat, feat_mat2], 1))
        loss_ent = ETA * entropy_margin(out_t, thr, MARGIN)
        total = loss_nc + loss_s + loss_ent
        total.backward()
        opt_g.step()
        opt_c1.step()
        # lemniscate.update_weight(feat_t, index_t) with momentum 0
        momentum = 0.0 if not flag else MEMORY_MOMENTUM
        weight_pos = memory.index_select(0, index_t).clone()
        weight_pos.mul_(momentum).add_(feat_t.data * (1 - momentum))
        memory.index_copy_(0, index_t, weight_pos.div(weight_pos.pow(2).sum(1, keepdim=True).pow(0.5)))
        memory, flag = F.normalize(memory), 1
        logs.append({"loss": total.item(), "cls": loss_s.item(), "nc": loss_nc.item() / ETA,
                     "es": loss_ent.item() / ETA})
        state = {f"model.backbone.{k}": v.detach().numpy().copy() for k, v in G.state_dict().items()}
        state["model.head.fc.weight"] = C1.weight.detach().numpy().copy()
        states.append(state)
        memories.append(memory.numpy().copy())
    return logs, states, memories


def dance_batches(seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        out.append((rng.normal(size=(B, 3, 28, 28)).astype(np.float32), rng.integers(0, K, B).astype(np.int32),
                    (rng.normal(size=(B, 3, 28, 28)) * 1.5 + 0.5).astype(np.float32),
                    rng.permutation(N)[:B].astype(np.int32)))
    return out


def test_step_matches_train_dance_step_for_step():
    pytest.importorskip("torch")
    from tests.test_parity_torch import assert_logged, compare_state, compare_updates

    cfg = build_config({
        "data": {"image_size": 28, "channels": 3, "batch_size": B},
        "model": {"backbone": "lenet", "head": "cosine", "head_kwargs": {"temperature": T}, "num_classes": K,
                  "backbone_lr_mult": MULTI},
        "method": {"name": "dance", "eta": ETA, "margin": MARGIN},
        "optim": {"name": "sgd", "lr": LR, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                  "lr_schedule": "inv", "lr_gamma": 10.0 / STEPS, "lr_power": 0.75},
        "train": {"iters": STEPS, "seed": 0}})
    method = build_method(cfg)
    method.bank = MemoryBank(N, method.model.features_dim)  # a small bank, so the remembered rows weigh in
    start = {n: p.asnumpy().copy() for n, p in method.parameters_and_names() if n.startswith("model.")}
    batches = dance_batches()
    logs, states, memories = torch_dance_run(start, batches)
    method.set_train(True)
    phase = method.phases()[0]
    step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(cfg.optim, method, phase))
    keys = method.step_log_keys(phase)
    before = start
    for it, (x_s, y_s, x_t, idx) in enumerate(batches):
        batch = ms.mutable({"x_s": Tensor(x_s), "y_s": Tensor(y_s), "x_t": Tensor(x_t), "t_idx": Tensor(idx)})
        got = dict(zip(keys, (float(v.asnumpy()) for v in step(batch, Tensor(it / STEPS, ms.float32)))))
        assert set(assert_logged(got, logs[it], it)) == {"loss", "cls", "nc", "es"}
        compare_state(method, states[it], skip=("bank.",))
        compare_updates(method, before, states[it])
        np.testing.assert_allclose(method.bank.memory.asnumpy(), memories[it], rtol=1e-4, atol=1e-5,
                                   err_msg=f"memory bank after step {it}")
        before = states[it]
