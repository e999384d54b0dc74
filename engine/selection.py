"""Label-free checkpoint selection in the trainer (issue #14).

At every evaluation point the trainer scores the model with the validators of
``engine.validators`` on the *unlabelled target training images* (and, for ``source_acc`` and
``dev``, the held-out labelled source split); the target test split is never used to select.
The scores go into ``metrics.jsonl`` (``"validators": {name: score}``), the target-train softmax
outputs into ``validation/target_probs_<phase>_<iter>.npy`` (for EnsV and the validator study),
and the checkpoint with the best ``train.select_by`` score so far into ``best_<validator>.ckpt``.
``results.json`` then lists, for every validator, the candidate it picks and that checkpoint's
target accuracy, beside the final checkpoint and the (invalid, labelled) oracle.
"""
import logging
import os

import numpy as np

from engine import checkpoint
from engine import validators as V
from engine.evaluators import predict
from engine.run_log import is_evaluation, read_run_log

log = logging.getLogger("da")
VALIDATION_DIR = "validation"
SELECT_ALIASES = {"source_val": "source_acc"}  # the name select_by had before the validators


def resolve_validators(train_cfg, has_source_val, task):
    """``(names, select_by)`` of a run; one-line ValueError for a setting that cannot work."""
    select_by = SELECT_ALIASES.get(train_cfg.select_by, train_cfg.select_by)
    if task != "classification":
        if train_cfg.validators or select_by != "last":
            raise ValueError(f"label-free validators score class probabilities; a {task} run keeps "
                             "train.validators: [] and train.select_by: last")
        return [], "last"
    if train_cfg.validators is None:  # default: every validator this run's data allows
        names = [n for n in V.ALL if has_source_val or n not in V.NEEDS_SOURCE_VAL]
    else:
        names = list(train_cfg.validators)
        V.check_names(names, V.ALL)
    if select_by != "last":
        V.check_names([select_by], V.ALL)
        if select_by not in names:
            names.append(select_by)
    missing = [n for n in names if n in V.NEEDS_SOURCE_VAL and not has_source_val]
    if missing:
        raise ValueError(f"validator(s) {', '.join(missing)} need a held-out labelled source split; "
                         "set data.source_val_fraction (e.g. 0.1) or drop them from train.validators")
    return names, select_by


def evenly_spaced(n, limit):
    return np.linspace(0, n - 1, min(n, limit)).astype(int) if limit > 0 else np.arange(n)


def per_sample_ce(logits, labels):
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def candidate_id(record):
    return record["phase"], int(record["iter"])


class Selection:
    """Validator scores at evaluation points, the best checkpoint by ``select_by``, and the results entry."""

    def __init__(self, names, select_by, run_dir, is_main, samples):
        self.names, self.select_by = names, select_by
        self.online = [n for n in names if n in V.ONLINE]
        self.run_dir, self.is_main, self.samples = run_dir, is_main, samples
        self.folder = os.path.join(run_dir, VALIDATION_DIR)
        self.best = None  # (score, phase, iter) of select_by so far

    @property
    def active(self):
        return bool(self.names)

    def best_path(self):
        return os.path.join(self.run_dir, f"best_{self.select_by}.ckpt")

    def probs_path(self, phase, it):
        return os.path.join(self.folder, f"target_probs_{phase}_{int(it):06d}.npy")

    def candidate_path(self, phase, it):
        return os.path.join(self.folder, f"candidate_{phase}_{int(it):06d}.ckpt")

    def score(self, method, data, batch_size):
        """``{"validators": {...}, "source_val_acc": ...}`` of the model now; the target probabilities are kept
        for :meth:`consider`, which saves them."""
        model, tf, loader = method.model, data.eval_transform, data.loader
        bs = max(batch_size, 64)
        target_domain = data.target.domain
        target = predict(model, target_domain, tf, bs, loader, evenly_spaced(len(target_domain), self.samples))
        source_val = source_train_features = None
        if data.source_val is not None:
            source_val = predict(model, data.source_val, tf, bs, loader)
            source_val["losses"] = per_sample_ce(source_val["logits"], source_val["labels"])
        if "dev" in self.online:
            source_domain = data.source.domain
            source_train_features = predict(model, source_domain, tf, bs, loader,
                                            evenly_spaced(len(source_domain), self.samples))["features"]
        scores = V.score_online(self.online, target["probs"], source_val=source_val,
                                source_train_features=source_train_features, target_features=target["features"])
        rec = {"validators": {k: float(v) for k, v in scores.items()}}
        if source_val is not None:
            rec["source_val_acc"] = V.source_accuracy(source_val["probs"], source_val["labels"])
        self._probs = target["probs"].astype(np.float32)
        return rec

    def consider(self, record, method):
        """After an evaluation record: keep its probabilities and, if it is the best so far, its checkpoint."""
        phase, it = candidate_id(record)
        if not self.is_main:
            return
        os.makedirs(self.folder, exist_ok=True)
        tmp = self.probs_path(phase, it) + ".tmp.npy"
        np.save(tmp, self._probs)
        os.replace(tmp, self.probs_path(phase, it))
        if self.select_by == "ens_agreement":  # known only once every candidate exists: keep them all
            checkpoint.save(self.candidate_path(phase, it), method, iter=it)
            return
        score = record.get("validators", {}).get(self.select_by)
        if score is not None and (self.best is None or score > self.best[0]):  # NaN never wins
            self.best = (score, phase, it)
            checkpoint.save(self.best_path(), method, iter=it)
            log.info("best %s so far: %s iteration %d (%.5g) -> %s", self.select_by, phase, it, score,
                     self.best_path())

    def restore(self, history):
        """On resume: the best ``select_by`` score among the evaluation records already done."""
        scored = [(r["validators"][self.select_by],) + candidate_id(r) for r in history
                  if self.select_by in r.get("validators", {})]
        scored = [s for s in scored if s[0] == s[0]]
        self.best = max(scored, key=lambda s: s[0]) if scored else None

    def ens_scores(self, history):
        """EnsV over this run's evaluation points (``None`` where a probability file is missing)."""
        paths = [self.probs_path(*candidate_id(r)) for r in history]
        if not history or not all(os.path.isfile(p) for p in paths):
            return None
        return V.ens_agreement([np.load(p) for p in paths])

    def results(self, history, metric):
        """``{"selection": {validator: {phase, iter, target_<metric>, score}}}`` plus the select_by entry."""
        key = f"target_{metric}"
        columns = {n: [r.get("validators", {}).get(n) for r in history] for n in self.online}
        if "ens_agreement" in self.names:
            ens = self.ens_scores(history)
            if ens is not None:
                columns["ens_agreement"] = list(ens)
        selection = {}
        for name, scores in columns.items():
            valid = [i for i, s in enumerate(scores) if s is not None and s == s]
            if not valid:
                continue
            pick = max(valid, key=lambda i: scores[i])  # first of equal scores: the earliest checkpoint
            rec = history[pick]
            selection[name] = {"phase": rec["phase"], "iter": int(rec["iter"]), key: rec[key],
                               "score": float(scores[pick])}
        res = {"selection": selection}
        if self.select_by != "last" and self.select_by in selection:
            chosen = selection[self.select_by]
            if self.select_by == "ens_agreement" and self.is_main:
                os.replace(self.candidate_path(chosen["phase"], chosen["iter"]), self.best_path())
                for r in history:
                    path = self.candidate_path(*candidate_id(r))
                    if os.path.isfile(path):
                        os.remove(path)
            res.update(select_by=self.select_by, selected_phase=chosen["phase"], selected_iter=chosen["iter"],
                       selected_ckpt=os.path.basename(self.best_path()), **{f"{key}_selected": chosen[key]})
        return res


def read_history(run_dir, metrics_file, phase_names, upto):
    """Evaluation records of ``metrics.jsonl`` at or before ``upto = (phase index, iter)``; the last copy wins.

    A killed run may have logged evaluation points after its last checkpoint; those are redone
    after the resume, so they are left out here.
    """
    path = os.path.join(run_dir, metrics_file)
    if not os.path.isfile(path):
        return []
    order = {name: i for i, name in enumerate(phase_names)}
    records, _ = read_run_log(path, lambda rec: is_evaluation(rec) and rec["phase"] in order
                              and (order[rec["phase"]], int(rec["iter"])) <= upto)
    return sorted(records, key=lambda r: (order[r["phase"]], int(r["iter"])))

