"""SlimDA: slimmable domain adaptation (Meng, Chen, Yang, Song, Lin, Xie, Pu, Wang, Song & Zhuang, "Slimmable
Domain Adaptation", CVPR 2022, arXiv 2206.06620), over SymNets (Zhang et al., CVPR 2019, ``losses/symnets.py``).

One weight-sharing model bank (a slimmable backbone, ``models/slimmable.py``) is adapted once; any of its widths
can then be deployed, chosen without target labels by UPEM (``tools/select_width.py``). The official code was
never released: this is a reconstruction from the paper's text and SymNets' code. Every choice is listed below.

**Model** (``model.head: slimda``, :class:`SlimDAHead`): the slimmable backbone, an optional bottleneck, SymNets'
fc giving 2K logits z (source classifier C_s = z[:K], target classifier C_t = z[K:]) and a third K-way fc, the
aggregation classifier C_a. All three read the same features; at width w the backbone's features beyond the
width are zero (channel masks), so every width shares the heads.

**Sandwich rule.** Each iteration trains M = n + 2 models of the bank (n = ``random_widths``, default 2): the
largest width, the smallest, and n distinct others drawn uniformly without replacement on the host
(:func:`sample_width_indices`, from the engine's per-iteration RNG seeded by (seed, iteration, shard), so a run
is reproducible and resumable). They reach the step as one int32 Tensor ``width_indices`` (M,), so one compiled
graph serves every draw (the backbone's channel masks are gathered by index).

**Loss of one iteration** (one forward pass of the source batch and one of the target batch per model, as
SymNets):

    L = sum_m [ L_cls^m + L_feat^m + seed_weight * L_seed^m ]

* L_cls^m, L_feat^m: SymNets' classifier and feature losses of model m (:func:`losses.symnets.classifier_loss`,
  :func:`~losses.symnets.feature_loss`, same lambda schedule). **Summed over the models**, not averaged:
  slimmable training (Yu et al. 2019; the sandwich rule of Yu & Huang 2019, which SlimDA adopts) accumulates
  every sampled width's gradient before one optimizer step, and SlimDA's objective adds the per-model losses.
  Each model then keeps the learning rate of a plain SymNets run. (Measured on optdigits, seed 0: the mean over
  models, i.e. lr / 4, barely trains the bank in 1000 iterations: 11.6 % target accuracy at iteration 500.)
* SEED (stochastic ensemble distillation). The teacher is the sampled models' **C_t** target predictions (C_t
  is SymNets' target-domain classifier; the paper's figure draws knowledge aggregation across C_s/C_t and SEED
  into C_a). With P_m = softmax(C_t(f_t^m)) (N, K) and per-sample confidence c_{m,i} = max_k P_{m,i,k}:

      w_{m,i} = c_{m,i} / sum_m' c_{m',i}                       (confidence weights, per sample, over models)
      Pbar_i  = sum_m w_{m,i} P_{m,i}                           (stochastic ensemble: the models are random)
      T_i,k   = Pbar_i,k^(1/T) / sum_j Pbar_i,j^(1/T),  T = 0.5 (sharpening, as MixMatch)
      L_seed^m = -mean_i sum_k T_i,k log softmax(C_a(f_t^m))_i,k  (cross-entropy, teacher behind stop_gradient)

  The paper states "weighted by confidence", a temperature of 0.5 and distillation of the stop-gradient ensemble
  into C_a; the per-sample normalised max-probability weight is our reading of the first (a sample a model is
  unsure about contributes less of that model's vote). Cross-entropy to soft targets has KL's gradient.
* **OSTC** (optimisation-separated tri-classifier): C_a's weights get gradient only from L_seed; C_s/C_t (the
  2K fc) only from SymNets' losses (computed as SymNets does, on ``stop_gradient`` features for the classifier
  loss, with the fc held fixed for the feature loss; the SEED teacher is ``stop_gradient``). The backbone (and
  bottleneck) get the feature loss and, through C_a, L_seed. ``tests/test_slimda.py`` checks every route.

**Parameter groups** are SymNets': ``feature`` (backbone, bottleneck) and ``classifier`` (the 2K fc and C_a),
one joint step; C_a sits with the fc at the head's learning rate.

**Deployed classifier** (``deploy``, default ``ca``): the model's inference output, hence engine evaluation
(``model(x)[0]``, the full width), eval.py, export and ``tools/select_width.py``, is C_a: it is the classifier
the method adds to carry the bank's aggregated knowledge (SEED distils the confidence-weighted, sharpened
ensemble of all sampled widths into it), while C_t is a single model's target classifier trained by domain
confusion. ``deploy: ct`` scores C_t instead (for ablations; select_width reports both).

Choices beyond the paper's text, and why:

* BatchNorm: the backbone's switchable BN keeps private statistics per width; a bottleneck (``model.bottleneck_dim``
  > 0) is not slimmable and its BN is shared by every width (the ResNet-50 configs use none, as SymNets).
* ``seed_weight`` 1 (the paper adds the losses unweighted); the teacher is used from the first iteration.
* No regularizers (as SymNets: the losses route gradients to disjoint groups).
"""
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from engine.registry import HEADS, METHODS
from losses.base import accuracy
from losses.symnets import SymNets, SymNetsHead, SymNetsParams, classifier_loss, feature_loss
from models.modules import LinearHead, grl_coefficient
from models.slimmable import SlimmableBackbone

DEPLOYABLE = ("ca", "ct")


@dataclass
class SlimDAParams(SymNetsParams):
    name: str = "slimda"
    random_widths: int = 2           # n: widths drawn each iteration besides the largest and the smallest
    seed_weight: float = 1.0         # weight of each model's SEED loss
    temperature: float = 0.5         # SEED sharpening temperature T (paper: 0.5)
    deploy: str = "ca"               # classifier the model outputs (evaluation, export): ca | ct


@HEADS.register("slimda")
class SlimDAHead(SymNetsHead):
    """SymNets' 2K-way fc (``fc``: C_s | C_t) plus the aggregation classifier C_a (``fc_a``, K-way).

    ``construct(f)`` returns the deployed classifier's logits: C_a's, or C_t's when ``deploy_ct`` is set (the
    method sets it from ``deploy`` before anything is compiled).
    """

    def __init__(self, in_features, num_classes):
        super().__init__(in_features, num_classes)
        self.fc_a = nn.Dense(in_features, num_classes)
        self.deploy_ct = False

    def aggregate(self, f):
        return self.fc_a(f)

    def deployed_linear(self):
        """The deployed classifier alone as a :class:`models.modules.LinearHead` (for export's narrow sub-network)."""
        head = LinearHead(self.fc_a.in_channels, self.num_classes)
        if self.deploy_ct:
            weight, bias = self.fc.weight.asnumpy()[self.num_classes:], self.fc.bias.asnumpy()[self.num_classes:]
        else:
            weight, bias = self.fc_a.weight.asnumpy(), self.fc_a.bias.asnumpy()
        head.fc.weight.set_data(Tensor(weight))
        head.fc.bias.set_data(Tensor(bias))
        return head

    def construct(self, f):
        if self.deploy_ct:
            return self.fc(f)[:, self.num_classes:]
        return self.fc_a(f)


class WidthView(nn.Cell):
    """``x -> (logits, features)`` of a Classifier over a slimmable backbone at one of its widths.

    The width index is a Parameter, so :meth:`set_width` switches widths without recompiling the graph.
    """

    def __init__(self, model, width_index=0):
        super().__init__(auto_prefix=False)
        self.model = model
        self.width_index = Parameter(Tensor(int(width_index), ms.int32), name="view_width_index",
                                     requires_grad=False)

    def set_width(self, width_index):
        self.width_index.set_data(Tensor(int(width_index), ms.int32))

    def construct(self, x):
        f = self.model.bottleneck(self.model.backbone(x, self.width_index))
        return self.model.head(f), f


def sample_width_indices(rng, widths, random_widths):
    """Sandwich rule: ``[index of max(widths), index of min(widths), n distinct others]`` as int32 (n + 2,)."""
    order = np.argsort(widths)
    largest, smallest, others = int(order[-1]), int(order[0]), order[1:-1]
    if random_widths > len(others):
        raise ValueError(f"method.random_widths={random_widths} but the backbone has only {len(others)} widths "
                         "between its largest and smallest; lower random_widths or add widths")
    drawn = rng.choice(others, size=random_widths, replace=False) if random_widths else np.zeros(0, int)
    return np.array([largest, smallest, *drawn], np.int32)


def seed_teacher(probs, temperature):
    """SEED target (N, K) from the sampled models' probabilities ``probs`` (M, N, K): confidence-weighted, sharpened."""
    confidence = ops.max(probs, 2)[0]                                     # (M, N)
    weights = confidence / ops.sum(confidence, 0, keepdim=True)
    ensemble = ops.sum(weights.expand_dims(2) * probs, 0)                 # (N, K)
    sharpened = ops.pow(ensemble, 1.0 / temperature)
    return sharpened / ops.sum(sharpened, 1, keepdim=True)


def soft_cross_entropy(logits, target):
    """``-mean_i sum_k target_ik log softmax(logits)_ik``."""
    return -ops.mean(ops.sum(target * ops.log_softmax(logits, 1), 1))


@METHODS.register("slimda", params=SlimDAParams)
class SlimDA(SymNets):
    log_keys = ("cls_loss", "feat_loss", "seed_loss", "acc_ct_max", "acc_ct_min", "teacher_conf", "lam")

    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        if not isinstance(getattr(model, "head", None), SlimDAHead):
            raise ValueError("method slimda needs model.head: slimda (SymNets' 2K-way fc plus the aggregation "
                             "classifier C_a); configs/_base_/methods/slimda.yaml sets it")
        if not isinstance(getattr(model, "backbone", None), SlimmableBackbone):
            raise ValueError(f"method slimda needs a slimmable backbone (model.backbone: slim_lenet or slim_resnet50), "
                             f"got {type(getattr(model, 'backbone', model)).__name__}")
        if params.deploy not in DEPLOYABLE:
            raise ValueError(f"method.deploy={params.deploy!r}; use one of {', '.join(DEPLOYABLE)}")
        if params.temperature <= 0 or params.random_widths < 0:
            raise ValueError("method.temperature must be > 0 and method.random_widths >= 0")
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        self.widths = model.backbone.widths
        sample_width_indices(np.random.default_rng(0), self.widths, params.random_widths)  # validates random_widths
        self.n_models = params.random_widths + 2
        model.head.deploy_ct = params.deploy == "ct"

    def host_random(self, rng, batch_size):
        return {"width_indices": sample_width_indices(rng, self.widths, self.params.random_widths)}

    def features(self, x, width_index):
        return self.model.bottleneck(self.model.backbone(x, width_index))

    def construct(self, batch, t):
        y_s, k, head, indices = batch["y_s"], self.num_classes, self.model.head, batch["width_indices"]
        lam = grl_coefficient(t, self.params.lam_alpha)
        cls_total, feat_total = 0.0, 0.0
        probs, feats_t, acc_ct = [], [], []
        for m in range(self.n_models):
            f_s = self.features(batch["x_s"], indices[m])
            f_t = self.features(batch["x_t"], indices[m])
            cls_loss = classifier_loss(head.logits(ops.stop_gradient(f_s)), head.logits(ops.stop_gradient(f_t)),
                                       y_s, k)[0]
            z_s, z_t = head.logits(f_s, True), head.logits(f_t, True)
            feat_loss = feature_loss(z_s, z_t, y_s, lam, k, self.params.entropy_weight)[0]
            cls_total, feat_total = cls_total + cls_loss, feat_total + feat_loss
            probs.append(ops.softmax(z_t[:, k:], 1))
            feats_t.append(f_t)
            acc_ct.append(accuracy(z_s[:, k:], y_s))
        teacher = ops.stop_gradient(seed_teacher(ops.stack(probs), self.params.temperature))
        seed_total = 0.0
        for f_t in feats_t:
            seed_total = seed_total + soft_cross_entropy(head.aggregate(f_t), teacher)
        total = cls_total + feat_total + self.params.seed_weight * seed_total
        return total, (cls_total, feat_total, seed_total, acc_ct[0], acc_ct[1], ops.mean(ops.max(teacher, 1)[0]), lam)
