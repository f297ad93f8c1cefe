"""Triage metrics against reference statistics (Mann-Whitney U) and hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from medenhance.triage.metrics import (auprc, auroc, bootstrap_ci, fit_temperature, roc_curve,
                                       sens_spec, threshold_for_sensitivity, worklist_waits)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(300) < 0.4).astype(int)
    s = np.round(rng.normal(y * 1.2, 1.0), 1)  # rounding makes ties
    return y, s


def test_auroc_equals_mann_whitney() -> None:
    y, s = _data()
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert auroc(y, s) == pytest.approx(u / (y.sum() * (1 - y).sum()), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, s), abs=1e-9)


def test_auprc_hand_cases() -> None:
    assert auprc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    assert auprc([1, 1, 0], [3, 2, 1]) == 1.0
    assert np.isnan(auprc([0, 0], [1, 2]))


def test_threshold_reaches_sensitivity() -> None:
    y, s = _data(1)
    for target in (0.8, 0.95, 1.0):
        t = threshold_for_sensitivity(y, s, target)
        sens, spec = sens_spec(y, s, t)
        assert sens >= target
        assert sens_spec(y, s, np.nextafter(t, np.inf))[0] < target or t == s[y == 1].max()


def test_bootstrap_ci_covers_the_estimate() -> None:
    y, s = _data(2)
    lo, hi = bootstrap_ci(y, s, auroc, n=300)
    assert lo < auroc(y, s) < hi and hi - lo < 0.2


def test_temperature_recovers_a_known_scale() -> None:
    rng = np.random.default_rng(3)
    true_logit = rng.normal(0, 2, 20000)
    y = (rng.random(true_logit.size) < 1 / (1 + np.exp(-true_logit))).astype(int)
    assert fit_temperature(true_logit * 3.0, y) == pytest.approx(3.0, rel=0.08)


def test_worklist_perfect_scores_read_abnormal_first() -> None:
    y = np.array([0] * 20 + [1] * 5)
    w = worklist_waits(y, y.astype(float), minutes_per_study=5)
    assert w.triage_mean == pytest.approx(np.mean(np.arange(5) * 5))
    assert w.arrival_mean > w.triage_mean
    # Arrival order is random: on average a study waits for half of the others.
    assert w.arrival_mean == pytest.approx((y.size - 1) / 2 * 5, rel=0.05)
    # A score that tells nothing (all equal) reads in arrival order, whatever order the
    # studies were listed in (abnormal ones first, as label folders sorted may list them).
    flat = worklist_waits(y[::-1], np.zeros(y.size), minutes_per_study=5)
    assert flat.triage_mean == pytest.approx(flat.arrival_mean)
    assert flat.triage_mean == pytest.approx((y.size - 1) / 2 * 5, rel=0.05)


def test_nt_xent_matches_its_definition() -> None:
    import torch
    import torch.nn.functional as F

    from medenhance.triage.train import nt_xent

    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    u = F.normalize(z, dim=1)
    expected = 0.0
    for i in range(6):
        j = (i + 3) % 6
        others = [k for k in range(6) if k != i]
        logits = torch.stack([u[i] @ u[k] / 0.2 for k in others])
        expected += -(u[i] @ u[j] / 0.2 - torch.logsumexp(logits, 0))
    torch.testing.assert_close(nt_xent(z), expected / 6)
    # Identical pairs far from every other row: the loss is near 0.
    basis = torch.eye(3) * 10
    assert float(nt_xent(torch.cat([basis, basis]), temperature=0.05)) < 1e-6


def test_temperature_of_uninformative_logits_is_at_the_limit_training_warns_about() -> None:
    """Logits unrelated to the labels are best calibrated by flattening them completely: the
    search ends at its upper bound, where `train-triage` warns that the scores all lie close to
    one value."""
    from medenhance.triage.metrics import LOG_TEMPERATURE_BOUNDS, fit_temperature
    from medenhance.triage.train import temperature_warning

    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 50)
    logits = np.where(rng.random(100) < 0.5, 3.0, -3.0)
    uninformative = fit_temperature(logits, labels)
    assert np.log(uninformative) > LOG_TEMPERATURE_BOUNDS[1] - 0.01
    assert "upper limit" in (temperature_warning(uninformative) or "")
    # Logits that hardly vary but separate the classes: the temperature goes to its lower limit.
    tiny = fit_temperature(np.where(labels == 1, 1e-4, -1e-4), labels)
    assert "lower limit" in (temperature_warning(tiny) or "") and "pushed to 0 and 1" in (
        temperature_warning(tiny) or "")
    informative = fit_temperature(np.where(labels == 1, 2.0, -2.0) + rng.normal(0, 1, 100),
                                  labels)
    assert abs(np.log(informative)) < 2
    assert temperature_warning(informative) is None


def test_proportions_get_wilson_intervals_that_do_not_collapse() -> None:
    """9 of 9 abnormal flagged gave the bootstrap interval [1.000, 1.000]."""
    from medenhance.triage.metrics import wilson_ci

    assert wilson_ci(9, 9) == pytest.approx((0.7009, 1.0), abs=1e-4)
    # Newcombe (1998), example (c): 81 of 263, Wilson interval 0.2553 to 0.3662.
    assert wilson_ci(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert np.isnan(wilson_ci(0, 0)).all()
