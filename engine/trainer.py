"""The phase loop: phase -> optimizers -> one jitted step -> eval / checkpoint. No method branches."""
import dataclasses
import json
import logging
import math
import os
import time

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.amp import all_finite

from engine import checkpoint
from engine.config import config_hash, dump_config
from engine.data import build_data, resolve_epochs, with_source_domain
from engine.distributed import ranks_agree
from engine.prefetch import Prefetcher
from engine.optim import LossScaleState, apply_amp, build_loss_scaler, build_optimizer
from engine.evaluators import evaluate
from engine.selection import Selection, read_history, resolve_validators
from engine.registry import METHODS, REGULARIZERS
from engine.runtime import resolve_amp_level
from models import create_model

log = logging.getLogger("da")
LAST_CKPT, RESULTS, CONFIG_FILE, METRICS = "last.ckpt", "results.json", "config.yaml", "metrics.jsonl"


@dataclasses.dataclass
class PhaseContext:
    """What the trainer hands a method's hooks (``phase_source``, ``eval_artifacts``): the run directory,
    the data bundle (``engine.data.DataBundle``, with the config's own source stream), the config, rank 0 or not."""
    run_dir: str
    data: object
    cfg: object
    is_main: bool = True


class RunDirError(RuntimeError):
    pass


class TrainingDiverged(RuntimeError):
    pass


def build_method(cfg):
    def model_factory():
        return create_model(cfg.model, in_channels=cfg.data.channels, image_size=cfg.data.image_size)

    model = model_factory()
    regs = [REGULARIZERS.build(r.name, r, num_classes=cfg.model.num_classes, features_dim=model.features_dim)
            for r in cfg.regularizers]
    method = METHODS.build(cfg.method.name, cfg.method, model, regs, cfg.model.num_classes, cfg.train, model_factory)
    method.labelled_target = cfg.data.target_labeled_per_class > 0  # SSDA: batches carry x_tl, y_tl
    method.bind_data_config(cfg.data)  # before any checkpoint load (DANCE sizes its memory bank)
    return method


def phase_optim(cfg_optim, phase, group=None):
    """The optim section with the phase's (and the group's) overrides applied (validated like the YAML)."""
    overrides = {**phase.optim, **phase.group_optim.get(group, {})}
    if not overrides:
        return cfg_optim
    from engine.config import from_dict, OptimCfg
    where = f"phase {phase.name}" + (f" group {group}" if group in phase.group_optim else "")
    return from_dict(OptimCfg, {**dataclasses.asdict(cfg_optim), **overrides}, "optim.", where)


def build_phase_optimizers(cfg_optim, method, phase):
    """``{group: optimizer}`` of a phase, each with its overrides; poly schedules run over the phase."""
    groups = method.param_groups(phase)
    # a group several update units step (MME: CE step, then entropy step) keeps one LR per iteration
    per_iter = {g: sum(g in unit_groups for _, unit_groups in phase.update_units()) for g in phase.groups}
    return {g: build_optimizer(groups[g], phase_optim(cfg_optim, phase, g), g, phase.iters, max(per_iter[g], 1))
            for g in phase.groups}


def make_step(phase, loss_cells, optimizers, loss_scalers=None, group_size=1, grad_accum=1):
    """The phase's training step ``step(batch, t) -> tuple of 0-d Tensors`` (``method.step_log_keys``).

    One jitted function running, in order, a ``value_and_grad`` + update per update unit of the
    phase (``Phase.update_units``: each parameter group on its own, or all groups from one
    gradient under ``Phase.joint``). ``loss_cells`` and ``loss_scalers`` are keyed by unit.
    The options (all off: the plain step) add to that same graph:

    * ``group_size > 1`` (data parallel): each group's gradients are mean-all-reduced over the
      ranks (``nn.DistributedGradReducer``) before its update, and so are the returned values,
      so every rank logs, and checks for NaN, the numbers of the global batch;
    * ``loss_scalers`` ``{unit: DynamicLossScaler}`` (mixed precision): the loss is scaled, the
      gradients unscaled and checked with ``all_finite``; an update that overflows is skipped
      and the scale adjusted. One more output, True when a unit overflowed this step;
    * ``grad_accum = k > 1``: ``step`` takes a tuple of k micro-batches, see :class:`AccumStep`.
    """
    if grad_accum > 1:
        return AccumStep(phase, loss_cells, optimizers, loss_scalers, group_size, grad_accum)
    updates = tuple(GroupUpdate(loss_cells[unit], [optimizers[g] for g in groups], (loss_scalers or {}).get(unit),
                                group_size) for unit, groups in phase.update_units())
    finish = _log_reducer(group_size)
    scaling = bool(loss_scalers)

    if len(updates) == 1:
        @ms.jit
        def step(batch, t):
            outs, overflow = updates[0].run(batch, t)
            return finish(outs, overflow, scaling)
    elif len(updates) == 2:
        @ms.jit
        def step(batch, t):
            first, overflow_1 = updates[0].run(batch, t)
            second, overflow_2 = updates[1].run(batch, t)
            return finish(first + second, _any(overflow_1, overflow_2, scaling), scaling)
    else:  # pragma: no cover - no method has more than two sequential units yet
        raise NotImplementedError("steps with more than two sequential update units")
    return step


@ms.jit_class
class GroupUpdate:
    """``loss -> gradients -> (all-reduce) -> (unscale, overflow check) -> update`` of one or more optimizers.

    With several optimizers (a joint phase) one ``value_and_grad`` over all their parameters
    gives every gradient from the same forward pass; each optimizer then applies its slice.
    Its methods run inside the caller's ``@jit``; ``None`` members are compile-time constants.
    """

    def __init__(self, loss_cell, optimizers, scaler=None, group_size=1):
        self.opts, self.scaler = tuple(optimizers), scaler
        self.bounds = []
        params = []
        for opt in self.opts:
            self.bounds.append((len(params), len(params) + len(opt.parameters)))
            params += list(opt.parameters)
        self.bounds = tuple(self.bounds)
        self.parameters = ParameterTuple(params)
        self.reducers = tuple(nn.DistributedGradReducer(opt.parameters, True, group_size) if group_size > 1 else None
                              for opt in self.opts)
        if scaler is None:
            self.grad_fn = ms.value_and_grad(loss_cell, None, self.parameters, has_aux=True)
        else:
            def scaled_loss(batch, t):
                loss, aux = loss_cell(batch, t)
                return scaler.scale(loss), (loss,) + aux

            self.grad_fn = ms.value_and_grad(scaled_loss, None, self.parameters, has_aux=True)

    def grads(self, batch, t):
        """``((loss,) + aux, gradients)``; the gradients are those of the scaled loss under a scaler."""
        (loss, aux), grads = self.grad_fn(batch, t)
        if self.scaler is None:
            return (loss,) + aux, grads
        return aux, grads

    def _step_all(self, grads, outs):
        for opt, reducer, (lo, hi) in zip(self.opts, self.reducers, self.bounds):
            part = grads[lo:hi]
            if reducer is not None:
                part = reducer(part)
            outs = ops.depend(outs, opt(part))
        return outs

    def apply(self, grads, outs):
        """Updates the parameters; returns ``(outs after the update, overflow flag or None)``."""
        if self.scaler is None:
            return self._step_all(grads, outs), None
        grads = self.scaler.unscale(grads)
        finite = all_finite(grads)
        if finite:
            outs = self._step_all(grads, outs)
        self.scaler.adjust(finite)
        return outs, ops.logical_not(finite)

    def run(self, batch, t):
        outs, grads = self.grads(batch, t)
        return self.apply(grads, outs)


def _any(flag_1, flag_2, scaling):
    return ops.logical_or(flag_1, flag_2) if scaling else None


def _log_reducer(group_size):
    """``finish(outs, overflow, scaling)``: outs mean-all-reduced over ranks, plus the overflow flag."""
    allreduce = ops.AllReduce() if group_size > 1 else None

    def finish(outs, overflow, scaling):
        if allreduce is not None:
            outs = ops.unstack(allreduce(ops.stack([v.astype(ms.float32) for v in outs])) / group_size)
        if scaling:
            return tuple(outs) + (overflow,)
        return outs

    return finish


_accumulate_op = ops.MultitypeFuncGraph("accumulate")


@_accumulate_op.register("Tensor", "Tensor", "Tensor")
def _accumulate_grad(weight, buffer, grad):
    return ops.assign_add(buffer, grad.astype(buffer.dtype) * weight)


_zero_op = ops.MultitypeFuncGraph("zero")


@_zero_op.register("Tensor", "Tensor")
def _zero_buffer(after, buffer):
    return ops.assign(buffer, ops.depend(ops.zeros_like(buffer), after))


class AccumStep:
    """Gradient accumulation: ``step((batch_1, ..., batch_k), t)`` makes one optimizer update per group.

    Per update unit (``Phase.update_units``), in the phase's order: k calls of a jitted micro-step add ``grads / k`` to zeroed
    Parameter buffers, then one jitted apply-step all-reduces (data parallel), unscales and
    checks (mixed precision) and applies them, and zeroes the buffers. The update equals one
    step on the k micro-batches joined (for losses that are batch means), and a later group
    (ADDA's encoder) sees the earlier group's update, as in the fused step. Returns 0-d Tensors,
    left on the device like the fused step's: the per-key mean over the micro-batches, then the
    overflow flag (any unit) under loss scaling.
    """

    def __init__(self, phase, loss_cells, optimizers, loss_scalers, group_size, k):
        self.scaling, self.k = bool(loss_scalers), k
        finish = _log_reducer(group_size)
        weight = Tensor(1.0 / k, ms.float32)
        self.micro, self.apply = [], []
        for unit, groups in phase.update_units():
            update = GroupUpdate(loss_cells[unit], [optimizers[g] for g in groups], (loss_scalers or {}).get(unit),
                                 group_size)
            buffers = ParameterTuple([Parameter(Tensor(np.zeros(p.shape, np.float32)), requires_grad=False,
                                                name=f"{unit}.grad_accum.{p.name}") for p in update.parameters])
            self.micro.append(self._micro(update, buffers, weight, finish))
            self.apply.append(self._apply(update, buffers))

    @staticmethod
    def _micro(update, buffers, weight, finish):
        accumulate = ops.HyperMap()

        @ms.jit
        def micro(batch, t):
            outs, grads = update.grads(batch, t)
            outs = ops.depend(outs, accumulate(ops.partial(_accumulate_op, weight), buffers, grads))
            return finish(outs, None, False)

        return micro

    def _apply(self, update, buffers):
        zero = ops.HyperMap()
        scaling = self.scaling

        @ms.jit
        def apply():
            grads = tuple(buffers)
            outs, overflow = update.apply(grads, ops.zeros((), ms.float32))
            outs = ops.depend(outs, zero(ops.partial(_zero_op, outs), buffers))
            if scaling:  # the zeroing must reach the output, or the graph drops it
                return ops.depend(overflow, outs)
            return outs

        return apply

    def __call__(self, batches, t):
        if len(batches) != self.k:
            raise ValueError(f"expected {self.k} micro-batches (train.grad_accum), got {len(batches)}")
        values, overflow = [], None
        for micro, apply in zip(self.micro, self.apply):
            outs = [micro(batch, t) for batch in batches]
            # per-key mean over the micro-batches, kept on the device like the fused step's outputs
            values += [sum(o[j].astype(ms.float32) for o in outs) / self.k for j in range(len(outs[0]))]
            flag = apply()
            if self.scaling:
                overflow = flag if overflow is None else ops.logical_or(overflow, flag)
        return tuple(values) + ((overflow,) if self.scaling else ())


def micro_streams(data, k, rank):
    """``[(source, target)]`` batch streams for the k micro-batches of an update on ``rank``.

    ``data`` was built with ``num_shards = cards x k``: micro-batch j of rank r reads virtual shard
    ``r * k + j``, so k-step accumulation on n cards reads exactly the batches n x k cards would.
    """
    streams = (data.source, data.target)
    if getattr(data, "target_labeled", None) is not None:  # SSDA: the few-shot labelled target stream third
        streams += (data.target_labeled,)
    if k == 1:
        return [streams]
    return [tuple(stream.with_shard(rank * k + j) for stream in streams) for j in range(k)]


def ckpt_state(optimizers, scalers):
    """What a checkpoint saves besides the network: optimizer state, and loss scales under amp."""
    return {**optimizers, **{f"{g}.loss_scale": LossScaleState(s) for g, s in scalers.items()}}


def _host_float(value):
    return float(value.asnumpy()) if isinstance(value, Tensor) else float(value)


class StepMonitor:
    """Step outputs held on the device until :meth:`read_back`, then checked in iteration order.

    A NaN/Inf value stops the run naming the key and the iteration it first appeared at; under
    mixed precision the last output is the overflow flag: an overflowed (skipped) update is
    counted, not checked, and too many in a row stop the run.
    """

    def __init__(self, trainer, phase, keys, scalers):
        self.trainer, self.phase, self.keys, self.scalers = trainer, phase, keys, scalers
        self.max_overflows = int(math.log2(max(trainer.cfg.train.loss_scale, 1.0))) + 20  # scale reaches 1, +20
        self.pending, self.window, self.overflows, self.in_a_row = [], [], 0, 0

    def add(self, it, outputs):
        self.pending.append((it, outputs))

    def read_back(self):
        pending, self.pending = self.pending, []
        for it, outputs in pending:
            values = [_host_float(v) for v in outputs]
            overflow = bool(self.scalers) and values.pop() > 0
            if overflow:  # the update was skipped and the loss scale lowered: not a divergence
                self.overflows, self.in_a_row = self.overflows + 1, self.in_a_row + 1
                if self.in_a_row > self.max_overflows:
                    self.trainer.diverged(
                        f"gradients overflowed {self.in_a_row} updates in a row (loss scale "
                        f"{self.trainer.loss_scale(self.scalers):g}) at {self.phase.name} iteration {it} under "
                        "mixed precision (train.amp_level=O0 turns it off)")
                continue
            self.in_a_row = 0
            if not all(math.isfinite(v) for v in values):
                bad = self.keys[[math.isfinite(v) for v in values].index(False)]
                self.trainer.diverged(f"{bad} became NaN/Inf at {self.phase.name} iteration {it}")
            self.window.append(values)

    def summary(self):
        """Mean of each key since the last summary (plus overflow count and loss scale under amp)."""
        rec = {k: float(v) for k, v in zip(self.keys, np.mean(self.window, axis=0))} if self.window else {}
        if self.scalers:
            rec.update(overflow_steps=self.overflows, loss_scale=self.trainer.loss_scale(self.scalers))
        self.window, self.overflows = [], 0
        return rec


class Trainer:
    def __init__(self, cfg, run_dir, resume=False, rank=0, group_size=1, show_progress=True):
        cfg = resolve_epochs(cfg, cfg.data.batch_size * group_size * cfg.train.grad_accum)
        self.cfg, self.run_dir, self.resume = cfg, run_dir, resume
        self.rank, self.group_size = rank, group_size
        self.is_main = rank == 0
        self.show_progress = show_progress and self.is_main
        self.hash = config_hash(cfg)
        self.ckpt_path = os.path.join(run_dir, LAST_CKPT)
        self.streams = None  # [(source, target)] per micro-batch, set by fit()

    # ------------------------------------------------------------------ run directory
    def prepare_run_dir(self):
        """Refuse to clobber a run; returns the checkpoint to resume from (or None)."""
        results = os.path.join(self.run_dir, RESULTS)
        has_ckpt = os.path.isfile(self.ckpt_path)
        if os.path.isfile(results) and not self.resume:
            raise RunDirError(f"{self.run_dir} already holds a finished run; pass --resume auto to reuse it "
                              "or choose another train.output_dir")
        if has_ckpt and not self.resume:
            raise RunDirError(f"{self.run_dir} holds an unfinished run; pass --resume auto to continue it "
                              "or choose another train.output_dir")
        saved = os.path.join(self.run_dir, CONFIG_FILE)
        if has_ckpt and os.path.isfile(saved):  # every rank checks (read only), so all stop together
            with open(saved, encoding="utf-8") as handle:
                first = handle.readline()
            if self.hash not in first:
                raise RunDirError(f"{self.run_dir} was started with a different config ({first.strip()}); "
                                  "resume with the same config or choose another train.output_dir")
        if self.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            tmp = f"{saved}.tmp{os.getpid()}"  # replaced atomically: other ranks may be reading it
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(f"# config_hash: {self.hash}\n{dump_config(self.cfg)}")
            os.replace(tmp, saved)
            self._setup_logging()
        return self.ckpt_path if has_ckpt else None

    def _setup_logging(self):
        log.setLevel(logging.INFO)
        if not any(getattr(h, "_da_run", None) == self.run_dir for h in log.handlers):
            handler = logging.FileHandler(os.path.join(self.run_dir, "train.log"))
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            handler._da_run = self.run_dir
            log.addHandler(handler)

    def write_metrics(self, record):
        if self.is_main:
            with open(os.path.join(self.run_dir, METRICS), "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ training
    def fit(self):
        cfg = self.cfg
        amp_level = resolve_amp_level(cfg.train.amp_level)
        k = cfg.train.grad_accum
        if k < 1:
            raise ValueError(f"train.grad_accum must be >= 1 (micro-batches per update), got {k}")
        if amp_level != "O0" and cfg.train.loss_scale < 1:
            raise ValueError(f"train.loss_scale must be >= 1 under amp {amp_level}, got {cfg.train.loss_scale}")
        resume_from = self.prepare_run_dir()
        finished = resume_from is not None and os.path.isfile(os.path.join(self.run_dir, RESULTS))
        start_phase, start_iter = 0, 0
        if resume_from is not None:
            meta = checkpoint.read(resume_from)[1]
            start_phase, start_iter = int(meta.get("phase", 0)), int(meta.get("iter", 0))
        if not ranks_agree([finished, start_phase, start_iter], self.group_size):
            raise RunDirError(f"the {self.group_size} ranks see different checkpoints in {self.run_dir}; on several "
                              "nodes train.output_dir must be on storage that every node shares")
        if finished:
            with open(os.path.join(self.run_dir, RESULTS), encoding="utf-8") as handle:
                return json.load(handle)
        method = build_method(cfg)
        apply_amp(method.model, amp_level)
        # every rank reads its own shard; with accumulation each micro-batch is a shard of its own
        data = build_data(cfg, cfg.train.seed, self.group_size * k, self.rank * k, method.strong_views)
        self.streams = micro_streams(data, k, self.rank)
        if data.few_shot is not None:  # SSDA: the labelled target indices, saved and checked on resume
            from datasets.few_shot import save_or_check
            save_or_check(data.few_shot, self.run_dir, self.is_main)
        names, select_by = resolve_validators(cfg.train, data.source_val is not None,
                                              getattr(data.target_test, "task", "classification"))
        self.selection = Selection(names, select_by, self.run_dir, self.is_main, cfg.train.validator_samples)
        method.set_train(True)
        phases = method.phases()
        history = []
        if resume_from is not None:
            log.info("resuming %s at phase %d iteration %d", resume_from, start_phase, start_iter)
            history = read_history(self.run_dir, METRICS, [p.name for p in phases], (start_phase, start_iter))
            self.selection.restore(history)
        log.info("%d card(s) x %d per domain x %d accumulation step(s) = global batch %d; amp %s",
                 self.group_size, cfg.data.batch_size, k, self.group_size * cfg.data.batch_size * k, amp_level)
        started = time.time()
        for phase_idx, phase in enumerate(phases):
            if phase_idx < start_phase:
                continue
            optimizers = build_phase_optimizers(cfg.optim, method, phase)
            scalers = {} if amp_level == "O0" else {unit: build_loss_scaler(cfg.train.loss_scale, unit)
                                                    for unit, _ in phase.update_units()}
            first = 0
            if resume_from is not None and phase_idx == start_phase:
                checkpoint.load(resume_from, method, ckpt_state(optimizers, scalers))
                first = start_iter
            else:
                method.start_phase(phase)
            history += self.run_phase(method, phase, phase_idx, optimizers, self.phase_data(method, phase, data),
                                      first, scalers)
        final = self.final_results(method, data, history, time.time() - started)
        if self.is_main:
            checkpoint.save(self.ckpt_path, method, {}, iter=phases[-1].iters, phase=len(phases),
                            cfg_hash=self.hash, finished=True, seed=cfg.train.seed)
            tmp = os.path.join(self.run_dir, RESULTS + ".tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(final, handle, indent=1)
            os.replace(tmp, os.path.join(self.run_dir, RESULTS))
        return final

    def phase_data(self, method, phase, data):
        """The data bundle ``phase`` trains on: ``data``, or with the source domain the method's
        ``phase_source`` hook gives (re-applied on resume, as the hook runs for every phase that runs)."""
        domain = method.phase_source(phase, PhaseContext(self.run_dir, data, self.cfg, self.is_main))
        phase_data = data if domain is None else with_source_domain(data, domain)
        self.streams = micro_streams(phase_data, self.cfg.train.grad_accum, self.rank)
        return phase_data

    def make_batch(self, method, data, it, micro=0, drawn=None):
        """The batch dict of iteration ``it`` (micro-batch ``micro`` of it under gradient accumulation).

        ``drawn``: the (source, target) stream batches of ``it`` when already made (the prefetcher's).
        """
        streams = self.streams[micro] if self.streams else micro_streams(data, 1, 0)[0]
        drawn = drawn or [stream.batch(it) for stream in streams]
        (x_s, y_s, *s_strong), (x_t, _unused_target_labels, *t_strong) = drawn[:2]
        batch = {"x_s": x_s, "y_s": y_s.astype(np.int32), "x_t": x_t}
        if method.strong_views:
            batch["x_s_strong"], batch["x_t_strong"] = s_strong[0], t_strong[0]
        if len(drawn) > 2:  # SSDA: the few-shot labelled target batch (stream TARGET_LABELED_STREAM)
            batch["x_tl"], batch["y_tl"] = drawn[2][0], drawn[2][1].astype(np.int32)
        if method.needs_target_indices:  # DANCE: rows of its target memory bank
            batch["t_idx"] = streams[1].indices(it).astype(np.int32)
        shard = self.rank * self.cfg.train.grad_accum + micro
        rng = np.random.default_rng([self.cfg.train.seed, 7, it, shard])
        batch.update(method.host_random(rng, x_s.shape[0]))
        # mutable: a dict input would otherwise be folded into the graph as a constant and recompile
        return ms.mutable({k: Tensor(v) for k, v in batch.items()})

    def step_input(self, method, data, it):
        k = self.cfg.train.grad_accum
        if k == 1:
            return self.make_batch(method, data, it)
        return tuple(self.make_batch(method, data, it, j) for j in range(k))

    def prefetcher(self, method, data, phase, first):
        """``(step input, progress Tensor)`` of iterations ``first..phase.iters - 1``, built ``data.prefetch`` ahead.

        Each stream is read in order through ``BatchStream.batches`` (file domains decode there in
        the dataset engine's threads); the result equals ``step_input(method, data, it)``.
        """
        pairs = self.streams or micro_streams(data, 1, 0)
        feeds = [tuple(stream.batches(first, phase.iters) for stream in pair) for pair in pairs]

        def make(it):
            inputs = tuple(self.make_batch(method, data, it, j, [next(feed) for feed in feeds[j]])
                           for j in range(len(feeds)))
            return inputs[0] if self.cfg.train.grad_accum == 1 else inputs, Tensor(it / phase.iters, ms.float32)

        def close_feeds():
            for pair in feeds:
                for feed in pair:
                    feed.close()

        # Engine-fed streams already decode and batch ahead in the dataset engine's threads. A Python
        # producer on top only competes for the GIL, which the step's thread re-takes between kernels
        # (bench_loop.py resnet18, 2 workers: +89 % per iteration with it, -4 % without).
        engine_fed = all(stream.engine_fed for pair in pairs for stream in pair)
        depth = 0 if engine_fed else self.cfg.data.prefetch
        return Prefetcher(make, first, phase.iters, depth, name=f"batches-{phase.name}", cleanup=close_feeds)

    def run_phase(self, method, phase, phase_idx, optimizers, data, first, scalers=None):
        """Steps ``first..phase.iters - 1``; outputs stay on the device and are read back (and checked
        for NaN/Inf) every ``train.log_every`` iterations and before every checkpoint."""
        cfg = self.cfg.train
        scalers = scalers or {}
        step = make_step(phase, method.loss_cells(phase), optimizers, scalers, self.group_size, cfg.grad_accum)
        monitor = StepMonitor(self, phase, method.step_log_keys(phase), scalers)
        tick, since = time.time(), 0
        history, bar = [], None
        if self.show_progress:
            from tqdm import tqdm

            bar = tqdm(total=phase.iters, initial=first, desc=phase.name, dynamic_ncols=True, leave=False)
        with self.prefetcher(method, data, phase, first) as batches:
            for it in range(first, phase.iters):  # one iteration = one optimizer update per group
                monitor.add(it, step(*batches.get()))
                since += 1
                done = it + 1
                if bar is not None:
                    bar.update(1)
                log_now = done % cfg.log_every == 0 or done == phase.iters
                ckpt_now = done % cfg.ckpt_every == 0 or done == phase.iters
                if log_now or ckpt_now:
                    monitor.read_back()  # the only host sync of the step outputs
                    if bar is not None and monitor.window:
                        bar.set_postfix({k: f"{v:.3f}" for k, v in zip(monitor.keys[:4], monitor.window[-1][:4])})
                if log_now:
                    rec = {"phase": phase.name, "iter": done, **monitor.summary()}
                    rec["sec_per_iter"] = (time.time() - tick) / since
                    if done % cfg.eval_every == 0 or done == phase.iters:
                        rec.update(self.eval_record(method, data))
                        if self.is_main:  # e.g. CyCADA's translation grid
                            method.eval_artifacts(phase, done, PhaseContext(self.run_dir, data, self.cfg, True))
                        history.append(rec)
                        if self.selection.active:
                            self.selection.consider(rec, method)
                    self.write_metrics(rec)
                    log.info(json.dumps(rec))
                    tick, since = time.time(), 0  # evaluation time is not training time
                if ckpt_now:
                    # every rank checks (the parameters are the same on all), so all stop together
                    if not all(np.isfinite(p.asnumpy()).all() for p in method.trainable_params()):
                        self.diverged(f"parameters became NaN/Inf at {phase.name} iteration {done}")
                    if self.is_main:
                        checkpoint.save(self.ckpt_path, method, ckpt_state(optimizers, scalers), iter=done,
                                        phase=phase_idx, cfg_hash=self.hash, finished=False,
                                        seed=self.cfg.train.seed)
        if bar is not None:
            bar.close()
        return history

    @staticmethod
    def loss_scale(scalers):
        return min(float(s.scale_value.asnumpy()) for s in scalers.values())

    def diverged(self, what):
        if os.path.isfile(self.ckpt_path):
            it = checkpoint.read(self.ckpt_path)[1].get("iter")
            kept = f"the last good checkpoint {self.ckpt_path} (iteration {it}) is kept"
        else:
            kept = "no checkpoint had been written yet"
        raise TrainingDiverged(f"{what}; {kept}. Lower optim.lr or check the data")

    def eval_record(self, method, data):
        bs = self.cfg.data.batch_size
        target = evaluate(method.model, data.target_test, data.eval_transform, bs, data.loader)
        rec = {f"target_{target['metric']}": target["score"]}
        if data.target_val is not None:  # SSDA: the labelled target validation split (MME selects on it)
            val = evaluate(method.model, data.target_val, data.eval_transform, bs, data.loader)
            rec[f"target_val_{val['metric']}"] = val["score"]
        if self.selection.active:  # label-free scores (and the source-val accuracy) from one pass per split
            rec.update(self.selection.score(method, data, bs))
        elif data.source_val is not None:
            val = evaluate(method.model, data.source_val, data.eval_transform, bs, data.loader)
            rec[f"source_val_{val['metric']}"] = val["score"]
        return rec

    def final_results(self, method, data, history, seconds):
        """Final-checkpoint numbers; the best-on-target number is labelled oracle.

        The score is the target domain's metric (``acc`` for classification, ``miou`` for
        segmentation): ``results["metric"]`` names it and ``target_<metric>`` holds it.
        """
        final = evaluate(method.model, data.target_test, data.eval_transform, self.cfg.data.batch_size, data.loader)
        key = f"target_{final['metric']}"
        res = {"metric": final["metric"], key: final["score"], "target_per_class": final["per_class"],
               "class_names": list(data.target_test.class_names), "select_by": "last",
               "config_hash": self.hash, "seed": self.cfg.train.seed, "train_seconds": seconds}
        res.update({f"target_{k}": v for k, v in final.get("extra", {}).items()})
        if self.selection.active:
            res.update(self.selection.results(history, final["metric"]))
        if data.target_val is not None and history:  # SSDA: MME/PAC keep the checkpoint best on the labelled
            val_key = f"target_val_{final['metric']}"  # target validation split (ties: the later, as MME's >=)
            best = max(range(len(history)), key=lambda i: (history[i][val_key], i))
            res["selected_by_target_val"] = {"phase": history[best]["phase"], "iter": history[best]["iter"],
                                             val_key: history[best][val_key], key: history[best][key]}
        if history:  # best on the target TEST split: an upper bound for reference, not a valid selection
            res[f"oracle_{key}"] = max(r[key] for r in history)
        return res
