"""Test-time adaptation of a trained BatchNorm classifier: source, Norm, Tent, Tent+OCR.

Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021; the official
code is DequanWang/tent (``tent.py``, ``norm.py``, ``cifar10c.py``, ``cfgs/tent.yaml``):

* ``source``: the model as trained (inference mode, BatchNorm running statistics).
* ``norm`` (``norm.py``, Schneider et al. 2020): every BatchNorm normalises with the statistics of
  the test batch; nothing is trained.
* ``tent`` (``tent.py``): test-batch statistics as ``norm``, and only the BatchNorm affine
  parameters (gamma, beta) train, one Adam step (lr 1e-3, betas (0.9, 0.999), no weight decay,
  PyTorch's arithmetic: :class:`engine.optim.TorchAdam`) per test batch on the mean prediction
  entropy ``-sum_c softmax(g)_c log_softmax(g)_c``. The predictions scored for a batch are those of
  the forward pass that computed the loss, before its update (``forward_and_adapt`` returns
  ``outputs``). :meth:`TestTimeAdapter.reset` restores the model and the optimizer state (moments,
  step) saved at construction (``Tent.reset``), which the episodic protocol calls between sets.
* ``tent_ocr``: Tent's loss plus OCR's residual-entropy term (Jing et al., ICCV 2023; pieces of
  :mod:`losses.ocr`): ``L = mean H(g(x)) - weight * mean H(head(z_res))``, ``z_res = (z_aug - lam z)
  / (1 - lam)`` with z the features of the test batch and z_aug those of one strong view of it
  (``data.strong_transform`` of the config, drawn on the host from a seeded generator per batch),
  the strong view in its own forward pass with its own batch statistics, as the OCR regularizer's
  training-time forward. ``lam`` is fixed at the end value of OCR's training schedule,
  ``0.5 (1 - 11^-0.75) = 0.4172`` (the issue's "lambda 0.42"), ``weight`` 0.2 (OCR's weight in the
  repository's configs). The official OCR code has no test-time variant; this one is ours.

Deliberate choice: "BatchNorm" means every BatchNorm layer (1-d and 2-d). tent.py configures only
``nn.BatchNorm2d``; the backbones of the official runs have no BatchNorm1d, LeNet-BN's FC block has
one, and it is adapted like the others. The normalisation uses ``use_batch_statistics=True`` on each
BatchNorm while the rest of the model stays in inference mode (CrossNorm / dropout off); the running
statistics MindSpore's batch-norm kernel still updates are never read (and are restored by ``reset``).
The adaptation step is one ``@ms.jit`` function; the predictions stay on the device until a set ends.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from losses.ocr import OcrParams, ocr_residual, residual_entropy

METHODS = ("source", "norm", "tent", "tent_ocr")
# OCR's lam at the end of training (p = 1): 0.5 (1 - 11^-0.75) = 0.4172
OCR_TEST_LAMBDA = OcrParams.lam_max * (1.0 - (1.0 + OcrParams.gamma) ** -OcrParams.power)
OCR_TEST_WEIGHT = 0.2  # OCR's weight in this repository's configs (configs/_base_/regularizers/ocr.yaml)


def softmax_entropy(logits):
    """``-sum_c softmax(g)_c log_softmax(g)_c`` per row, as tent.py: (N, C) -> (N,)."""
    return -ops.sum(ops.softmax(logits, -1) * ops.log_softmax(logits, -1), -1)


def batchnorm_cells(model):
    """The BatchNorm cells of ``model`` (1-d, 2-d, 3-d) in definition order."""
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return [cell for _, cell in model.cells_and_names() if isinstance(cell, bn_types)]


def bn_affine_parameters(model):
    """``[gamma, beta, ...]`` of every BatchNorm of ``model``: the parameters Tent trains."""
    return [p for bn in batchnorm_cells(model) for p in (bn.gamma, bn.beta)]


class TestTimeAdapter:
    """``model`` prepared for one TTA ``method``; :meth:`predict` adapts (Tent) and returns predictions.

    ``predict(x, x_strong=None) -> predicted classes`` (an int32 device Tensor, (N,)); ``x_strong``
    is the strong view (``tent_ocr`` only). :meth:`reset` restores the state of construction.
    """

    __test__ = False  # not a pytest class despite the name

    def __init__(self, model, method="tent", lr=1e-3, betas=(0.9, 0.999), ocr_weight=OCR_TEST_WEIGHT,
                 ocr_lam=OCR_TEST_LAMBDA):
        if method not in METHODS:
            raise ValueError(f"unknown TTA method {method!r}; choose one of {', '.join(METHODS)}")
        bns = batchnorm_cells(model)
        if method != "source" and not bns:
            raise ValueError(f"TTA method {method} needs BatchNorm layers and this model has none; "
                             "use a backbone with BatchNorm (e.g. model.backbone=lenet_bn) or --method source")
        if not 0.0 <= ocr_lam < 1.0:
            raise ValueError(f"ocr_lam must be in [0, 1) (the residual divides by 1 - lam), got {ocr_lam}")
        self.model, self.method = model, method
        self.needs_strong_view = method == "tent_ocr"
        model.set_train(False)
        for bn in bns:  # norm.py / tent.py: normalise with the test batch, never with running statistics
            bn.use_batch_statistics = method != "source"
        self.optimizer = None
        if method in ("tent", "tent_ocr"):
            from engine.optim import TorchAdam

            self.params = bn_affine_parameters(model)
            self.optimizer = TorchAdam(self.params, learning_rate=lr, beta1=betas[0], beta2=betas[1], eps=1e-8,
                                       weight_decay=0.0)
            self._step = self._build_step(ocr_weight, ocr_lam)
        else:
            self._step = self._build_forward()
        self._restore = self._build_restore(self._state_parameters())

    def _state_parameters(self):
        """Every Parameter of the model and the optimizer (moments, beta powers, step), once each."""
        seen, params = set(), []
        cells = [self.model] + ([self.optimizer] if self.optimizer is not None else [])
        for cell in cells:
            for p in cell.get_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    @staticmethod
    def _build_restore(params):
        """A jitted in-place copy of the current values back into ``params`` (``set_data`` after the step
        was compiled would detach the Parameters from the compiled graph)."""
        saved = tuple(Tensor(p.asnumpy().copy()) for p in params)

        @ms.jit
        def restore(values):
            done = ops.zeros((), ms.int32)
            for param, value in zip(params, values):
                done = ops.depend(done, ops.assign(param, value))
            return done

        return lambda: restore(saved)

    def _build_forward(self):
        model = self.model

        @ms.jit
        def forward(x):
            return ops.argmax(model(x)[0], -1).astype(ms.int32)

        return forward

    def _build_step(self, ocr_weight, ocr_lam):
        model, optimizer = self.model, self.optimizer
        lam = Tensor(np.float32(ocr_lam))  # ocr_residual selects on it: a 0-d Tensor, as in training

        def tent_loss(x):
            logits, _ = model(x)
            return ops.mean(softmax_entropy(logits)), logits

        def tent_ocr_loss(x, x_strong):
            logits, z = model(x)
            _, z_aug = model(x_strong)  # its own forward: the strong view's own batch statistics
            residual = residual_entropy(model.head(ocr_residual(z, z_aug, lam)))
            return ops.mean(softmax_entropy(logits)) - ocr_weight * residual, logits

        loss_fn = tent_ocr_loss if self.needs_strong_view else tent_loss
        grad_fn = ms.value_and_grad(loss_fn, None, optimizer.parameters, has_aux=True)

        @ms.jit
        def step(*inputs):
            (_, logits), grads = grad_fn(*inputs)
            pred = ops.argmax(logits, -1).astype(ms.int32)
            return ops.depend(pred, optimizer(grads))

        return step

    def predict(self, x, x_strong=None):
        if self.needs_strong_view:
            if x_strong is None:
                raise ValueError("tent_ocr needs the strong view of the batch (x_strong)")
            return self._step(x, x_strong)
        return self._step(x)

    def reset(self):
        """Model and optimizer state back to construction time (``Tent.reset``)."""
        self._restore()


def adapt_stream(adapter, sets, transform, batch_size=200, reset_each_set=True, strong_transform=None, seed=0,
                 rounds=1):
    """Run ``adapter`` online over ``sets = [(name, ImageDomain)]``; per-set error rates.

    Each set (an in-memory domain: ``domain.images`` NHWC in [0, 1], ``domain.labels``) is visited in
    order, in batches of ``batch_size`` in the domain's order (the last batch may be short). ``reset_each_set`` resets before every set (the episodic protocol of
    cifar10c.py); otherwise the stream runs on without reset for ``rounds`` passes over all sets
    (continual TTA). Strong views (tent_ocr) use ``np.random.default_rng([seed, round, set, batch])``.
    Returns ``[{"round", "set", "n", "error"}]`` in visiting order.
    """
    from datasets.base import to_nchw

    results = []
    adapter.reset()
    for round_index in range(rounds):
        for set_index, (name, domain) in enumerate(sets):
            if reset_each_set:
                adapter.reset()
            predictions = []
            for batch_index, start in enumerate(range(0, len(domain), batch_size)):
                images = domain.images[start:start + batch_size]
                x = Tensor(to_nchw(transform(images, None)))
                x_strong = None
                if adapter.needs_strong_view:
                    rng = np.random.default_rng([seed, round_index, set_index, batch_index])
                    x_strong = Tensor(to_nchw(strong_transform(images, rng)))
                predictions.append(adapter.predict(x, x_strong))
            pred = np.concatenate([p.asnumpy() for p in predictions])  # one read per set, after its last step
            error = float((pred != np.asarray(domain.labels)).mean())
            results.append({"round": round_index, "set": name, "n": len(pred), "error": error})
    return results
