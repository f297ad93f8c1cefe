"""Scores -> decisions: ROC/PR areas, operating points, bootstrap and Wilson CIs, calibration,
worklists.

Conventions: ``labels`` are 1 for abnormal and 0 for normal; ``scores`` are higher for "more likely
abnormal". All functions are plain NumPy so they can be checked against reference implementations
(AUROC equals the Mann-Whitney U statistic / (n_pos n_neg)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.optimize import minimize_scalar

from ..errors import InvalidImageError


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InvalidImageError(f"{y.size} labels but {s.size} scores")
    if not set(np.unique(y)) <= {0, 1}:
        raise InvalidImageError("labels must be 0 (normal) or 1 (abnormal)")
    return y, s


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, ties counted half (NaN unless both classes are present)."""
    y, s = _check(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step interpolation)."""
    y, s = _check(labels, scores)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    # Evaluate only where the score changes, so tied scores form one threshold.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], y.size - 1]
    tp = np.cumsum(y_sorted)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds (``score >= t`` is positive)."""
    y, s = _check(labels, scores)
    thresholds = np.r_[np.inf, np.unique(s)[::-1]]
    tpr = np.array([(s[y == 1] >= t).mean() if y.sum() else np.nan for t in thresholds])
    fpr = np.array([(s[y == 0] >= t).mean() if (1 - y).sum() else np.nan for t in thresholds])
    return fpr, tpr, thresholds


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray,
                              sensitivity: float = 0.95) -> float:
    """The highest threshold whose sensitivity (``score >= t``) reaches ``sensitivity``."""
    y, s = _check(labels, scores)
    positives = np.sort(s[y == 1])[::-1]
    if positives.size == 0:
        raise InvalidImageError("no abnormal case to choose a threshold on")
    k = int(np.ceil(sensitivity * positives.size)) - 1
    return float(positives[min(max(k, 0), positives.size - 1)])


def sens_spec(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    y, s = _check(labels, scores)
    flag = s >= threshold
    sens = float(flag[y == 1].mean()) if y.sum() else float("nan")
    spec = float((~flag[y == 0]).mean()) if (1 - y).sum() else float("nan")
    return sens, spec


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray,
                 statistic: Callable[[np.ndarray, np.ndarray], float], *, n: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI, resampling normal and abnormal cases separately (stratified)."""
    y, s = _check(labels, scores)
    rng = np.random.default_rng(seed)
    pos, neg = np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]
    values = []
    for _ in range(n):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        values.append(statistic(y[idx], s[idx]))
    lo, hi = np.nanpercentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (sensitivity, specificity,
    accuracy at a fixed threshold), by SciPy. Unlike a bootstrap, it does not collapse to one
    point when every case was right (9 of 9 abnormal flagged gave "1.000 [1.000, 1.000]")."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


#: The natural logarithms of the temperatures :func:`fit_temperature` searches between.
LOG_TEMPERATURE_BOUNDS = (-5.0, 5.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature ``T`` minimising the log loss of ``sigmoid(logit / T)`` (Guo et al. 2017)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        p = 1.0 / (1.0 + np.exp(-z / np.exp(log_t)))
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    return float(np.exp(minimize_scalar(nll, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded").x))


@dataclass
class WaitingTimes:
    """Minutes abnormal studies wait before being read, in arrival and in score order."""

    arrival_mean: float
    arrival_p90: float
    triage_mean: float
    triage_p90: float


#: Random arrival orders the waiting times are averaged over.
ARRIVAL_ORDERS = 200


def worklist_waits(labels: np.ndarray, scores: np.ndarray, *, minutes_per_study: float = 5.0,
                   seed: int = 0, orders: int = ARRIVAL_ORDERS) -> WaitingTimes:
    """Waiting time of abnormal studies (mean and 90th percentile) when a batch is read in
    arrival order vs by score.

    Studies arrive mixed: the arrival order is random, and the waits are averaged over
    ``orders`` seeded random permutations (one permutation of a small batch can put the
    abnormal studies first by chance). Studies of equal score are read in arrival order, so
    ties are broken at random too, not by the order of the label folders. The wait of a study
    is the number of studies read before it times ``minutes_per_study``.
    """
    y, s = _check(labels, scores)
    rng = np.random.default_rng(seed)

    def waits(order: np.ndarray) -> np.ndarray:
        position = np.empty(y.size)
        position[order] = np.arange(y.size)
        return position[y == 1] * minutes_per_study

    sums = np.zeros(4)
    for _ in range(orders):
        arrival = rng.permutation(y.size)
        by_score = arrival[np.argsort(-s[arrival], kind="stable")]
        a, t = waits(arrival), waits(by_score)
        sums += [a.mean(), np.percentile(a, 90), t.mean(), np.percentile(t, 90)]
    return WaitingTimes(*(float(v) for v in sums / orders))
