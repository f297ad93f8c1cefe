"""Composition, seeding, JSON replay and identity at zero strength of every degradation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medenhance import from_array
from medenhance.degrade import (PRESETS, DegradationRecord, Pipeline, apply_record, blur,
                                degrade_image, downsample, jpeg, mri_motion, scatter,
                                xray_motion_blur)
from medenhance.errors import DegradationError

from ..conftest import SAMPLES

IMAGE = np.random.default_rng(0).uniform(0.1, 0.9, (64, 80))


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_deterministic_and_replayable(name: str) -> None:
    pipe = Pipeline.from_preset(name)
    a, rec_a = pipe(IMAGE, seed=11)
    b, _ = pipe(IMAGE, seed=11)
    c, _ = pipe(IMAGE, seed=12)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) or a.shape != IMAGE.shape
    replayed = apply_record(IMAGE, DegradationRecord.from_json(rec_a.to_json()))
    assert replayed.tobytes() == a.tobytes()


def test_composition_and_probability() -> None:
    pipe = Pipeline([{"op": "blur", "params": {"sigma": 1.0}},
                     {"op": "gaussian", "params": {"sigma": {"uniform": [0.01, 0.02]}}, "p": 0.5}])
    applied = [len(pipe.sample(seed).steps) for seed in range(200)]
    assert set(applied) == {1, 2}
    assert 70 < applied.count(2) < 130
    rec = pipe.sample(3)
    assert rec.steps[0].op == "blur" and rec.seed == 3


def test_zero_strength_is_identity() -> None:
    rng = np.random.default_rng(0)
    for func, kwargs in [(blur, {"sigma": 0}), (downsample, {"scale": 1}),
                         (mri_motion, {"max_shift": 0}), (xray_motion_blur, {"length": 0}),
                         (scatter, {"fraction": 0})]:
        np.testing.assert_allclose(func(IMAGE, **kwargs, rng=rng), IMAGE, atol=1e-12,
                                   err_msg=func.__name__)


def test_mri_motion_ghosts_preserve_energy() -> None:
    y = mri_motion(IMAGE, max_shift=5, n_movements=3, rng=np.random.default_rng(1))
    assert not np.allclose(y, IMAGE)
    # A translation only changes phases: total k-space energy is kept (Parseval) up to |.|.
    assert np.sum(y**2) <= np.sum(IMAGE**2) * 1.0001


def test_scatter_keeps_flat_regions_and_lowers_contrast() -> None:
    flat = np.full((64, 64), 0.4)
    np.testing.assert_allclose(scatter(flat, fraction=0.3), flat)
    edge = np.zeros((64, 64))
    edge[:, 32:] = 1.0
    hazy = scatter(edge, fraction=0.3, sigma=40)
    assert hazy[:, 40:].mean() - hazy[:, :24].mean() < 0.85


def test_jpeg_quality_orders_error() -> None:
    x = np.asarray(Image.open(SAMPLES / "mri_brain_glioma_Te-gl_0063.png"), np.float64) / 255
    low, high = jpeg(x, quality=20), jpeg(x, quality=90)
    assert np.abs(low - x).mean() > 2 * np.abs(high - x).mean() > 0


def test_motion_blur_kernel_sums_to_one() -> None:
    flat = np.full((32, 32), 0.3)
    np.testing.assert_allclose(xray_motion_blur(flat, length=7, angle=33), flat, atol=1e-12)


def test_degrade_image_records_history() -> None:
    image = from_array(IMAGE.astype(np.float32))
    out, record = degrade_image(image, Pipeline.from_preset("gaussian-25"), seed=5)
    assert out.meta.history == [record.describe()]
    assert "gaussian(sigma=0.09804)" in record.describe()
    with pytest.raises(DegradationError, match="explicit seed"):
        degrade_image(image, Pipeline.from_preset("gaussian-25"))


@pytest.mark.parametrize("steps,match", [
    ([{"op": "nope"}], "unknown degradation 'nope'"),
    ([{"op": "gaussian", "params": {"sigmaa": 1}}], "unknown parameter"),
    ([{"op": "gaussian", "params": {"sigma": {"uniform": [2, 1]}}}], "empty"),
    ([], "at least one step"),
    ([{"op": "gaussian", "sigma": 0.1}], "go under params"),
    ([{"op": "gaussian"}], r"missing parameter\(s\) \['sigma'\]"),
    ([{"op": "gaussian", "params": {"sigma": {"uniform": [0.05, "x"]}}}], "two numbers"),
    ([{"op": "gaussian", "params": {"sigma": {"choice": []}}}], "list of values"),
    ([{"op": "gaussian", "params": {"sigma": -5}}],
     r"step 0 \(gaussian\): sigma must be \[0.0, 1.0\], got -5"),
    # A sigma in grey levels of 255 made half the image black and half white without a word.
    ([{"op": "gaussian", "params": {"sigma": 30}}], r"got 30 \(on the image's \[0, 1\] scale"),
    ([{"op": "rician", "params": {"sigma": {"uniform": [20, 30]}}}], r"rician\): sigma must be"),
    ([{"op": "gaussian", "params": {"sigma": 0.1}}, {"op": "jpeg", "params": {"quality": 500}}],
     r"^step 1 \(jpeg\): quality must be"),
])
def test_bad_pipelines(steps, match) -> None:
    # Refused when the pipeline is made, not on every image it is applied to.
    with pytest.raises(DegradationError, match=match):
        Pipeline(steps)


def test_a_choice_may_be_any_sequence() -> None:
    record = Pipeline([{"op": "jpeg", "params": {"quality": {"choice": (30, 50)}}}]).sample(0)
    assert record.steps[0].params["quality"] in (30, 50)


def test_a_bad_pipeline_or_record_file_is_named(tmp_path) -> None:
    pipeline = tmp_path / "p.json"
    pipeline.write_text('[{"op": "gaussian", "params": {"sigma": {"uniform": [0.1, "x"]}}}]')
    with pytest.raises(DegradationError, match=r"p.json: step 0 \(gaussian\)"):
        Pipeline.from_file(pipeline)
    record = tmp_path / "r.json"
    record.write_text("{bad")
    with pytest.raises(DegradationError, match="r.json: not a degradation record"):
        DegradationRecord.load(record)


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(DegradationError, match="gaussian-25"):
        Pipeline.from_preset("foo")


def test_a_step_too_big_for_the_trial_image_is_not_refused() -> None:
    """The trial run on a 64x64 image refused a scale meant for 1024-pixel radiographs."""
    pipe = Pipeline([{"op": "downsample", "params": {"scale": 100}}])
    out, _ = pipe(np.full((400, 300), 0.5), seed=0)
    assert out.shape == (4, 3)
