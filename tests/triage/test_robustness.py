"""Simulated acquisition changes and the AUROC under them."""

from __future__ import annotations

import numpy as np
import pytest

from medenhance.triage.metrics import auroc
from medenhance.triage.robustness import SHIFTS, shift_frame, shifted_aurocs


def test_shifts_change_frames_as_named() -> None:
    ramp = np.tile(np.linspace(0, 1, 130)[1:-1], (128, 1)).astype(np.float32)
    np.testing.assert_allclose(shift_frame(ramp, "gamma 0.6"), ramp ** 0.6, atol=1e-6)
    np.testing.assert_allclose(shift_frame(ramp, "contrast 0.7"), (ramp - 0.5) * 0.7 + 0.5,
                               atol=1e-6)
    for factor in (1.15, 1.3):
        zoomed = shift_frame(ramp, f"zoom {factor}")
        assert zoomed.shape == ramp.shape
        # The centre stays put and the ramp is flatter by the zoom factor.
        slope = np.diff(zoomed[64, 32:96]).mean() / np.diff(ramp[64, 32:96]).mean()
        assert slope == pytest.approx(1 / factor, rel=0.03)
        assert zoomed[64, 63:65].mean() == pytest.approx(ramp[64, 63:65].mean(), abs=0.01)
    grey = np.full((128, 128), 0.5, np.float32)
    noisy = shift_frame(grey, "noise 0.03", seed=3)
    assert noisy.std() == pytest.approx(0.03, rel=0.05)
    assert not np.array_equal(noisy, shift_frame(grey, "noise 0.03", seed=4))
    blocks = np.kron(np.random.default_rng(0).random((64, 64)), np.ones((2, 2))).astype(np.float32)
    half = shift_frame(blocks, "half resolution")
    assert half.mean() == pytest.approx(blocks.mean(), abs=0.01)
    assert np.abs(np.diff(half)).mean() < np.abs(np.diff(blocks)).mean()
    assert np.abs(np.diff(shift_frame(blocks, "blur 1 px"))).mean() < np.abs(np.diff(blocks)).mean()


def test_one_class_changes_expose_an_acquisition_shortcut() -> None:
    # Abnormal frames are brighter; a score of mean brightness ranks them perfectly, until the
    # normal frames alone are brightened (gamma 0.6) or the abnormal alone darkened (gamma 1.6).
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    frames = (0.3 + 0.1 * labels[:, None, None] + 0.05 * rng.random((40, 16, 16))
              ).astype(np.float32)
    result = shifted_aurocs(lambda f: f.mean((1, 2)), frames, labels,
                            shifts=["gamma 0.6", "gamma 1.6"])
    assert result["clean"] == 1.0
    row = result["shifts"]["gamma 0.6"]
    assert row["all"] == 1.0 and row["abnormal_only"] == 1.0 and row["normal_only"] < 0.1
    assert result["shifts"]["gamma 1.6"]["abnormal_only"] < 0.1
    brighter = np.stack([shift_frame(f, "gamma 0.6") for f in frames]).mean((1, 2))
    clean = frames.mean((1, 2))
    assert row["normal_only"] == pytest.approx(auroc(labels, np.where(labels == 0, brighter,
                                                                      clean)))
    assert result["robust_auroc"] == pytest.approx(
        np.mean([v for r in result["shifts"].values() for v in r.values()]))
    assert set(SHIFTS) >= {"gamma 0.6", "zoom 1.3", "noise 0.03"}
