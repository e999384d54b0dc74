"""CyCADA: cycle-consistent adversarial domain adaptation (Hoffman et al., ICML 2018).

Official code: jhoffman/cycada_release (``scripts/train_adda.py``, ``cycada/tools/train_adda_net.py``)
and its CycleGAN fork jhoffman/pytorch-CycleGAN-and-pix2pix (``models/cycle_gan_semantic_model.py``,
``models/networks.py``, ``util/image_pool.py``, ``train_cycada.sh``). One config runs the phases

1. ``source_pretrain``: the classifier f_S on labelled source (ADDA's phase; skipped when
   ``method.classifier_ckpt`` names a source-only run's checkpoint, loaded instead);
2. ``translation``: CycleGAN with semantic consistency (the fork's ``CycleGANSemanticModel``).
   G_st, G_ts (:class:`models.translation.ResnetGenerator`), D_s, D_t (PatchGAN), images in [-1, 1]:

       G:  w_st LS(D_t(G_st(x_s)), 1) + w_ts LS(D_s(G_ts(x_t)), 1)
           + lambda_s |G_ts(G_st(x_s)) - x_s|_1 + lambda_t |G_st(G_ts(x_t)) - x_t|_1   (+ identity terms)
           + w_sem [CE(f_S(G_st(x_s)), y_s) + CE(f_S(G_ts(x_t)), argmax f_S(x_t))]
       D_t: 1/2 [LS(D_t(x_t), 1) + LS(D_t(pool_t(G_st(x_s))), 0)],  D_s likewise with x_s, pool_s

   LS = LSGAN's mean squared error, w_st = 2 and w_ts = 1 as the fork (``loss_G_A = 2 * ...``),
   lambda = 1 and no identity term as its digit script. f_S is a frozen copy of the phase-1
   classifier (ADDA's ``source_model``: inference mode, not in any parameter group), so the
   semantic terms move the generators only. The generator and discriminator updates are the two
   parameter groups of one joint step (``Phase.joint``): both gradients come from one forward
   pass, the generator terms see D with ``stop_gradient`` weights and the D terms see detached
   fakes: exactly ``optimize_parameters`` (forward; G step with D frozen; D step on the fakes of
   that same forward). Adam 2e-4, betas (0.5, 0.999) for both.
3. the whole source training set translated once by G_st to ``translated_source_<key>.npz``
   (uint8 images + labels; ``key`` hashes the config parts the set depends on, and the file also
   holds a digest of G_st's weights, checked before reuse), done by :meth:`CyCADA.phase_source`
   when a later phase starts or resumes; the source stream reads that set from then on;
4. ``translated_pretrain`` (the classifier retrained on translated source, from its initial
   weights as ``train_adda.py`` trains a new net on ``svhn2mnist``) and ADDA's ``adapt`` from the
   translated source to the target (:class:`losses.adda.ADDA`, inherited unchanged);
5. evaluation of the adapted classifier on the target, as every method.

Image pool (``util/image_pool.py``, 50 images per direction): kept on the device as a
non-trainable Parameter (:class:`ImagePool`) and updated inside the step. Its random choices (a
50 % chance, per image once the pool is full, of returning a stored fake and storing the new one
in its place) are drawn on the host per iteration (``host_random``) and turned there into gather
indices over ``[pool; fakes]`` for every possible fill level, so the step needs no host sync and
resume replays the same choices. A grid PNG (source, translation, reconstruction; and the same
from the target) is written to ``<run_dir>/translation_grid/`` at every evaluation point of the
translation phase.

Deliberate differences from the fork, each said where it matters: f_S is pretrained and frozen
(the paper's f_S; the fork trains its ``netCLS`` from scratch beside the GAN and gates the
semantic loss until that classifier's loss falls below 1); a constant learning rate (the fork
decays linearly to 0 over its last 100 epochs); no dropout in the generators (see
``models/translation.py``).
"""
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from datasets.base import ArrayDomain
from engine.registry import METHODS
from losses.adda import ADDA, AddaParams
from losses.base import JOINT, Phase, cross_entropy
from models.translation import PatchDiscriminator, ResnetGenerator, l1_loss, lsgan_loss

TRANSLATION = "translation"
# method params the translated source set depends on (besides data, model, optim, seed and the phases before it)
TRANSLATION_KEYS = ("classifier_ckpt", "translation_iters", "ngf", "n_blocks", "n_downsampling", "ndf", "disc_layers",
                    "cycle_weight_s", "cycle_weight_t", "identity_weight", "adv_weight_st", "adv_weight_ts",
                    "semantic_weight", "pool_size", "translation_optim")


@dataclass
class CycadaParams(AddaParams):
    name: str = "cycada"
    classifier_ckpt: str = ""        # a source-only run's checkpoint: replaces the source_pretrain phase
    translation_iters: int = 2000
    ngf: int = 64                    # generator width (the fork: 64)
    n_blocks: int = 9                # residual blocks (the fork: resnet_9blocks)
    n_downsampling: int = 2
    ndf: int = 64                    # discriminator width
    disc_layers: int = 3             # stride-2 layers of the PatchGAN (the fork's digit script: n_layers_D 3)
    cycle_weight_s: float = 1.0      # lambda_A of the fork's digit script
    cycle_weight_t: float = 1.0      # lambda_B
    identity_weight: float = 0.0     # lambda_identity (digit script: 0)
    adv_weight_st: float = 2.0       # the fork's loss_G_A = 2 * GAN(D_A(G_A(A)))
    adv_weight_ts: float = 1.0
    semantic_weight: float = 1.0
    pool_size: int = 50
    translation_optim: Dict[str, Any] = field(default_factory=lambda: {
        "name": "adam", "lr": 0.0002, "betas": [0.5, 0.999], "lr_schedule": "constant", "weight_decay": 0.0})
    retrain_from_scratch: bool = True  # translated_pretrain restarts the classifier from its initial weights
    cache_dir: str = ""              # where translated sets are cached ("": the run directory)
    grid_images: int = 8             # images per row of the translation grid


# ---------------------------------------------------------------------------------------------- image pool
def pool_choices(rng, batch_size):
    """The host draws of one pool query: ``u`` (swap when > 0.5) and the slot, per image of the batch."""
    return rng.random(batch_size), rng.integers(0, 1 << 30, batch_size)


def simulate_pool(count, pool_size, u, slots):
    """CycleGAN's ``ImagePool.query`` on indices, with ``count`` images already stored.

    Returns ``(returned, stored)``: for each batch image, and each pool slot after the query, its
    index in ``[pool images (pool_size); batch fakes (N)]``.
    """
    stored = list(range(pool_size))
    returned = []
    for i in range(len(u)):
        if count < pool_size:  # filling: store and return the new image
            stored[count] = pool_size + i
            count += 1
            returned.append(pool_size + i)
        elif u[i] > 0.5:       # return a random stored image, keep the new one in its place
            slot = int(slots[i] % pool_size)
            returned.append(stored[slot])
            stored[slot] = pool_size + i
        else:
            returned.append(pool_size + i)
    return returned, stored


def pool_plans(rng, batch_size, pool_size):
    """Gather indices of one query for every fill level the pool can be at: ``(K, N)`` and ``(K, P)`` int32.

    Level ``k`` holds ``min(P, k N)`` images; ``K = ceil(P / N) + 1`` (the last level: full).
    """
    u, slots = pool_choices(rng, batch_size)
    levels = math.ceil(pool_size / batch_size) + 1
    plans = [simulate_pool(min(pool_size, k * batch_size), pool_size, u, slots) for k in range(levels)]
    return (np.array([p[0] for p in plans], np.int32), np.array([p[1] for p in plans], np.int32))


class ImagePool(nn.Cell):
    """The pool's images and fill level as non-trainable Parameters; ``query`` applies a host-made plan."""

    def __init__(self, pool_size, image_shape, name):
        super().__init__()
        self.images = Parameter(Tensor(np.zeros((pool_size,) + tuple(image_shape), np.float32)),
                                name=f"{name}.images", requires_grad=False)
        self.level = Parameter(Tensor(0, ms.int32), name=f"{name}.level", requires_grad=False)

    def construct(self, fakes, returned_plans, stored_plans):
        fakes = ops.stop_gradient(fakes)
        level = self.level + 0
        both = ops.concat((self.images + 0.0, fakes), 0)
        returned = ops.gather(both, ops.gather(returned_plans, level, 0), 0)
        done = ops.assign(self.images, ops.gather(both, ops.gather(stored_plans, level, 0), 0))
        done = ops.depend(done, ops.assign(self.level, ops.minimum(level + 1, returned_plans.shape[0] - 1)))
        return ops.depend(returned, done)


# ---------------------------------------------------------------------------------------------- method
@METHODS.register("cycada", params=CycadaParams)
class CyCADA(ADDA):
    translation_log_keys = ("adv_st", "adv_ts", "cycle_s", "cycle_t", "idt_s", "idt_t", "sem_st", "sem_ts", "d_t",
                            "d_s")

    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        if params.pool_size < 0:
            raise ValueError(f"method.pool_size must be >= 0 (0: no pool), got {params.pool_size}")
        self.pool_size = params.pool_size
        if params.classifier_ckpt and not os.path.isfile(params.classifier_ckpt):
            raise ValueError(f"method.classifier_ckpt: checkpoint not found: {params.classifier_ckpt} (a source-only "
                             "run's last.ckpt, or leave it empty to pre-train the classifier in this run)")
        # the classifier's initial weights, for translated_pretrain (the same on resume: built from the seed)
        object.__setattr__(self, "initial_model", {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}
                           if params.retrain_from_scratch else None)

    def bind_data_config(self, data_cfg):
        """Builds the image-space networks for ``data.channels`` x ``data.image_size`` images (called by
        ``engine.trainer.build_method`` right after construction)."""
        if data_cfg.normalize == "caffe":
            raise ValueError("cycada translates RGB images; data.normalize=caffe feeds BGR (use imagenet or source)")
        p, channels, size = self.params, data_cfg.channels, data_cfg.image_size
        self.gen_st = ResnetGenerator(channels, channels, p.ngf, p.n_blocks, p.n_downsampling)
        self.gen_ts = ResnetGenerator(channels, channels, p.ngf, p.n_blocks, p.n_downsampling)
        self.disc_s = PatchDiscriminator(channels, p.ndf, p.disc_layers)
        self.disc_t = PatchDiscriminator(channels, p.ndf, p.disc_layers)
        if p.pool_size:
            self.pool_s = ImagePool(p.pool_size, (channels, size, size), "pool_s")
            self.pool_t = ImagePool(p.pool_size, (channels, size, size), "pool_t")
        # per-channel mean/std of the data's normalisation (set by phase_source): normalised images <-> [-1, 1]
        self.pixel_mean = Parameter(Tensor(np.zeros((1, channels, 1, 1), np.float32)), name="pixel_mean",
                                    requires_grad=False)
        self.pixel_std = Parameter(Tensor(np.ones((1, channels, 1, 1), np.float32)), name="pixel_std",
                                   requires_grad=False)

    # ------------------------------------------------------------------ declarations
    def phases(self):
        pretrain, adapt = super().phases()
        translation = Phase(TRANSLATION, self.params.translation_iters, ("gen", "disc"), self.params.translation_optim,
                            joint=True)
        retrain = dataclasses.replace(pretrain, name="translated_pretrain")
        return ([] if self.params.classifier_ckpt else [pretrain]) + [translation, retrain, adapt]

    def step_log_keys(self, phase):
        if phase.name == TRANSLATION:
            return ("loss",) + self.translation_log_keys
        return super().step_log_keys(phase)

    def param_groups(self, phase):
        if phase.name == TRANSLATION:
            return {"gen": [(self.gen_st.trainable_params() + self.gen_ts.trainable_params(), 1.0)],
                    "disc": [(self.disc_s.trainable_params() + self.disc_t.trainable_params(), 1.0)]}
        return super().param_groups(phase)

    def loss_cells(self, phase):
        if phase.name == TRANSLATION:
            return {JOINT: self.translation_loss}
        return super().loss_cells(phase)

    def host_random(self, rng, batch_size):
        out = super().host_random(rng, batch_size)
        if self.pool_size:
            for domain in ("s", "t"):
                out[f"pool_returned_{domain}"], out[f"pool_stored_{domain}"] = pool_plans(rng, batch_size,
                                                                                          self.pool_size)
        return out

    def start_phase(self, phase):
        if phase.name == TRANSLATION:
            if self.params.classifier_ckpt:
                self.load_classifier(self.params.classifier_ckpt)
            # f_S for the semantic loss: ADDA's frozen source model, copied from the classifier as at adapt's start
            super().start_phase(self.phases()[-1])
        elif phase.name == "translated_pretrain" and self.initial_model is not None:
            for name, param in self.model.parameters_and_names():
                param.set_data(Tensor(self.initial_model[name]))
        else:
            super().start_phase(phase)

    def load_classifier(self, path):
        """The classifier (``model.*``) of a source-only run's checkpoint."""
        from engine.checkpoint import _check_and_assign, read

        prefix = "model."
        data = {k[len(prefix):]: v for k, v in read(path)[0].items() if k.startswith(prefix)}
        _check_and_assign(dict(self.model.parameters_and_names()), data, path, "classifier (method.classifier_ckpt)")

    # ------------------------------------------------------------------ translation step
    def to_gan(self, x):
        """Normalised images -> the generators' [-1, 1] pixel range."""
        return 2.0 * (x * self.pixel_std + self.pixel_mean) - 1.0

    def to_model(self, u):
        """[-1, 1] images -> the classifier's normalised input."""
        return ((u + 1.0) * 0.5 - self.pixel_mean) / self.pixel_std

    def query_pool(self, pool_name, fakes, batch, domain):
        if not self.pool_size:
            return ops.stop_gradient(fakes)
        pool = self.pool_s if pool_name == "s" else self.pool_t
        return pool(fakes, batch[f"pool_returned_{domain}"], batch[f"pool_stored_{domain}"])

    def translation_loss(self, batch, t):
        p = self.params
        real_s, real_t, y_s = self.to_gan(batch["x_s"]), self.to_gan(batch["x_t"]), batch["y_s"]
        fake_t = self.gen_st(real_s)
        rec_s = self.gen_ts(fake_t)
        fake_s = self.gen_ts(real_t)
        rec_t = self.gen_st(fake_s)
        # generators: D frozen (stop_gradient weights), f_S frozen (not in any group, inference mode)
        adv_st = lsgan_loss(self.disc_t(fake_t, True), True)
        adv_ts = lsgan_loss(self.disc_s(fake_s, True), True)
        cycle_s, cycle_t = l1_loss(rec_s, real_s), l1_loss(rec_t, real_t)
        zero = ops.zeros((), ms.float32)
        idt_s, idt_t = zero, zero
        if p.identity_weight > 0:  # G_st should leave target images as they are, G_ts source ones
            idt_t = l1_loss(self.gen_st(real_t), real_t) * p.cycle_weight_t * p.identity_weight
            idt_s = l1_loss(self.gen_ts(real_s), real_s) * p.cycle_weight_s * p.identity_weight
        pseudo_t = ops.argmax(ops.stop_gradient(self.source_model(batch["x_t"])[0]), -1).astype(ms.int32)
        sem_st = cross_entropy(self.source_model(self.to_model(fake_t))[0], y_s)
        sem_ts = cross_entropy(self.source_model(self.to_model(fake_s))[0], pseudo_t)
        gen_loss = (p.adv_weight_st * adv_st + p.adv_weight_ts * adv_ts + p.cycle_weight_s * cycle_s
                    + p.cycle_weight_t * cycle_t + idt_s + idt_t + p.semantic_weight * (sem_st + sem_ts))
        # discriminators: real vs pooled (detached) fakes of this same forward pass
        pooled_t = self.query_pool("t", fake_t, batch, "t")
        pooled_s = self.query_pool("s", fake_s, batch, "s")
        d_t = 0.5 * (lsgan_loss(self.disc_t(real_t), True) + lsgan_loss(self.disc_t(pooled_t), False))
        d_s = 0.5 * (lsgan_loss(self.disc_s(real_s), True) + lsgan_loss(self.disc_s(pooled_s), False))
        return gen_loss + d_t + d_s, (adv_st, adv_ts, cycle_s, cycle_t, idt_s, idt_t, sem_st, sem_ts, d_t, d_s)

    # ------------------------------------------------------------------ engine hooks
    def phase_source(self, phase, context):
        """Phases after the translation train on the translated source set (made or verified here)."""
        self.bind_pixel_range(context.data.eval_transform, context.cfg.data)
        names = [ph.name for ph in self.phases()]
        if names.index(phase.name) <= names.index(TRANSLATION):
            return None
        return self.translated_source(context)

    def bind_pixel_range(self, transform, data_cfg):
        """``pixel_mean, pixel_std`` of the data's normalisation, read off ``transform`` on constant images
        (every normalisation but caffe's is ``(pixels - mean) / std`` per channel)."""
        shape = (1, data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
        zero = transform(np.zeros(shape, np.float32), None)[0, 0, 0]
        one = transform(np.ones(shape, np.float32), None)[0, 0, 0]
        std = 1.0 / (one - zero)
        self.pixel_mean.set_data(Tensor((-zero * std).reshape(self.pixel_mean.shape).astype(np.float32)))
        self.pixel_std.set_data(Tensor(std.reshape(self.pixel_std.shape).astype(np.float32)))

    @staticmethod
    def cache_key(cfg):
        """Hash of what the translated set depends on: data, classifier and its pre-training, the
        translation settings, the seed (not the ADDA settings, evaluation or logging)."""
        method = cfg.method
        pretrain = 0 if method.classifier_ckpt else (method.pretrain_iters or cfg.train.iters)
        parts = {"data": dataclasses.asdict(cfg.data), "model": dataclasses.asdict(cfg.model),
                 "optim": dataclasses.asdict(cfg.optim), "seed": cfg.train.seed, "amp_level": cfg.train.amp_level,
                 "grad_accum": cfg.train.grad_accum, "pretrain_iters": pretrain,
                 "method": {k: getattr(method, k) for k in TRANSLATION_KEYS}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def generator_digest(self):
        digest = hashlib.sha256()
        for name, param in self.gen_st.parameters_and_names():
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(param.asnumpy()).tobytes())
        return digest.hexdigest()

    def translated_path(self, context):
        folder = self.params.cache_dir or context.run_dir
        return os.path.join(folder, f"translated_source_{self.cache_key(context.cfg)}.npz")

    def translated_source(self, context):
        """The source training set translated by G_st, from the cache when its generator digest matches."""
        path, digest = self.translated_path(context), self.generator_digest()
        domain = context.data.source.domain
        if os.path.isfile(path):
            with np.load(path) as cached:  # allow_pickle stays False
                if str(cached["generator_digest"]) == digest and len(cached["labels"]) == len(domain):
                    return ArrayDomain(cached["images"], cached["labels"], domain.class_names)
        images = self.translate(domain, context.data, context.cfg.data.batch_size)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path[:-len('.npz')]}.tmp{os.getpid()}.npz"
        np.savez(tmp, images=images, labels=np.asarray(domain.labels, np.int32), generator_digest=np.str_(digest),
                 cache_key=np.str_(self.cache_key(context.cfg)))
        os.replace(tmp, path)
        return ArrayDomain(images, domain.labels, domain.class_names)

    def gan_images(self, images, data):
        """Domain images (NHWC) -> the generators' (N, C, H, W) input in [-1, 1], via the eval transform."""
        return self.to_gan(Tensor(np.transpose(data.eval_transform(images, None), (0, 3, 1, 2)).copy()))

    def translate(self, domain, data, batch_size):
        """G_st of every image of ``domain`` as NHWC uint8 (the pixel range [0, 1] quantised to 8 bits)."""
        out = []
        for start in range(0, len(domain), batch_size):
            images = domain_images(domain, np.arange(start, min(start + batch_size, len(domain))), data.loader)
            out.append(to_uint8(self.gen_st(self.gan_images(images, data)).asnumpy()))
        return np.concatenate(out)

    def eval_artifacts(self, phase, iteration, context):
        """A translation grid PNG at every evaluation point of the translation phase."""
        if phase.name != TRANSLATION:
            return
        n = self.params.grid_images
        rows = []
        for domain, there, back in ((context.data.source.domain, self.gen_st, self.gen_ts),
                                    (context.data.target_test, self.gen_ts, self.gen_st)):
            idx = np.linspace(0, len(domain) - 1, n).astype(int)
            real = self.gan_images(domain_images(domain, idx, context.data.loader), context.data)
            moved = there(real)
            rows += [real.asnumpy(), moved.asnumpy(), back(moved).asnumpy()]
        folder = os.path.join(context.run_dir, "translation_grid")
        os.makedirs(folder, exist_ok=True)
        save_grid(rows, os.path.join(folder, f"iter_{iteration:06d}.png"))


def domain_images(domain, idx, loader=None):
    """Images ``idx`` of ``domain`` as NHWC float32 in [0, 1] (decoded by ``loader`` for file domains)."""
    return loader(domain, idx) if loader is not None else domain.images[idx]


def to_uint8(u):
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    pixels = np.clip((np.transpose(u, (0, 2, 3, 1)) + 1.0) * 0.5, 0.0, 1.0)
    return np.round(pixels * 255.0).astype(np.uint8)


def save_grid(rows, path, scale=3):
    """Rows of (N, C, H, W) images in [-1, 1] -> one PNG, one row each, 2 px gaps, upscaled ``scale`` x."""
    from PIL import Image

    tiles = [to_uint8(row) for row in rows]
    n, h, w, c = tiles[0].shape
    grid = np.full((len(tiles) * (h + 2), n * (w + 2), 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for i, img in enumerate(row):
            grid[r * (h + 2):r * (h + 2) + h, i * (w + 2):i * (w + 2) + w] = img if c == 3 else img[..., :1]
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
