"""CyCADA (losses/cycada.py): the translation step against PyTorch written from the reference, the
image pool against ``util/image_pool.py``, the translated-set cache, the phases end to end and resume.

The PyTorch side of the step is ``CycleGANSemanticModel.optimize_parameters`` of
jhoffman/pytorch-CycleGAN-and-pix2pix ``models/cycle_gan_semantic_model.py`` (forward; G_A and G_B
with D_A, D_B frozen; then D_A and D_B on pooled fakes), with the classifier frozen (the CyCADA
paper's fixed f_S; the fork trains its netCLS alongside). A = source, B = target.
"""
import os
import signal
import subprocess
import sys
import time

import engine  # noqa: F401  (runtime settings before MindSpore loads)
import losses  # noqa: F401  (registers the methods)
import mindspore as ms
import numpy as np
import pytest
import torch
import yaml
from mindspore import Tensor
from torch import nn as tnn

from conftest import ROOT, run_script
from engine.config import build_config
from engine.trainer import build_method, build_phase_optimizers, make_step
from losses.cycada import ImagePool, pool_choices, pool_plans, simulate_pool
from test_translation import TorchNLayerDiscriminator, TorchResnetGenerator, load_torch, torch_init_weights, \
    torch_lsgan
from tools import torch_reference as ref

N, SIZE, CLASSES, POOL = 4, 16, 4, 3
MEAN, STD = np.array([0.3, 0.4, 0.5], np.float32), np.array([0.2, 0.25, 0.3], np.float32)


# ------------------------------------------------------------------------------------------ image pool
class ReferenceImagePool:
    """util/image_pool.py ``ImagePool.query`` with ``random.uniform`` / ``random.randint`` replaced by
    the given per-image draws (``u[i]``, ``slot[i] % pool_size``)."""

    def __init__(self, pool_size):
        self.pool_size, self.num_imgs, self.images = pool_size, 0, []

    def query(self, images, u, slots):
        if self.pool_size == 0:
            return images
        return_images = []
        for i, image in enumerate(images):
            image = torch.unsqueeze(image.data, 0)
            if self.num_imgs < self.pool_size:
                self.num_imgs = self.num_imgs + 1
                self.images.append(image)
                return_images.append(image)
            else:
                p = u[i]
                if p > 0.5:
                    random_id = int(slots[i] % self.pool_size)
                    tmp = self.images[random_id].clone()
                    self.images[random_id] = image
                    return_images.append(tmp)
                else:
                    return_images.append(image)
        return torch.cat(return_images, 0)


def test_pool_plan_on_a_constructed_case():
    """Pool of 2, batch of 3. Fill level 0: images 0, 1 are stored and returned; image 2 (u > 0.5,
    slot 0) returns image 0, just stored, and takes its place. Full pool: image 0 keeps itself
    (u <= 0.5); image 1 swaps with stored slot 1; image 2 swaps slot 1 again, getting image 1 back."""
    u, slots = np.array([0.2, 0.9, 0.7]), np.array([5, 3, 1])  # slots mod 2: 1, 1, 1 (image 0's unused)
    returned, stored = simulate_pool(0, 2, np.array([0.2, 0.9, 0.7]), np.array([0, 1, 0]))
    assert returned == [2, 3, 2] and stored == [4, 3]
    returned, stored = simulate_pool(2, 2, u, slots)
    assert returned == [2, 1, 3] and stored == [0, 4]


@pytest.mark.parametrize("batch, pool_size", [(4, 3), (2, 5), (3, 3)])
def test_device_pool_matches_util_image_pool(batch, pool_size):
    """Six queries: the device pool driven by host plans returns exactly what util/image_pool.py
    returns with the same draws, through the filling and the full pool."""
    pool = ImagePool(pool_size, (1, 2, 2), "pool")
    reference = ReferenceImagePool(pool_size)

    @ms.jit
    def query(fakes, returned, stored):
        return pool(fakes, returned, stored)

    for it in range(6):
        fakes = np.random.default_rng(it).normal(size=(batch, 1, 2, 2)).astype(np.float32)
        returned, stored = pool_plans(np.random.default_rng([9, it]), batch, pool_size)
        u, slots = pool_choices(np.random.default_rng([9, it]), batch)
        got = query(Tensor(fakes), Tensor(returned), Tensor(stored)).asnumpy()
        want = reference.query(torch.from_numpy(fakes), u, slots).numpy()
        np.testing.assert_array_equal(got, want)
        held = np.concatenate([image.numpy() for image in reference.images])
        np.testing.assert_array_equal(pool.images.asnumpy()[:len(held)], held)


# ------------------------------------------------------------------------------------------ translation step
def cycada_config(**method):
    return build_config({
        "data": {"image_size": SIZE, "channels": 3, "batch_size": N},
        "model": {"backbone": "lenet", "num_classes": CLASSES},
        "method": {"name": "cycada", "translation_iters": 3, "ngf": 4, "n_blocks": 1, "ndf": 4, "disc_layers": 2,
                   "pool_size": POOL, "disc_hidden": 8, **method},
        "train": {"iters": 3}})


def translation_setup(**method):
    cfg = cycada_config(**method)
    net = build_method(cfg)
    net.set_train(True)
    phase = next(p for p in net.phases() if p.name == "translation")
    net.start_phase(phase)
    net.pixel_mean.set_data(Tensor(MEAN.reshape(1, 3, 1, 1)))
    net.pixel_std.set_data(Tensor(STD.reshape(1, 3, 1, 1)))
    return cfg, net, phase


def torch_networks(net):
    """PyTorch G_A, G_B, D_A (target), D_B (source) and the classifier, copied into ``net``."""
    torch.manual_seed(0)
    g_a, g_b = TorchResnetGenerator(3, 3, 4, 1), TorchResnetGenerator(3, 3, 4, 1)
    d_a, d_b = TorchNLayerDiscriminator(3, 4, 2), TorchNLayerDiscriminator(3, 4, 2)
    for module in (g_a, g_b, d_a, d_b):
        torch_init_weights(module)
    cls = ref.ImageClassifier(ref.LeNet(3, SIZE), CLASSES)
    for mine, theirs in ((net.gen_st, g_a), (net.gen_ts, g_b), (net.disc_t, d_a), (net.disc_s, d_b),
                         (net.source_model, cls)):
        load_torch(mine, theirs)
    for p in cls.parameters():
        p.requires_grad_(False)
    cls.eval()
    return g_a, g_b, d_a, d_b, cls


def torch_step(nets, opt_g, opt_d, pools, real_a, real_b, label_a, draws, identity=0.0, semantic=1.0):
    """``optimize_parameters`` of cycle_gan_semantic_model.py (lambda_A = lambda_B = 1); images in [-1, 1];
    the classifier sees them normalised as the repository's data (``((u + 1) / 2 - mean) / std``)."""
    g_a, g_b, d_a, d_b, cls = nets
    mean, std = torch.from_numpy(MEAN).view(1, 3, 1, 1), torch.from_numpy(STD).view(1, 3, 1, 1)

    def net_cls(u):
        return cls(((u + 1) / 2 - mean) / std)[0]

    ce, l1 = tnn.CrossEntropyLoss(), tnn.L1Loss()
    # forward
    fake_b = g_a(real_a)
    rec_a = g_b(fake_b)
    fake_a = g_b(real_b)
    rec_b = g_a(fake_a)
    _, gt_pred_b = net_cls(real_b).max(1)
    pred_fake_a, pred_fake_b = net_cls(fake_a), net_cls(fake_b)
    # G_A and G_B
    for d in (d_a, d_b):
        for p in d.parameters():
            p.requires_grad_(False)
    opt_g.zero_grad()
    loss_idt_a = l1(g_a(real_b), real_b) * identity if identity > 0 else 0
    loss_idt_b = l1(g_b(real_a), real_a) * identity if identity > 0 else 0
    loss_g_a = 2 * torch_lsgan(d_a(fake_b), True)
    loss_g_b = torch_lsgan(d_b(fake_a), True)
    loss_cycle_a, loss_cycle_b = l1(rec_a, real_a), l1(rec_b, real_b)
    loss_sem_ab, loss_sem_ba = ce(pred_fake_b, label_a), ce(pred_fake_a, gt_pred_b)
    loss_g = (loss_g_a + loss_g_b + loss_cycle_a + loss_cycle_b + loss_idt_a + loss_idt_b
              + semantic * (loss_sem_ab + loss_sem_ba))
    loss_g.backward()
    opt_g.step()
    # D_A and D_B
    for d in (d_a, d_b):
        for p in d.parameters():
            p.requires_grad_(True)
    opt_d.zero_grad()
    pool_a, pool_b = pools
    (u_s, slots_s), (u_t, slots_t) = draws
    fake_b_q = pool_b.query(fake_b, u_t, slots_t)
    loss_d_a = (torch_lsgan(d_a(real_b), True) + torch_lsgan(d_a(fake_b_q.detach()), False)) * 0.5
    loss_d_a.backward()
    fake_a_q = pool_a.query(fake_a, u_s, slots_s)
    loss_d_b = (torch_lsgan(d_b(real_a), True) + torch_lsgan(d_b(fake_a_q.detach()), False)) * 0.5
    loss_d_b.backward()
    opt_d.step()
    return [float(v.detach()) for v in (loss_g_a / 2, loss_g_b, loss_cycle_a, loss_cycle_b, loss_sem_ab, loss_sem_ba,
                               loss_d_a, loss_d_b)]


def cancelled_by_instance_norm(name):
    """Biases of convolutions followed by instance norm (every generator conv but the last; the middle
    discriminator convs): the normalisation removes them, so their gradient is zero up to round-off."""
    if ".disc_" in f".{name}" or name.startswith("disc_"):
        index = int(name.split("convs.")[1].split(".")[0])
        return name.endswith("bias") and 0 < index < 3  # disc_layers=2: convs 0..3, norm after 1 and 2
    return name.endswith("bias") and not name.endswith("out.bias")


# Each step starts both frameworks from MindSpore's parameters and compares that step's update. Tolerance:
# float32 round-off in one framework's forward pass can put a ReLU input on the other side of 0 (measured: a
# pre-ReLU value of 2e-7 in G_ts's last up-block for one sample of a batch), which changes that sample's
# gradient by ~2 % (PyTorch float32 against float64 differs the same way there). A wrong loss term, weight,
# pseudo-label, pool draw or gradient route changes an update by far more.
RTOL_UPDATE = 3e-2
SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "lr_schedule": "constant"}


@pytest.mark.slow
@pytest.mark.parametrize("identity", [0.0, 0.5])
def test_translation_step_matches_cycle_gan_semantic_model(identity):
    """Three joint steps against PyTorch, pool included: the losses, and the change of every generator
    and discriminator weight, each step from the same parameters. Plain SGD for both (the config's Adam
    is ``engine.optim.TorchAdam``, tested elsewhere; Adam's first steps are lr x sign(gradient), which
    turns round-off in near-zero gradient entries into whole steps). The frozen classifier is
    bit-identical afterwards."""
    cfg, net, phase = translation_setup(identity_weight=identity, translation_optim=SGD)
    nets = torch_networks(net)
    g_a, g_b, d_a, d_b, cls = nets
    frozen_before = {n: p.asnumpy().copy() for n, p in net.source_model.parameters_and_names()}
    opt_g = torch.optim.SGD(list(g_a.parameters()) + list(g_b.parameters()), lr=SGD["lr"])
    opt_d = torch.optim.SGD(list(d_a.parameters()) + list(d_b.parameters()), lr=SGD["lr"])
    pools = (ReferenceImagePool(POOL), ReferenceImagePool(POOL))
    step = make_step(phase, net.loss_cells(phase), build_phase_optimizers(cfg.optim, net, phase))
    keys = net.step_log_keys(phase)
    pairs = ((net.gen_st, g_a), (net.gen_ts, g_b), (net.disc_t, d_a), (net.disc_s, d_b))

    def to_gan(x):
        return torch.from_numpy(2 * (x * STD.reshape(1, 3, 1, 1) + MEAN.reshape(1, 3, 1, 1)) - 1)

    for it in range(3):
        rng = np.random.default_rng(it)
        x_s = rng.normal(size=(N, 3, SIZE, SIZE)).astype(np.float32)
        x_t = (rng.normal(size=(N, 3, SIZE, SIZE)) * 0.5 + 0.5).astype(np.float32)
        y_s = rng.integers(0, CLASSES, N).astype(np.int32)
        batch = {"x_s": x_s, "y_s": y_s, "x_t": x_t}
        batch.update(net.host_random(np.random.default_rng([7, it]), N))
        draw_rng = np.random.default_rng([7, it])  # host_random draws the source pool's choices, then the target's
        draws = (pool_choices(draw_rng, N), pool_choices(draw_rng, N))
        before = {}
        for mine, theirs in pairs:
            with torch.no_grad():
                for p, q in zip(mine.get_parameters(), theirs.parameters()):
                    before[p.name] = p.asnumpy().copy()
                    q.copy_(torch.from_numpy(before[p.name]))
        out = dict(zip(keys, [float(v.asnumpy()) for v in step(ms.mutable({k: Tensor(v) for k, v in batch.items()}),
                                                                  Tensor(0.0, ms.float32))]))
        want = torch_step(nets, opt_g, opt_d, pools, to_gan(x_s), to_gan(x_t), torch.from_numpy(y_s).long(), draws,
                          identity)
        got = [out[k] for k in ("adv_st", "adv_ts", "cycle_s", "cycle_t", "sem_st", "sem_ts", "d_t", "d_s")]
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6, err_msg=f"iteration {it}")
        if identity:
            assert out["idt_s"] > 0 and out["idt_t"] > 0
        for mine, theirs in pairs:
            for p, q in zip(mine.get_parameters(), theirs.parameters()):
                got_update, want_update = p.asnumpy() - before[p.name], q.detach().numpy() - before[p.name]
                if cancelled_by_instance_norm(p.name):  # zero gradient up to round-off on both sides
                    assert np.abs(got_update).max() < 1e-5 and np.abs(want_update).max() < 1e-5, p.name
                    continue
                err = np.linalg.norm(got_update - want_update) / np.linalg.norm(want_update)
                assert err < RTOL_UPDATE, f"iteration {it}: {p.name} update relative error {err:.2e}"
    for n, p in net.source_model.parameters_and_names():
        np.testing.assert_array_equal(p.asnumpy(), frozen_before[n], err_msg=n)


def test_semantic_loss_moves_the_generator_not_the_classifier():
    """CE of the frozen classifier on G_st(x_s): the gradient w.r.t. the translation groups has entries for
    G only (D gets none from it), and the classifier's parameters are in no optimizer group."""
    cfg, net, phase = translation_setup()
    groups = net.param_groups(phase)
    trained = {id(p) for group in groups.values() for params, _ in group for p in params}
    assert not trained & {id(p) for p in net.source_model.get_parameters()}
    assert not trained & {id(p) for p in net.model.get_parameters()}
    rng = np.random.default_rng(0)
    batch = {"x_s": rng.normal(size=(N, 3, SIZE, SIZE)).astype(np.float32),
             "y_s": rng.integers(0, CLASSES, N).astype(np.int32),
             "x_t": rng.normal(size=(N, 3, SIZE, SIZE)).astype(np.float32), **net.host_random(rng, N)}
    batch = ms.mutable({k: Tensor(v) for k, v in batch.items()})

    def semantic(b):
        return net.translation_loss(b, Tensor(0.0, ms.float32))[1][6]  # sem_st

    params = net.gen_st.trainable_params() + net.disc_t.trainable_params() + net.source_model.trainable_params()
    grads = ms.grad(semantic, grad_position=None, weights=params)(batch)
    n_gen, n_disc = len(net.gen_st.trainable_params()), len(net.disc_t.trainable_params())
    assert max(np.abs(g.asnumpy()).max() for g in grads[:n_gen]) > 0
    assert all(not np.abs(g.asnumpy()).any() for g in grads[n_gen:n_gen + n_disc])
    assert all(not p.requires_grad for p in net.source_model.get_parameters())


# ------------------------------------------------------------------------------------------ cache
class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def test_translated_set_is_cached_by_config_hash(tmp_path):
    from engine.data import build_data
    from engine.trainer import PhaseContext

    cfg = build_config({"data": {"source": {"name": "optdigits"}, "target": {"name": "optdigits_m"},
                                 "image_size": 28, "channels": 3, "batch_size": 64},
                        "model": {"backbone": "lenet", "num_classes": 10},
                        "method": {"name": "cycada", "ngf": 2, "n_blocks": 0, "ndf": 2},
                        "train": {"iters": 5}})
    net = build_method(cfg)
    data = build_data(cfg, 0)
    context = PhaseContext(str(tmp_path), data, cfg)
    net.translate = Counting(net.translate)
    retrain = next(p for p in net.phases() if p.name == "translated_pretrain")
    domain = net.phase_source(retrain, context)
    assert net.translate.calls == 1 and len(domain) == len(data.source.domain)
    assert domain.images.shape == data.source.domain.images.shape[:3] + (3,)
    np.testing.assert_array_equal(domain.labels, data.source.domain.labels)
    files = sorted(os.listdir(tmp_path))
    assert files == [f"translated_source_{net.cache_key(cfg)}.npz"]
    # reused: same config, same generator (a resumed run's ADDA phase)
    again = net.phase_source(net.phases()[-1], context)
    assert net.translate.calls == 1
    np.testing.assert_array_equal(again.images, domain.images)
    # only the config parts the set depends on change the key
    same = {"method": {"name": "cycada", "ngf": 2, "n_blocks": 0, "ndf": 2,
                       "adapt_optim": {"name": "adam", "lr": 0.1}, "disc_hidden": 7}, "train": {"log_every": 3}}
    for change, moves in ((same, False), ({"method": {"ngf": 3}}, True), ({"method": {"cycle_weight_t": 2.0}}, True),
                          ({"data": {"target": {"name": "optdigits"}}}, True), ({"train": {"seed": 1}}, True),
                          ({"method": {"translation_iters": 7}}, True), ({"optim": {"lr": 0.5}}, True)):
        other = build_config(merge(cfg_dict(cfg), change))
        assert (net.cache_key(other) != net.cache_key(cfg)) == moves, change
    # a different generator under the same key (a file from another run): re-created, not trusted
    first = net.gen_st.get_parameters().__next__()
    first.set_data(Tensor(first.asnumpy() + 0.5))
    net.phase_source(retrain, context)
    assert net.translate.calls == 2
    # the phases up to the translation get the config's own source
    assert net.phase_source(net.phases()[0], context) is None


def cfg_dict(cfg):
    from engine.config import dump_config

    return yaml.safe_load(dump_config(cfg))


def merge(base, change):
    out = dict(base)
    for k, v in change.items():
        out[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_pixel_range_is_read_off_the_data_transform():
    from datasets.transforms import build_transform

    _, net, _ = translation_setup()
    cfg = cycada_config()
    net.bind_pixel_range(build_transform("none", SIZE, 3, MEAN + 0.1, STD * 2), cfg.data)
    np.testing.assert_allclose(net.pixel_mean.asnumpy().ravel(), MEAN + 0.1, rtol=1e-5)
    np.testing.assert_allclose(net.pixel_std.asnumpy().ravel(), STD * 2, rtol=1e-5)
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(net.to_model(net.to_gan(Tensor(x))).asnumpy(), x, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ end to end
def tiny_opts(out_dir, iters=4, translation=4, every=2):
    return ["--opt", f"train.iters={iters}", f"method.translation_iters={translation}", "method.ngf=2",
            "method.n_blocks=0", "method.ndf=2", "method.disc_layers=2", "method.grid_images=3",
            f"train.log_every={every}", f"train.eval_every={every}", f"train.ckpt_every={every}",
            "train.validators=[]", f"train.output_dir={out_dir}"]


@pytest.mark.slow
def test_end_to_end_smoke(tmp_path):
    """All phases of cycada_optdigits at tiny sizes: metrics of each phase, grids, the translated set, results."""
    out = tmp_path / "run"
    run_script("train.py", "--config", "configs/digits/cycada_optdigits.yaml", *tiny_opts(out))
    phases = [r["phase"] for r in map(yaml.safe_load, (out / "metrics.jsonl").read_text().splitlines())]
    assert phases == ["source_pretrain"] * 2 + ["translation"] * 2 + ["translated_pretrain"] * 2 + ["adapt"] * 2
    assert sorted(os.listdir(out / "translation_grid")) == ["iter_000002.png", "iter_000004.png"]
    assert len([f for f in os.listdir(out) if f.startswith("translated_source_")]) == 1
    from PIL import Image

    assert Image.open(out / "translation_grid" / "iter_000004.png").size == (3 * 30 * 3, 6 * 30 * 3)
    results = yaml.safe_load((out / "results.json").read_text())
    assert 0.0 <= results["target_acc"] <= 1.0


def kill_when(proc, path, needle, timeout=600):
    """SIGKILL ``proc`` once ``path`` contains ``needle``."""
    start = time.time()
    while time.time() - start < timeout:
        if os.path.isfile(path) and needle in open(path, encoding="utf-8").read():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"finished before {needle!r} appeared in {path}")
        time.sleep(0.2)
    raise AssertionError("timeout")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    full = tmp_path_factory.mktemp("cycada") / "full"
    run_script("train.py", "--config", "configs/digits/cycada_optdigits.yaml", *tiny_opts(full))
    return full


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["source_pretrain", "translation", "translated_pretrain", "adapt"])
def test_resume_after_sigkill_in_each_phase(tmp_path, phase, uninterrupted):
    """Killed after the first checkpoint of ``phase`` and resumed with ``--resume auto``: the same final
    weights as an uninterrupted run (the translated set re-used or re-made, the stream switch re-applied)."""
    full, cut = uninterrupted, tmp_path / "cut"
    config = "configs/digits/cycada_optdigits.yaml"
    proc = subprocess.Popen([sys.executable, "train.py", "--config", config, *tiny_opts(cut)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, cut / "metrics.jsonl", f'"phase": "{phase}", "iter": 2,')
    if phase == "translated_pretrain":  # the cache must be re-made when it is gone
        for f in os.listdir(cut):
            if f.startswith("translated_source_"):
                os.remove(cut / f)
    run_script("train.py", "--config", config, *tiny_opts(cut), "--resume", "auto")
    a, b = ms.load_checkpoint(str(full / "last.ckpt")), ms.load_checkpoint(str(cut / "last.ckpt"))
    for name, value in a.items():
        if hasattr(value, "asnumpy"):
            np.testing.assert_array_equal(b[name].asnumpy(), value.asnumpy(), err_msg=name)
    res_a = yaml.safe_load((full / "results.json").read_text())
    res_b = yaml.safe_load((cut / "results.json").read_text())
    assert res_a["target_acc"] == res_b["target_acc"]


def test_bad_classifier_checkpoint_is_one_line(tmp_path):
    proc = run_script("train.py", "--config", "configs/digits/cycada_optdigits.yaml", *tiny_opts(tmp_path / "r"),
                      "method.classifier_ckpt=/nonexistent/last.ckpt", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "method.classifier_ckpt: checkpoint not found: /nonexistent/last.ckpt" in lines[0]
