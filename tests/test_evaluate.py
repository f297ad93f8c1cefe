"""Pairing by name, metrics on the reference scale, confidence intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

import medenhance as me
from medenhance.errors import DatasetError, InvalidImageError
from medenhance.evaluate import compare, evaluate_folders, mean_ci, summarize


def test_mean_ci_matches_scipy() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    mean, lo, hi = mean_ci(values)
    ref = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert (lo, hi) == pytest.approx(ref)
    assert mean == 3.5
    assert np.isnan(mean_ci([5.0])[1])


def test_summary_intervals_stay_within_what_a_metric_can_take() -> None:
    rows = [{"method": "m", "ssim": 0.99, "rmse": 0.001, "psnr": 40.0},
            {"method": "m", "ssim": 0.50, "rmse": 0.200, "psnr": 20.0}]
    (row,) = summarize(rows, ["ssim", "rmse", "psnr"])
    t = stats.t.interval(0.95, 1, loc=30.0, scale=stats.sem([40.0, 20.0]))
    assert row["ssim_ci_high"] == 1.0 and row["rmse_ci_low"] == 0.0
    assert row["ssim_ci_low"] == -1.0 and mean_ci([0.99, 0.50])[1] < -1.0
    assert (row["psnr_ci_low"], row["psnr_ci_high"]) == pytest.approx(t)    # no bound: as is
    (one,) = summarize(rows[:1], ["ssim"])
    assert np.isnan(one["ssim_ci_low"]) and np.isnan(one["ssim_ci_high"])


def test_compare_uses_reference_scale(tmp_path: Path) -> None:
    ref = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    shifted = (ref + 20).astype(np.uint16)  # a different min/max window when read
    Image.fromarray(shifted).save(tmp_path / "test.png")
    out = compare(me.read_image(tmp_path / "ref.png"), me.read_image(tmp_path / "test.png"))
    # error of 20 stored units on a reference span of 2000: PSNR = 20 log10(2000 / 20) = 40 dB
    assert out["psnr"] == pytest.approx(40.0, abs=1e-6)
    assert out["mae"] == pytest.approx(0.01, abs=1e-6)


def test_folders_pair_by_name_and_report_problems(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for d in ("ref", "a"):
        (tmp_path / d).mkdir()
    for i in range(3):
        img = rng.integers(0, 256, (32, 32), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / "ref" / f"{i}.png")
        if i < 2:
            Image.fromarray(np.clip(img.astype(int) + 10, 0, 255).astype(np.uint8)).save(
                tmp_path / "a" / f"{i}.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a" / "2.png")
    result = evaluate_folders(tmp_path / "ref", {"a": tmp_path / "a"})
    assert [r["image"] for r in result.rows] == ["0", "1"]
    assert len(result.failures) == 1 and "differs" in result.failures[0]
    summary = summarize(result.rows, result.metrics)
    assert summary[0]["n"] == 2 and np.isnan(summary[0]["ms_ssim"])


def test_no_common_names(tmp_path: Path) -> None:
    for d, name in (("ref", "x.png"), ("a", "y.png")):
        (tmp_path / d).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / d / name)
    with pytest.raises(DatasetError, match="no file names in common"):
        evaluate_folders(tmp_path / "ref", {"a": tmp_path / "a"})


def test_shape_mismatch_is_an_error() -> None:
    a = me.from_array(np.zeros((8, 8), np.uint8))
    b = me.from_array(np.zeros((8, 9), np.uint8))
    with pytest.raises(InvalidImageError, match="differs"):
        compare(a, b)


def test_files_that_share_a_name_are_not_paired_silently(tmp_path: Path) -> None:
    from medenhance.evaluate import pair_by_name

    for d in ("ref", "a"):
        (tmp_path / d).mkdir()
        for name in ("b", "c"):
            Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / d / f"{name}.png")
    np.save(tmp_path / "a" / "b.npy", np.zeros((8, 8), np.float32))
    pairs, problems = pair_by_name(tmp_path / "ref", tmp_path / "a")
    assert [p.name for p in pairs] == ["c"]
    assert any("2 files of this name" in p and "b.npy" in p for p in problems)


def test_report_loss_panel_takes_a_negative_loss(tmp_path: Path, caplog) -> None:
    """The PSNR loss is negative: on a log axis the panel came out blank, with a warning."""
    import warnings

    from medenhance.report import curves_figure

    histories = {"psnr-loss": [{"epoch": e, "train_loss": -38.0 - e, "val_psnr": 38.0 + e}
                               for e in (1, 2, 3)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves_figure(histories, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "log-scaled" not in caplog.text
    # Beside an L1 loss of 0.02 on one axis both were flat lines: a panel each.
    histories["l1"] = [{"epoch": e, "train_loss": 0.03 - 0.001 * e, "val_psnr": 37.0 + e}
                       for e in (1, 2, 3)]
    two = curves_figure(histories, tmp_path / "two.png", {"psnr-loss": {"psnr": 1.0},
                                                          "l1": {"l1": 1.0}})
    same = curves_figure(histories, tmp_path / "one.png", {"psnr-loss": {"l1": 1.0},
                                                           "l1": {"l1": 1.0}})
    assert (two, same) == (2, 1)


def test_files_stored_on_another_scale_are_refused_not_scored(tmp_path: Path) -> None:
    """An 8-bit copy of a 16-bit reference scored 4.9 dB and a .npy on [0, 1] beside it 4.8 dB,
    as if measured; a flat output of the reference's own type is still scored (badly)."""
    rng = np.random.default_rng(0)
    picture = (rng.random((64, 64)) * 60000 + 2000).astype(np.uint16)
    for folder in ("ref", "u8", "npy", "flat"):
        (tmp_path / folder).mkdir()
    me.write_image(me.from_array(picture), tmp_path / "ref" / "a.png")
    me.write_image(me.from_array((picture // 257).astype(np.uint8)), tmp_path / "u8" / "a.png")
    np.save(tmp_path / "npy" / "a.npy", (picture / 65535.0).astype(np.float32))
    flat = np.full_like(picture, 30000)
    flat[0, 0], flat[-1, -1] = 2000, 62000        # its window is the reference's
    me.write_image(me.from_array(flat), tmp_path / "flat" / "a.png")
    result = evaluate_folders(tmp_path / "ref", {m: tmp_path / m for m in ("u8", "npy", "flat")},
                              metrics=["psnr"])
    assert [r["method"] for r in result.rows] == ["flat"] and result.rows[0]["psnr"] < 12
    assert len(result.failures) == 2
    assert all("are not on the scale of the reference" in f for f in result.failures)
