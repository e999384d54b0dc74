"""The phase loop: phase -> optimizers -> one jitted step -> eval / checkpoint. No method branches."""
import dataclasses
import json
import logging
import math
import os
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from engine import checkpoint
from engine.config import config_hash, dump_config
from engine.data import build_data
from engine.optim import build_optimizer
from engine.registry import METHODS, REGULARIZERS
from models import create_model

log = logging.getLogger("da")
LAST_CKPT, RESULTS, CONFIG_FILE, METRICS = "last.ckpt", "results.json", "config.yaml", "metrics.jsonl"


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
    return METHODS.build(cfg.method.name, cfg.method, model, regs, cfg.model.num_classes, cfg.train, model_factory)


def phase_optim(cfg_optim, phase):
    """The optim section with the phase's overrides applied (validated like the YAML)."""
    if not phase.optim:
        return cfg_optim
    from engine.config import from_dict, OptimCfg
    return from_dict(OptimCfg, {**dataclasses.asdict(cfg_optim), **phase.optim}, "optim.", f"phase {phase.name}")


def make_step(phase, loss_cells, optimizers):
    """One jitted function running, in order, a ``value_and_grad`` + update per parameter group."""
    grad_fns = tuple(ms.value_and_grad(loss_cells[g], None, optimizers[g].parameters, has_aux=True)
                     for g in phase.groups)
    opts = tuple(optimizers[g] for g in phase.groups)

    def group_update(grad_fn, opt, batch, t):
        (loss, aux), grads = grad_fn(batch, t)
        return ops.depend((loss,) + aux, opt(grads))

    if len(grad_fns) == 1:
        @ms.jit
        def step(batch, t):
            return group_update(grad_fns[0], opts[0], batch, t)
    elif len(grad_fns) == 2:
        @ms.jit
        def step(batch, t):
            first = group_update(grad_fns[0], opts[0], batch, t)
            return first + group_update(grad_fns[1], opts[1], batch, t)
    else:  # pragma: no cover - no method has more than two groups yet
        raise NotImplementedError("steps with more than two parameter groups")
    return step


def predict(model, x):
    logits, _ = model(Tensor(x))
    return logits.asnumpy()


def evaluate(model, domain, transform, batch_size, loader=None):
    """Overall and per-class accuracy of ``model`` on ``domain`` (ordered, no augmentation)."""
    from datasets.base import iterate_eval

    was_training = model.training
    model.set_train(False)
    preds, labels = [], []
    for x, y in iterate_eval(domain, batch_size, transform, loader):
        preds.append(predict(model, x).argmax(-1))
        labels.append(y)
    model.set_train(was_training)
    preds, labels = np.concatenate(preds), np.concatenate(labels)
    per_class = [float((preds[labels == c] == c).mean()) if (labels == c).any() else float("nan")
                 for c in range(domain.num_classes)]
    return {"acc": float((preds == labels).mean()), "per_class": per_class, "n": int(len(labels))}


class Trainer:
    def __init__(self, cfg, run_dir, resume=False, rank=0, group_size=1, show_progress=True):
        self.cfg, self.run_dir, self.resume = cfg, run_dir, resume
        self.rank, self.group_size = rank, group_size
        self.is_main = rank == 0
        self.show_progress = show_progress and self.is_main
        self.hash = config_hash(cfg)
        self.ckpt_path = os.path.join(run_dir, LAST_CKPT)

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
        if self.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            saved = os.path.join(self.run_dir, CONFIG_FILE)
            if has_ckpt and os.path.isfile(saved):
                with open(saved, encoding="utf-8") as handle:
                    first = handle.readline()
                if self.hash not in first:
                    raise RunDirError(f"{self.run_dir} was started with a different config ({first.strip()}); "
                                      "resume with the same config or choose another train.output_dir")
            with open(saved, "w", encoding="utf-8") as handle:
                handle.write(f"# config_hash: {self.hash}\n{dump_config(self.cfg)}")
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
        resume_from = self.prepare_run_dir()
        if resume_from is not None and os.path.isfile(os.path.join(self.run_dir, RESULTS)):
            with open(os.path.join(self.run_dir, RESULTS), encoding="utf-8") as handle:
                return json.load(handle)
        method = build_method(cfg)
        data = build_data(cfg, cfg.train.seed, self.group_size, self.rank, method.strong_views)
        method.set_train(True)
        phases = method.phases()
        start_phase, start_iter = 0, 0
        meta = {}
        if resume_from is not None:
            meta = checkpoint.read(resume_from)[1]
            start_phase, start_iter = int(meta.get("phase", 0)), int(meta.get("iter", 0))
            log.info("resuming %s at phase %d iteration %d", resume_from, start_phase, start_iter)
        history, started = [], time.time()
        for phase_idx, phase in enumerate(phases):
            if phase_idx < start_phase:
                continue
            groups = method.param_groups(phase)
            optimizers = {g: build_optimizer(groups[g], phase_optim(cfg.optim, phase), g) for g in phase.groups}
            first = 0
            if resume_from is not None and phase_idx == start_phase:
                checkpoint.load(resume_from, method, optimizers)
                first = start_iter
            else:
                method.start_phase(phase)
            history += self.run_phase(method, phase, phase_idx, optimizers, data, first)
        final = self.final_results(method, data, history, time.time() - started)
        if self.is_main:
            checkpoint.save(self.ckpt_path, method, {}, iter=phases[-1].iters, phase=len(phases),
                            cfg_hash=self.hash, finished=True, seed=cfg.train.seed)
            tmp = os.path.join(self.run_dir, RESULTS + ".tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(final, handle, indent=1)
            os.replace(tmp, os.path.join(self.run_dir, RESULTS))
        return final

    def make_batch(self, method, data, it):
        x_s, y_s, *s_strong = data.source.batch(it)
        x_t, _unused_target_labels, *t_strong = data.target.batch(it)
        batch = {"x_s": x_s, "y_s": y_s.astype(np.int32), "x_t": x_t}
        if method.strong_views:
            batch["x_s_strong"], batch["x_t_strong"] = s_strong[0], t_strong[0]
        rng = np.random.default_rng([self.cfg.train.seed, 7, it, self.rank])
        batch.update(method.host_random(rng, x_s.shape[0]))
        # mutable: a dict input would otherwise be folded into the graph as a constant and recompile
        return ms.mutable({k: Tensor(v) for k, v in batch.items()})

    def run_phase(self, method, phase, phase_idx, optimizers, data, first):
        cfg = self.cfg.train
        step = make_step(phase, method.loss_cells(phase), optimizers)
        keys = method.step_log_keys(phase)
        history, window, tick = [], [], time.time()
        bar = None
        if self.show_progress:
            from tqdm import tqdm

            bar = tqdm(total=phase.iters, initial=first, desc=phase.name, dynamic_ncols=True, leave=False)
        for it in range(first, phase.iters):
            batch = self.make_batch(method, data, it)
            out = step(batch, Tensor(it / phase.iters, ms.float32))
            values = [float(v.asnumpy()) for v in out]
            if not all(math.isfinite(v) for v in values):
                bad = keys[[math.isfinite(v) for v in values].index(False)]
                self.diverged(f"{bad} became NaN/Inf at {phase.name} iteration {it}")
            window.append(values)
            done = it + 1
            if bar is not None:
                bar.update(1)
                if done % 10 == 0:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in zip(keys[:4], values[:4])})
            if done % cfg.log_every == 0 or done == phase.iters:
                mean = np.mean(window, axis=0)
                rec = {"phase": phase.name, "iter": done, **{k: float(v) for k, v in zip(keys, mean)},
                       "sec_per_iter": (time.time() - tick) / len(window)}
                window, tick = [], time.time()
                if done % cfg.eval_every == 0 or done == phase.iters:
                    rec.update(self.eval_record(method, data))
                    history.append(rec)
                self.write_metrics(rec)
                log.info(json.dumps(rec))
            if self.is_main and (done % cfg.ckpt_every == 0 or done == phase.iters):
                if not all(np.isfinite(p.asnumpy()).all() for p in method.trainable_params()):
                    self.diverged(f"parameters became NaN/Inf at {phase.name} iteration {done}")
                checkpoint.save(self.ckpt_path, method, optimizers, iter=done, phase=phase_idx,
                                cfg_hash=self.hash, finished=False, seed=self.cfg.train.seed)
        if bar is not None:
            bar.close()
        return history

    def diverged(self, what):
        if os.path.isfile(self.ckpt_path):
            it = checkpoint.read(self.ckpt_path)[1].get("iter")
            kept = f"the last good checkpoint {self.ckpt_path} (iteration {it}) is kept"
        else:
            kept = "no checkpoint had been written yet"
        raise TrainingDiverged(f"{what}; {kept}. Lower optim.lr or check the data")

    def eval_record(self, method, data):
        bs = max(self.cfg.data.batch_size, 64)
        rec = {"target_acc": evaluate(method.model, data.target_test, data.eval_transform, bs, data.loader)["acc"]}
        if data.source_val is not None:
            rec["source_val_acc"] = evaluate(method.model, data.source_val, data.eval_transform, bs, data.loader)["acc"]
        return rec

    def final_results(self, method, data, history, seconds):
        """Final-checkpoint numbers; the best-on-target number is labelled oracle."""
        bs = max(self.cfg.data.batch_size, 64)
        final = evaluate(method.model, data.target_test, data.eval_transform, bs, data.loader)
        res = {"target_acc": final["acc"], "target_per_class": final["per_class"], "select_by": "last",
               "config_hash": self.hash, "seed": self.cfg.train.seed, "train_seconds": seconds}
        if self.cfg.train.select_by == "source_val" and history and "source_val_acc" in history[-1]:
            best = max(history, key=lambda r: r["source_val_acc"])
            res.update(select_by="source_val", selected_iter=best["iter"], target_acc_selected=best["target_acc"])
        if history:
            res["oracle_target_acc"] = max(r["target_acc"] for r in history)
        return res
