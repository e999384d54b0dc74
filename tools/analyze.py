"""What adaptation did to one run: t-SNE of the features, the proxy A-distance, training curves, confusion matrix.

    python tools/analyze.py runs/dann_optdigits/seed0 [--ckpt PATH] [--max-points 500] [--device auto] [--out DIR]

Writes into ``--out`` (default: the run directory):

* ``tsne.png``: 2-D t-SNE (van der Maaten & Hinton, JMLR 2008; scikit-learn, ``init="pca"``, fixed
  ``random_state``) of the source-train and target-train features (the classifier's bottleneck /
  penultimate features, :func:`engine.evaluators.predict`), at most ``--max-points`` evenly spaced
  images per domain; one panel coloured by domain, one by class (the target's labels colour the
  plot only; nothing is selected with them).
* the **proxy A-distance** 2(1 - 2 eps) (Ben-David et al., "Analysis of representations for domain
  adaptation", NIPS 2006; used as in Ganin et al., "Domain-adversarial training of neural
  networks", JMLR 2016), eps = the held-out error of a domain classifier on the same features
  (:func:`proxy_a_distance`), printed and saved with the other numbers to ``analysis.json``.
* ``curves.png``: from ``metrics.jsonl``, against iterations: losses, domain-discriminator
  accuracy, the GRL coefficient (and other logged schedules), target / source-val accuracy and
  every label-free validator; multi-phase runs (ADDA) have their phase boundaries marked.
* ``confusion.png``: the row-normalised confusion matrix on the target test split, with class names.

Segmentation runs get ``curves.png`` only (the rest is defined for classification).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402,F401  (CPU runtime settings before MindSpore loads)
from engine.run_log import read_run_log  # noqa: E402
from engine.runtime import DEVICES  # noqa: E402

ANALYSIS_FILE, TSNE_PNG, CURVES_PNG, CONFUSION_PNG = "analysis.json", "tsne.png", "curves.png", "confusion.png"
MIN_POINTS = 10            # per domain: every cross-validation fold holds out some of each
LEGEND_MAX_CLASSES = 31    # Office-31's classes still fit a legend
PANEL_INCHES, DPI = (5.0, 3.5), 100  # curves.png: one panel is 500 x 350 pixels
# metrics.jsonl keys that are neither losses nor anything plotted (bookkeeping of the trainer)
NOT_PLOTTED = ("iter", "sec_per_iter", "overflow_steps", "loss_scale")
PANEL_TITLES = {"loss": "losses", "disc": "domain discriminator accuracy", "schedule": "GRL coefficient / schedules",
                "acc": "accuracy", "validators": "validators (min-max scaled per validator)"}


def domain_classifier_error(source_features, target_features, seed=0, folds=5):
    """Held-out balanced error of a logistic-regression domain classifier (source vs target features).

    TLlib's ``tllib/utils/analysis/a_distance.py`` fits a linear layer with SGD on a random 80 %
    and tests on the other 20 %. Here scikit-learn's L2 logistic regression (lbfgs: deterministic)
    on standardised features, with two changes for a steadier number on a few hundred points:
    ``folds``-fold cross-validation (seeded, stratified), so every point is held out once, and
    balanced class weights with the error averaged over the two domains, so chance stays at 0.5
    when the domains differ in size (500 source vs 100 target points: calling everything
    "source" would score a plain error of 1/6).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_s, x_t = (np.asarray(f, np.float64) for f in (source_features, target_features))
    for name, x in (("source_features", x_s), ("target_features", x_t)):
        if x.ndim != 2 or x.shape[0] < MIN_POINTS:
            raise ValueError(f"{name} must be an N x D array with N >= {MIN_POINTS}, got shape {x.shape}")
    if x_s.shape[1] != x_t.shape[1]:
        raise ValueError(f"source features have {x_s.shape[1]} dimensions, target {x_t.shape[1]}; use the same layer")
    x = np.concatenate([x_s, x_t])
    y = np.r_[np.zeros(len(x_s), int), np.ones(len(x_t), int)]  # 1 = target
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                                    random_state=seed))
    held_out = cross_val_predict(classifier, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float(np.mean([np.mean(held_out[y == d] != d) for d in (0, 1)]))


def proxy_a_distance(source_features, target_features, seed=0):
    """Proxy A-distance 2(1 - 2 eps), eps = :func:`domain_classifier_error`; 2 = separable, 0 = indistinguishable.

    eps is clipped to [0, 0.5], so the distance lies in [0, 2]: a held-out error above chance only
    means the classifier cannot tell the domains apart (TLlib does not clip and can report a small
    negative distance then).
    """
    eps = min(max(domain_classifier_error(source_features, target_features, seed), 0.0), 0.5)
    return 2.0 * (1.0 - 2.0 * eps)


def read_metrics(path):
    """Records of ``metrics.jsonl`` ordered by phase (in order of appearance), then iteration; the last copy wins."""
    return read_run_log(path)[0]


def panel_of(key):
    """Which curves.png panel a numeric log key belongs to (None: not plotted).

    Accuracies contain ``acc`` (``d_acc``: the domain discriminator's), schedules are the GRL
    coefficient ``grl`` and the ``*_lam`` / ``*_ramp`` / ``*coeff*`` ramps; every other number a
    method logs is a loss term (``loss``, ``cls``, ``transfer``, ``d_loss``, ``mcc``, ``ocr_ent``, ...).
    """
    if key in NOT_PLOTTED:
        return None
    if key.startswith(("target_", "source_val_")):
        return "acc"
    if key.startswith("d_acc"):
        return "disc"
    if "acc" in key:
        return "acc"
    if key == "grl" or key.endswith(("_lam", "_ramp")) or "coeff" in key:
        return "schedule"
    return "loss"


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def curve_series(records):
    """``({panel: {label: (x, y)}}, [(x, phase name)] phase starts)`` of ``read_metrics`` records.

    x is the iteration counted across phases: a phase's iterations continue from the last
    iteration logged in the phase before. Keys a run did not log are simply absent.
    """
    series, starts, offset, current, last_iter = {}, [], 0, None, 0
    for rec in records:
        if rec["phase"] != current:
            offset += last_iter
            current, last_iter = rec["phase"], 0
            starts.append((offset, current))
        x = offset + int(rec["iter"])
        last_iter = max(last_iter, int(rec["iter"]))
        points = [(panel_of(k), k, v) for k, v in rec.items() if _number(v) and panel_of(k) is not None]
        points += [("validators", k, v) for k, v in (rec.get("validators") or {}).items() if _number(v)]
        for panel, key, value in points:
            xs, ys = series.setdefault(panel, {}).setdefault(key, ([], []))
            xs.append(x)
            ys.append(float(value))
    order = [p for p in PANEL_TITLES if p in series]
    return {p: series[p] for p in order}, starts


def grid_shape(num_panels):
    cols = min(num_panels, 2)
    return -(-num_panels // cols), cols


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(series, starts, path, title=""):
    """Write curves.png: one 500 x 350 px panel per kind of curve, two panels a row."""
    plt = _pyplot()
    rows, cols = grid_shape(len(series))
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), dpi=DPI,
                             squeeze=False)
    for ax, (panel, curves) in zip(axes.flat, series.items()):
        for key, (xs, ys) in sorted(curves.items()):
            ys = np.asarray(ys)
            if panel == "validators":  # scales differ (entropy <= 0, bnm in [0, 1]): compare shapes and peaks
                low, high = ys.min(), ys.max()
                scaled = (ys - low) / (high - low) if high > low else np.full_like(ys, 0.5)
                ax.plot(xs, scaled, marker="o", ms=3, label=f"{key} [{low:.4g}, {high:.4g}]")
            else:
                evaluated = key.startswith(("target_", "source_val_"))
                ax.plot(xs, ys, marker="o" if evaluated else None, ms=3, ls="-" if evaluated or panel != "acc"
                        else "--", label=key if not (panel == "acc" and not evaluated) else f"{key} (train batch)")
        if panel == "disc":
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")  # chance: the features fool the discriminator
        if len(starts) > 1:
            for x, name in starts:
                ax.axvline(x, color="black", lw=0.8, ls="--")
                ax.text(x, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=7)
        ax.set_title(PANEL_TITLES[panel], fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def class_colors(num_classes):
    plt = _pyplot()
    if num_classes <= 10:
        return plt.get_cmap("tab10").colors[:num_classes]
    if num_classes <= 20:
        return plt.get_cmap("tab20").colors[:num_classes]
    return plt.get_cmap("turbo")(np.linspace(0.0, 1.0, num_classes))


def tsne_embedding(features, seed=0):
    """2-D t-SNE of ``features``; perplexity 30, or (N - 1) / 3 for small N (it must stay below N)."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(features) - 1) / 3.0))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(
        np.asarray(features, np.float64)), perplexity


def plot_tsne(embedding, domains, labels, class_names, domain_names, path, title=""):
    """tsne.png: the embedding coloured by domain (0 source, 1 target) and by class (o source, x target)."""
    plt = _pyplot()
    fig, (ax_dom, ax_cls) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=DPI)
    for d, (color, name) in enumerate(zip(("tab:blue", "tab:red"), domain_names)):
        pts = embedding[domains == d]
        ax_dom.scatter(pts[:, 0], pts[:, 1], s=6, c=color, alpha=0.6, label=f"{name} ({len(pts)})")
    ax_dom.legend(fontsize=8, markerscale=2)
    ax_dom.set_title("by domain", fontsize=10)
    colors = class_colors(len(class_names))
    for c, name in enumerate(class_names):
        for d, marker in ((0, "o"), (1, "x")):
            pts = embedding[(labels == c) & (domains == d)]
            ax_cls.scatter(pts[:, 0], pts[:, 1], s=8 if d else 6, c=[colors[c]], marker=marker, alpha=0.7,
                           label=name if d == 0 else None, linewidths=0.8 if d else 0)
    if len(class_names) <= LEGEND_MAX_CLASSES:
        ax_cls.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.01, 0.5),
                      ncol=1 if len(class_names) <= 16 else 2)
    ax_cls.set_title("by class (o source, x target)", fontsize=10)
    for ax in (ax_dom, ax_cls):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def row_normalised_confusion(labels, preds, num_classes):
    """(K, K) fractions, rows = true class (each row sums to 1; a class absent from the split gives a zero row)."""
    from engine.metrics import confusion_matrix

    counts = confusion_matrix(preds, labels, num_classes, ignore_index=-1).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_confusion(matrix, class_names, path, title=""):
    plt = _pyplot()
    k = len(class_names)
    side = max(5.0, 0.3 * k + 2.5)  # inches: room for k names
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=DPI)
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, rotation=90, fontsize=7)
    ax.set_yticklabels(class_names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 15:  # numbers stay legible
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{100 * matrix[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def write_curves(metrics_path, out_dir, title):
    """curves.png from metrics.jsonl; returns its path, or None when the file holds nothing to plot."""
    series, starts = curve_series(read_metrics(metrics_path))
    if not series:
        return None
    path = os.path.join(out_dir, CURVES_PNG)
    plot_curves(series, starts, path, title)
    return path


def domain_label(domain_cfg):
    return domain_cfg.name + (f"/{domain_cfg.domain}" if domain_cfg.domain else "")


def analyze_features(cfg, ckpt, device, max_points, out_dir):
    """Build the run's model and data, write tsne.png and confusion.png; returns the analysis.json entries."""
    from engine import checkpoint
    from engine.data import build_data
    from engine.evaluators import predict
    from engine.runtime import init_mindspore
    from engine.selection import evenly_spaced
    from engine.trainer import build_method

    device = init_mindspore(device, "graph", cfg.train.seed)
    method = build_method(cfg)
    meta = checkpoint.load(ckpt, method)
    data = build_data(cfg, cfg.train.seed)
    model, transform, batch = method.model, data.eval_transform, max(cfg.data.batch_size, 64)
    source, target = data.source.domain, data.target.domain
    out = {name: predict(model, dom, transform, batch, data.loader, evenly_spaced(len(dom), max_points))
           for name, dom in (("source", source), ("target", target))}
    test = predict(model, data.target_test, transform, batch, data.loader)

    names = (f"source {domain_label(cfg.data.source)}", f"target {domain_label(cfg.data.target)}")
    run_title = f"{cfg.name} seed {cfg.train.seed} @ iter {meta.get('iter')}"
    features = np.concatenate([out["source"]["features"], out["target"]["features"]])
    domains = np.r_[np.zeros(len(out["source"]["features"]), int), np.ones(len(out["target"]["features"]), int)]
    labels = np.concatenate([out["source"]["labels"], out["target"]["labels"]])
    error = domain_classifier_error(out["source"]["features"], out["target"]["features"])
    distance = proxy_a_distance(out["source"]["features"], out["target"]["features"])
    embedding, perplexity = tsne_embedding(features)
    class_names = [str(c) for c in data.target_test.class_names]
    plot_tsne(embedding, domains, labels, class_names, names, os.path.join(out_dir, TSNE_PNG),
              f"{run_title}: t-SNE of the features (proxy A-distance {distance:.3f})")

    preds = test["probs"].argmax(1)
    accuracy = float(np.mean(preds == test["labels"]))
    matrix = row_normalised_confusion(test["labels"], preds, len(class_names))
    plot_confusion(matrix, class_names, os.path.join(out_dir, CONFUSION_PNG),
                   f"{run_title}\ntarget test {domain_label(cfg.data.target)}: accuracy {100 * accuracy:.2f}% "
                   "(rows: true class, normalised)")
    return {"device": device, "iter": meta.get("iter"),
            "source": domain_label(cfg.data.source), "target": domain_label(cfg.data.target),
            "n_source": int(len(out["source"]["features"])), "n_target": int(len(out["target"]["features"])),
            "n_target_test": int(len(preds)), "feature_dim": int(features.shape[1]),
            "proxy_a_distance": distance, "domain_classifier_error": error, "target_test_acc": accuracy,
            "target_test_per_class_acc": dict(zip(class_names, (float(v) for v in np.diag(matrix)))),
            "tsne": {"init": "pca", "random_state": 0, "perplexity": perplexity}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory written by train.py (holds config.yaml)")
    parser.add_argument("--ckpt", default=None, help="checkpoint to analyse (default: RUN_DIR/last.ckpt)")
    parser.add_argument("--max-points", type=int, default=500,
                        help="at most this many evenly spaced source and target training images (default 500)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR)")
    args = parser.parse_args(argv)
    from engine.trainer import CONFIG_FILE, LAST_CKPT, METRICS

    run_dir = args.run_dir
    if not os.path.isdir(run_dir):
        sys.exit(f"error: run directory {run_dir} not found; pass the folder train.py wrote (train.output_dir, "
                 "default runs/<config name>/seed<seed>)")
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        sys.exit(f"error: {run_dir} has no {CONFIG_FILE}, so it is not a run directory; pass the folder train.py "
                 "wrote (train.output_dir, default runs/<config name>/seed<seed>)")
    if args.max_points < MIN_POINTS:
        sys.exit(f"error: --max-points {args.max_points} is too few for the domain classifier; use at least "
                 f"{MIN_POINTS}")
    import models  # noqa: F401  (fills the model registries)
    from engine.config import ConfigError, load_config
    from engine.registry import SEGMENTERS

    try:
        cfg = load_config(config_path)
    except (ConfigError, KeyError) as err:
        sys.exit(f"error: {err.args[0]}")
    out_dir = args.out or run_dir
    os.makedirs(out_dir, exist_ok=True)
    metrics_path = os.path.join(run_dir, METRICS)
    title = f"{cfg.name} seed {cfg.train.seed}"

    if cfg.model.backbone in SEGMENTERS:
        if not os.path.isfile(metrics_path):
            sys.exit(f"error: {run_dir} has no {METRICS} to plot; train the run (train.py --resume auto) first")
        written = write_curves(metrics_path, out_dir, title)
        print(f"{run_dir}: a segmentation run: t-SNE, the proxy A-distance and the confusion matrix are for "
              f"classification; wrote {written or 'nothing (no numeric records)'}")
        return None

    ckpt = args.ckpt or os.path.join(run_dir, LAST_CKPT)
    if not os.path.isfile(ckpt):
        sys.exit(f"error: checkpoint {ckpt} not found; finish the run (python train.py --config "
                 f"{config_path} --resume auto) or pass --ckpt PATH")
    from datasets.base import DatasetMissingError
    from engine.checkpoint import CheckpointError
    from engine.runtime import DeviceUnavailableError

    try:
        report = analyze_features(cfg, ckpt, args.device, args.max_points, out_dir)
    except (CheckpointError, DeviceUnavailableError, DatasetMissingError, ValueError, KeyError) as err:
        sys.exit(f"error: {err.args[0] if len(err.args) == 1 else err}")
    files = [TSNE_PNG, CONFUSION_PNG]
    if os.path.isfile(metrics_path) and write_curves(metrics_path, out_dir, title):
        files.insert(1, CURVES_PNG)
    report = {"run": cfg.name, "seed": cfg.train.seed, "ckpt": os.path.abspath(ckpt), **report, "files": files}
    with open(os.path.join(out_dir, ANALYSIS_FILE), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    print(f"{cfg.name} seed {cfg.train.seed} @ iter {report['iter']}: proxy A-distance "
          f"{report['proxy_a_distance']:.3f} (domain classifier error {report['domain_classifier_error']:.3f}, "
          f"{report['n_source']} source vs {report['n_target']} target features), target test accuracy "
          f"{100 * report['target_test_acc']:.2f}%; wrote {', '.join(files)} and {ANALYSIS_FILE} to {out_dir}")
    return report


if __name__ == "__main__":
    main()
