"""Label-free validators: scores for choosing a checkpoint without target labels (issue #14).

Every function is plain NumPy (DEV also uses scikit-learn) and returns a float where **higher is
better**. ``probs`` are N x K softmax outputs on the unlabelled target *training* images; the target
test split never enters a validator. Logs are natural; a probability inside a log is clipped to
``EPS`` = 1e-12 (so 0 * log 0 counts as 0 and a one-hot row has entropy exactly 0).

* ``entropy``: -mean_i H(p_i) (entropy minimisation as a score; benchmarked with the others in
  Musgrave et al., "Three new validators and a large-scale benchmark ranking for unsupervised
  domain adaptation", arXiv 2208.07360).
* ``info_max``: H(mean_i p_i) - mean_i H(p_i), the information-maximisation objective (Shi & Sha,
  ICML 2012; SHOT, Liang et al., ICML 2020).
* ``bnm``: nuclear norm of the N x K prediction matrix / N (Batch Nuclear-norm Maximization, Cui et
  al., CVPR 2020).
* ``snd``: Soft Neighborhood Density (Saito et al., "Tune it the right way", ICCV 2021):
  f_i = p_i / ||p_i||, S_ij = f_i . f_j / tau for j != i, P_i = softmax_j(S_ij), score =
  mean_i H(P_i). Sign: the authors' ``neighbor_density`` returns this mean entropy and they keep the
  model with the *highest* value (dense soft neighbourhoods = well-clustered predictions), so it
  is returned as is. Two numerical differences from that code: it sets the diagonal to -1/tau
  (cosine -1, weight e^-20 against >= e^0 for the non-negative probability vectors) where this
  excludes it exactly, and it takes log(P + 1e-5) where this uses the exact log-softmax; the two
  agree within N * 1e-5 (tests/test_validators.py checks it).
* ``dev``: Deep Embedded Validation (You et al., "Towards accurate model selection in deep
  unsupervised domain adaptation", ICML 2019): an importance-weighted source-validation risk with
  a control variate, weights from a domain classifier (see :func:`dev`).
* ``source_accuracy``: accuracy on held-out labelled source images.
* ``ens_agreement``: EnsV (Hu, Luo, Liang & Foo, "Towards reliable model selection for unsupervised
  domain adaptation: an empirical study and a certified baseline", NeurIPS 2024 Datasets and
  Benchmarks): agreement of each candidate's argmax with the argmax of the mean of
  all candidates' probabilities. It needs every candidate at once, so it is computed after
  training (tools/validator_study.py), not at eval points.
"""
import difflib

import numpy as np

EPS = 1e-12

ONLINE = ("entropy", "info_max", "bnm", "snd", "source_acc", "dev")   # computed at every eval point
ALL = ONLINE + ("ens_agreement",)
NEEDS_SOURCE_VAL = ("source_acc", "dev")


def _check_probs(probs, what="probs"):
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty N x K array of softmax outputs, got shape {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError(f"{what} holds NaN or Inf; validators need finite softmax outputs")
    return probs


def _row_entropy(probs):
    """H(p_i) per row, natural log, with 0 * log 0 = 0."""
    return -np.sum(probs * np.log(np.clip(probs, EPS, None)), axis=1)


def entropy(probs):
    """-mean_i H(p_i): 0 for confident one-hot predictions, -log K for uniform ones."""
    return float(-np.mean(_row_entropy(_check_probs(probs))))


def info_max(probs):
    """H(mean_i p_i) - mean_i H(p_i): confident (low per-sample entropy) yet diverse (high marginal entropy)."""
    probs = _check_probs(probs)
    return float(_row_entropy(probs.mean(axis=0, keepdims=True))[0] - np.mean(_row_entropy(probs)))


def bnm(probs):
    """Nuclear norm (sum of singular values) of the N x K probability matrix, divided by N."""
    probs = _check_probs(probs)
    return float(np.linalg.norm(probs, ord="nuc") / probs.shape[0])


def snd(probs, tau=0.05, block=1024):
    """Soft Neighborhood Density: mean entropy of each sample's softmax similarity to the others.

    Rows are processed ``block`` at a time so memory stays O(block x N) for large target sets.
    """
    probs = _check_probs(probs)
    n = probs.shape[0]
    if n < 2:
        raise ValueError("snd needs at least 2 target samples (each one's neighbours are the others)")
    if tau <= 0:
        raise ValueError(f"snd temperature tau must be > 0, got {tau}")
    norms = np.linalg.norm(probs, axis=1, keepdims=True)
    feats = probs / np.maximum(norms, EPS)
    total = 0.0
    for start in range(0, n, block):
        sim = feats[start:start + block] @ feats.T / tau
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf   # a sample is not its own neighbour
        log_p = sim - sim.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        log_p[rows, start + rows] = 0.0   # its probability is 0; avoid 0 * -inf
        total += float(-np.sum(np.exp(log_p) * log_p))
    return total / n


def source_accuracy(probs, labels):
    """Fraction of held-out labelled source samples whose argmax is the label."""
    probs = _check_probs(probs, "source-val probs")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f"source-val probs have {probs.shape[0]} rows but {labels.shape[0]} labels")
    return float(np.mean(probs.argmax(axis=1) == labels))


def dev_risk(weights, losses):
    """DEV's control-variate risk mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w).

    Covariance and variance use N - 1 (``np.cov``'s default, as the DEV code). When Var(w) is 0 up to
    rounding (the domain classifier cannot tell the domains apart), eta is undefined and the
    self-normalised estimate mean(w l) / mean(w) = mean(l) is returned.
    """
    weights = np.asarray(weights, np.float64).reshape(-1)
    losses = np.asarray(losses, np.float64).reshape(-1)
    weighted = weights * losses
    var_w = np.var(weights, ddof=1) if weights.size > 1 else 0.0
    if var_w <= 1e-12 * max(np.mean(weights) ** 2, EPS):
        return float(np.mean(losses))
    eta = -np.cov(weighted, weights)[0, 1] / var_w
    return float(np.mean(weighted) + eta * np.mean(weights) - eta)


def dev_weights(source_val_features, source_train_features, target_features, seed=0,
                cs=(0.01, 0.1, 1.0, 10.0)):
    """Importance weights w_i = (N_s / N_t) P(t | x_i) / P(s | x_i) of the held-out source samples.

    The domain classifier is scikit-learn's L2 logistic regression on standardised features, fitted
    on source-train vs target features. As DEV's code picks the discriminator's weight decay on a
    held-out 20 % split, the inverse strength C is picked from ``cs`` here by held-out log-loss (a
    density ratio needs calibrated probabilities more than accuracy), then refitted on all samples.
    lbfgs and a seeded split make it deterministic.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    feats = {name: np.asarray(x, np.float64) for name, x in (("source_val_features", source_val_features),
                                                               ("source_train_features", source_train_features),
                                                               ("target_features", target_features))}
    for name, x in feats.items():
        least = 2 if name == "source_val_features" else 5   # the 80/20 split needs both domains in each part
        if x.ndim != 2 or x.shape[0] < least:
            raise ValueError(f"dev: {name} must be an N x D array with N >= {least}, got shape {x.shape}")
    dims = {x.shape[1] for x in feats.values()}
    if len(dims) != 1:
        raise ValueError(f"dev: feature widths differ {[x.shape[1] for x in feats.values()]}; use the same layer")
    x_s, x_t = feats["source_train_features"], feats["target_features"]
    x = np.concatenate([x_s, x_t])
    y = np.r_[np.zeros(len(x_s)), np.ones(len(x_t))]   # 1 = target
    scaler = StandardScaler().fit(x)
    x = scaler.transform(x)

    def fit(c, xs, ys):
        return LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(xs, ys)

    x_fit, x_held, y_fit, y_held = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    best_c = min(cs, key=lambda c: log_loss(y_held, fit(c, x_fit, y_fit).predict_proba(x_held), labels=[0, 1]))
    p_target = fit(best_c, x, y).predict_proba(scaler.transform(feats["source_val_features"]))[:, 1]
    p_target = np.clip(p_target, EPS, 1.0 - EPS)
    return (len(x_s) / len(x_t)) * p_target / (1.0 - p_target)


def dev(source_val_features, source_val_losses, source_train_features, target_features, seed=0):
    """Deep Embedded Validation score: -(importance-weighted source-val risk with control variate)."""
    losses = np.asarray(source_val_losses, np.float64).reshape(-1)
    if losses.shape[0] != np.shape(source_val_features)[0]:
        raise ValueError(f"dev: {np.shape(source_val_features)[0]} source-val features but {losses.shape[0]} losses")
    weights = dev_weights(source_val_features, source_train_features, target_features, seed)
    return -dev_risk(weights, losses)


def ens_agreement(probs_of_candidates):
    """EnsV: per candidate, the fraction of samples whose argmax equals the argmax of the candidates' mean probs.

    ``probs_of_candidates`` is a C x N x K array or a sequence of C N x K arrays (memory-mapped ``.npy``
    files work: it reads each twice and holds only the running mean). Returns a float array of length C.
    """
    candidates = list(probs_of_candidates)
    if not candidates:
        raise ValueError("ens_agreement needs at least one candidate's probs")
    mean = None
    for i, probs in enumerate(candidates):
        probs = _check_probs(probs, f"candidate {i} probs")
        if mean is not None and probs.shape != mean.shape:
            raise ValueError(f"candidate {i} probs have shape {probs.shape}, candidate 0 {mean.shape}: "
                             "every candidate must score the same target images")
        mean = probs if mean is None else mean + probs
    ensemble = mean.argmax(axis=1)   # argmax of the sum = argmax of the mean
    return np.array([np.mean(np.asarray(p).argmax(axis=1) == ensemble) for p in candidates], np.float64)


def check_names(names, valid=ONLINE):
    """Raise a one-line ValueError for a validator name not in ``valid``, naming the nearest valid one."""
    for name in names:
        if name in valid:
            continue
        if name in ALL:
            raise ValueError(f"validator {name!r} compares all candidates after training (tools/validator_study.py); "
                             f"at eval points use one of: {', '.join(valid)}")
        hint = difflib.get_close_matches(str(name), valid, n=1)
        near = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown validator {name!r}{near}; valid: {', '.join(valid)}")


def score_online(names, target_probs, source_val=None, source_train_features=None, target_features=None):
    """``{name: score}`` for each validator in ``names`` (a subset of :data:`ONLINE`).

    ``source_val``: ``{"probs", "labels", "features", "losses"}`` of the held-out source split, or None;
    DEV also needs the source-train and target-train features (same layer as ``source_val["features"]``).
    """
    check_names(names)
    scores = {}
    for name in names:
        if name in NEEDS_SOURCE_VAL and source_val is None:
            raise ValueError(f"validator {name!r} needs held-out labelled source data: set data.source_val_fraction > 0 "
                             f"or drop {name!r} from train.validators")
        if name == "source_acc":
            scores[name] = source_accuracy(source_val["probs"], source_val["labels"])
        elif name == "dev":
            if source_train_features is None or target_features is None:
                raise ValueError("validator 'dev' needs source_train_features and target_features (bottleneck features)")
            scores[name] = dev(source_val["features"], source_val["losses"], source_train_features, target_features)
        elif name == "snd":
            scores[name] = snd(target_probs)
        else:
            scores[name] = {"entropy": entropy, "info_max": info_max, "bnm": bnm}[name](target_probs)
    return scores
