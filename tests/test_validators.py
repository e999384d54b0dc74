"""engine/validators.py against independent references (loops, scipy, eigenvalues) and cases with known answers."""
import math

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy

from engine import validators as V


def random_probs(n=37, k=5, seed=0, sharpness=3.0):
    rng = np.random.default_rng(seed)
    return softmax(sharpness * rng.normal(size=(n, k)), axis=1)


def one_hot(labels, k):
    return np.eye(k)[np.asarray(labels)]


# ---- entropy / info_max / bnm ----

def test_entropy_matches_scipy_per_row():
    probs = random_probs()
    reference = -np.mean([scipy_entropy(row) for row in probs])
    assert V.entropy(probs) == pytest.approx(reference, rel=1e-10)


def test_entropy_one_hot_is_zero_and_uniform_is_minus_log_k():
    assert V.entropy(one_hot([0, 3, 1, 1], 4)) == 0.0
    assert V.entropy(np.full((6, 4), 0.25)) == pytest.approx(-math.log(4))


def test_info_max_matches_scipy():
    probs = random_probs(seed=1)
    reference = scipy_entropy(probs.sum(axis=0)) - np.mean([scipy_entropy(row) for row in probs])
    assert V.info_max(probs) == pytest.approx(reference, rel=1e-10)


def test_info_max_uniform_is_zero_and_balanced_one_hot_is_log_k():
    assert V.info_max(np.full((9, 3), 1 / 3)) == pytest.approx(0.0, abs=1e-12)
    assert V.info_max(one_hot([0, 1, 2] * 4, 3)) == pytest.approx(math.log(3))
    # confident but collapsed onto one class: no diversity, score 0
    assert V.info_max(one_hot([2] * 5, 3)) == pytest.approx(0.0, abs=1e-12)


def test_bnm_matches_eigenvalues_of_gram_matrix():
    probs = random_probs(n=23, k=6, seed=2)
    singular = np.sqrt(np.clip(np.linalg.eigvalsh(probs.T @ probs), 0, None))   # not an SVD
    assert V.bnm(probs) == pytest.approx(singular.sum() / 23, rel=1e-8)


def test_bnm_balanced_one_hot():
    # m samples per class: P^T P = m I, K singular values sqrt(m): K sqrt(m) / (K m) = 1 / sqrt(m)
    m, k = 4, 5
    assert V.bnm(one_hot(np.repeat(np.arange(k), m), k)) == pytest.approx(1 / math.sqrt(m))
    # everything on one class: rank one, singular value sqrt(N): 1 / sqrt(N), smaller (less diverse)
    assert V.bnm(one_hot([1] * 20, k)) == pytest.approx(1 / math.sqrt(20))


# ---- snd ----

def snd_loops(probs, tau):
    n = len(probs)
    f = [p / np.linalg.norm(p) for p in probs]
    total = 0.0
    for i in range(n):
        logits = np.array([f[i] @ f[j] / tau for j in range(n) if j != i])
        total += scipy_entropy(softmax(logits))
    return total / n


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_snd_matches_loops(tau):
    probs = random_probs(n=15, k=4, seed=3)
    assert V.snd(probs, tau=tau) == pytest.approx(snd_loops(probs, tau), rel=1e-9)


def test_snd_row_blocks_do_not_change_the_score():
    probs = random_probs(n=30, k=4, seed=4)
    assert V.snd(probs, block=7) == pytest.approx(V.snd(probs), rel=1e-12)


def test_snd_matches_the_authors_formula_within_their_epsilon():
    # SND authors' neighbor_density: diagonal filled with -1/T (not removed) and log(P + 1e-5)
    probs, tau = random_probs(n=40, k=5, seed=5), 0.05
    f = probs / np.linalg.norm(probs, axis=1, keepdims=True)
    mat = f @ f.T / tau
    np.fill_diagonal(mat, -1 / tau)
    p = softmax(mat, axis=1)
    official = np.mean(-np.sum(p * np.log(p + 1e-5), axis=1))
    assert abs(V.snd(probs, tau) - official) <= 40 * 1e-5


def test_snd_known_answers():
    # identical predictions: every other sample is an equally close neighbour -> log(N - 1)
    assert V.snd(np.tile([0.7, 0.2, 0.1], (8, 1))) == pytest.approx(math.log(7))
    # two one-hot clusters of a and b samples: a sample of A sees a-1 neighbours at e^(1/tau) and b at e^0
    a, b, tau = 5, 3, 0.05
    probs = one_hot([0] * a + [1] * b, 2)

    def h(same, other):
        z = same * math.exp(1 / tau) + other
        ps = [math.exp(1 / tau) / z] * same + [1 / z] * other
        return -sum(p * math.log(p) for p in ps)

    assert V.snd(probs, tau) == pytest.approx((a * h(a - 1, b) + b * h(b - 1, a)) / (a + b), rel=1e-9)


# ---- source accuracy / ensemble agreement ----

def test_source_accuracy():
    probs = one_hot([0, 1, 2, 2], 3) * 0.8 + 0.2 / 3
    assert V.source_accuracy(probs, [0, 1, 1, 2]) == 0.75


def test_ens_agreement_hand_built():
    a = one_hot([0, 0, 1, 1], 2) * 0.9 + 0.05           # argmax 0 0 1 1
    b = one_hot([0, 1, 1, 1], 2) * 0.9 + 0.05           # argmax 0 1 1 1
    c = np.array([[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])   # argmax 0 0 1 0
    # mean: sample 0 -> 0; 1 -> (0.95 + 0.05 + 0.6) / 3 vs (0.05 + 0.95 + 0.4) / 3 -> 0;
    #       2 -> 1; 3 -> (0.05 + 0.05 + 0.6) vs (0.95 + 0.95 + 0.4) -> 1.  Ensemble 0 0 1 1
    np.testing.assert_allclose(V.ens_agreement([a, b, c]), [1.0, 0.75, 0.75])
    np.testing.assert_allclose(V.ens_agreement(np.stack([a, b, c])), [1.0, 0.75, 0.75])


def test_ens_agreement_reads_npy_memmaps(tmp_path):
    cands = [random_probs(n=12, k=3, seed=s) for s in range(4)]
    paths = []
    for i, probs in enumerate(cands):
        paths.append(tmp_path / f"p{i}.npy")
        np.save(paths[-1], probs.astype(np.float32))
    ensemble = np.mean(cands, axis=0).argmax(axis=1)
    expected = [sum(int(np.argmax(p[i]) == ensemble[i]) for i in range(12)) / 12 for p in cands]
    np.testing.assert_allclose(V.ens_agreement(np.load(p, mmap_mode="r") for p in paths), expected)


def test_ens_agreement_rejects_mismatched_candidates():
    with pytest.raises(ValueError, match="candidate 1 probs have shape"):
        V.ens_agreement([random_probs(n=5), random_probs(n=6)])


# ---- DEV ----

def dev_risk_loops(w, loss):
    n = len(w)
    wl = [w[i] * loss[i] for i in range(n)]
    mean_w, mean_wl = sum(w) / n, sum(wl) / n
    cov = sum((wl[i] - mean_wl) * (w[i] - mean_w) for i in range(n)) / (n - 1)
    var = sum((w[i] - mean_w) ** 2 for i in range(n)) / (n - 1)
    eta = -cov / var
    return mean_wl + eta * mean_w - eta


def test_dev_risk_matches_loops():
    rng = np.random.default_rng(6)
    w, loss = rng.gamma(2.0, 0.5, size=50), rng.exponential(size=50)
    assert V.dev_risk(w, loss) == pytest.approx(dev_risk_loops(w, loss), rel=1e-10)


def test_dev_risk_constant_weights_is_the_mean_loss():
    loss = np.array([0.1, 0.5, 2.0, 0.3])
    assert V.dev_risk(np.full(4, 1.3), loss) == pytest.approx(loss.mean())


def gaussian_domains(shift, n_train=600, n_target=400, n_val=400, seed=0):
    rng = np.random.default_rng(seed)
    source_train = rng.normal(size=(n_train, 2))
    source_val = rng.normal(size=(n_val, 2))
    target = rng.normal(size=(n_target, 2)) + [shift, 0.0]
    return source_val, source_train, target


def sigmoid_loss(x):
    return 1.0 / (1.0 + np.exp(-2.0 * x[:, 0]))


def test_dev_identical_domains_is_the_mean_source_loss():
    source_val, source_train, target = gaussian_domains(shift=0.0)   # 600 source-train vs 400 target
    weights = V.dev_weights(source_val, source_train, target)
    assert weights.mean() == pytest.approx(1.0, abs=0.05)   # N_s / N_t undoes the 600:400 class prior
    loss = sigmoid_loss(source_val)
    assert -V.dev(source_val, loss, source_train, target) == pytest.approx(loss.mean(), abs=0.03)


def test_dev_weights_estimate_the_gaussian_density_ratio():
    # N(shift, 1) vs N(0, 1) along x0: p_t / p_s = exp(shift x0 - shift^2 / 2), which logistic regression can fit
    shift = 1.0
    source_val, source_train, target = gaussian_domains(shift, n_train=2000, n_target=2000)
    weights = V.dev_weights(source_val, source_train, target)
    true = np.exp(shift * source_val[:, 0] - shift ** 2 / 2)
    assert np.corrcoef(np.log(weights), np.log(true))[0, 1] > 0.98
    assert np.median(weights / true) == pytest.approx(1.0, abs=0.25)


def test_dev_upweights_target_like_source_samples():
    # the loss grows with target-likeness, so the target risk exceeds the plain source mean
    shift = 1.0
    source_val, source_train, target = gaussian_domains(shift, n_train=2000, n_target=2000, seed=1)
    risk = -V.dev(source_val, sigmoid_loss(source_val), source_train, target)
    plain, true_target = sigmoid_loss(source_val).mean(), sigmoid_loss(target).mean()
    assert plain < true_target - 0.15                  # the case is not trivial
    assert risk > plain + 0.1                          # moved the right way ...
    assert risk == pytest.approx(true_target, abs=0.06)   # ... close to the true target risk


def test_dev_is_deterministic():
    source_val, source_train, target = gaussian_domains(shift=0.7, seed=2)
    loss = source_val[:, 1] ** 2
    assert V.dev(source_val, loss, source_train, target) == V.dev(source_val, loss, source_train, target)


# ---- registry ----

def test_score_online_matches_the_functions():
    rng = np.random.default_rng(7)
    probs = random_probs(n=20, k=3, seed=8)
    source_val = {"probs": random_probs(n=10, k=3, seed=9), "labels": rng.integers(0, 3, size=10),
                  "features": rng.normal(size=(10, 4)), "losses": rng.exponential(size=10)}
    train_feats, target_feats = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)) + 0.5
    scores = V.score_online(V.ONLINE, probs, source_val, train_feats, target_feats)
    assert set(scores) == set(V.ONLINE)
    assert scores["entropy"] == V.entropy(probs) and scores["snd"] == V.snd(probs)
    assert scores["source_acc"] == V.source_accuracy(source_val["probs"], source_val["labels"])
    assert scores["dev"] == V.dev(source_val["features"], source_val["losses"], train_feats, target_feats)
    assert V.score_online(["bnm"], probs) == {"bnm": V.bnm(probs)}


@pytest.mark.parametrize("name", ["source_acc", "dev"])
def test_score_online_needs_source_val(name):
    with pytest.raises(ValueError, match=f"'{name}' needs held-out labelled source data: set data.source_val_fraction > 0"):
        V.score_online([name], random_probs())


def test_check_names():
    V.check_names(V.ONLINE)
    with pytest.raises(ValueError, match=r"unknown validator 'infomax' \(did you mean 'info_max'\?\)") as err:
        V.check_names(["entropy", "infomax"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="compares all candidates after training"):
        V.check_names(["ens_agreement"])
    V.check_names(["ens_agreement"], valid=V.ALL)


def test_dev_too_few_samples_is_a_clear_error():
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match=r"dev: target_features must be an N x D array with N >= 5, got shape \(3, 2\)"):
        V.dev(rng.normal(size=(4, 2)), np.ones(4), rng.normal(size=(9, 2)), rng.normal(size=(3, 2)))


def test_bad_probs_are_one_line_errors():
    with pytest.raises(ValueError, match=r"N x K array .* shape \(5,\)"):
        V.entropy(np.ones(5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        V.bnm(np.array([[0.5, np.nan]]))


def test_validators_do_not_import_mindspore():
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "import sys, engine.validators; sys.exit(int('mindspore' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
