"""Patient splits of labelled triage folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medenhance as me
from medenhance.errors import ConfigError
from medenhance.triage.data import (CROP_MARGIN, LabelledImages, crop_to_content, model_inputs,
                                    own_range, percentile_range, split_by_patient)


def _images(patients: list[str]) -> LabelledImages:
    n = len(patients)
    return LabelledImages(np.zeros((n, 2, 2), np.float32), np.zeros(n, int),
                          [Path(f"{p}.png") for p in patients], patients, ["x"] * n)


def test_lowest_ids_split_takes_the_lowest_numbers_of_each_series() -> None:
    # Two images of person3; numbers compared as numbers (person10 after person9), and each
    # series (person#, IM-#, NORMAL#-IM-#) gives its own lowest 20 %.
    persons = [f"person{i}" for i in range(1, 11)] + ["person3"]
    ims = [f"IM-{i:04d}" for i in range(100, 200, 10)]
    normal2 = [f"NORMAL2-IM-{i:04d}" for i in range(500, 1500, 100)]
    data = _images(list(reversed(persons + ims + normal2)))
    train, val = split_by_patient(data, 0.2, seed=0, how="lowest-ids")
    held_out = sorted({data.patients[i] for i in val})
    assert held_out == ["IM-0100", "IM-0110", "NORMAL2-IM-0500", "NORMAL2-IM-0600",
                        "person1", "person2"]
    assert not {data.patients[i] for i in train} & set(held_out)
    assert len(train) + len(val) == len(data.patients)
    # The seed plays no part; the random split does depend on it.
    assert np.array_equal(val, split_by_patient(data, 0.2, seed=5, how="lowest-ids")[1])
    assert not np.array_equal(split_by_patient(data, 0.2, 0)[1], split_by_patient(data, 0.2, 5)[1])


def test_random_split_keeps_a_patients_images_together() -> None:
    data = _images([f"p{i // 3}" for i in range(60)])
    train, val = split_by_patient(data, 0.25, seed=1)
    assert len(val) == 15 and not {data.patients[i] for i in train} & {data.patients[i]
                                                                       for i in val}


def test_unknown_val_split_is_a_config_error(tmp_path: Path) -> None:
    from medenhance.triage.train import load_triage_config

    config = tmp_path / "c.yaml"
    config.write_text(f"data: {tmp_path}\nval_split: newest\n")
    with pytest.raises(ConfigError, match="val_split must be random or lowest-ids"):
        load_triage_config(config)


def _disk(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    return np.where(inside, 0.8, 0.05).astype(np.float32)


def _extent(frame: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.nonzero((frame > 0.4).any(axis=1))[0]
    cols = np.nonzero((frame > 0.4).any(axis=0))[0]
    return rows[0], rows[-1], cols[0], cols[-1]


def test_crop_to_content_centres_the_anatomy_and_fills_the_frame() -> None:
    small_off_centre = _disk(128, (40, 80), 20)
    out = crop_to_content(small_off_centre)
    assert out.shape == (128, 128) and out.dtype == np.float32
    top, bottom, left, right = _extent(out)
    # The disk's 41-pixel extent spans the frame less the margin on each side (and less a few
    # pixels: the region is found on the smoothed frame, whose edge reaches a little further).
    largest = 128 / (1 + 2 * CROP_MARGIN) + 1
    assert 0.85 * 128 < bottom - top + 1 < largest
    assert 0.85 * 128 < right - left + 1 < largest
    assert (top + bottom) / 2 == pytest.approx(63.5, abs=1.5)
    assert (left + right) / 2 == pytest.approx(63.5, abs=1.5)
    # The same disk framed at another scale and place gives nearly the same network input
    # (the difference left: the smoothed edge's reach, a pixel or two at either scale).
    large = _disk(128, (66, 60), 50)
    before = np.mean(np.abs(large - small_off_centre))
    assert np.mean(np.abs(crop_to_content(large) - out)) < 0.15 * before


def test_crop_to_content_pads_with_the_background_and_keeps_blank_frames() -> None:
    # A wide body: the square around it leaves the frame above and below.
    wide = np.full((64, 64), 0.1, np.float32)
    wide[24:40, 2:62] = 0.9
    out = crop_to_content(wide)
    np.testing.assert_allclose(out[:2], 0.1, atol=1e-3)    # padding: the background grey
    assert out[32, 32] == pytest.approx(0.9, abs=1e-3)
    blank = np.full((32, 32), 0.3, np.float32)
    np.testing.assert_array_equal(crop_to_content(blank), blank)
    hot_pixel = np.zeros((32, 32), np.float32)
    hot_pixel[5, 7] = 1.0                 # not anatomy: not blown up to fill the frame
    np.testing.assert_array_equal(crop_to_content(hot_pixel), hot_pixel)


def test_model_inputs_crop_before_equalising() -> None:
    frames = np.stack([_disk(64, (20, 40), 10), _disk(64, (32, 32), 28)])
    np.testing.assert_array_equal(model_inputs(frames, {}), frames)
    cropped = model_inputs(frames, {"crop": True})
    np.testing.assert_array_equal(cropped[0], crop_to_content(frames[0]))
    both = model_inputs(frames, {"crop": True, "equalize": True})
    from skimage import exposure
    np.testing.assert_allclose(both[0], exposure.equalize_hist(cropped[0], nbins=1024), atol=1e-6)


def test_a_picture_scores_alike_whatever_its_file(tmp_path: Path, samples: Path) -> None:
    """An 8-bit PNG is read on 0..255 and a 16-bit one on its own range: one radiograph scored
    0.335 and 0.203 and its flag flipped; a slice of a volume took the volume's range."""
    from medenhance.triage.data import model_inputs, triage_frame, triage_frames
    from medenhance.triage.score import TriageScorer

    full = np.asarray(Image.open(samples / "xray_chest_nih_00009128_000.png").convert("L"))
    eight = (full * 0.6 + 40).astype(np.uint8)           # 40..193: not the whole 8-bit range
    Image.fromarray(eight).save(tmp_path / "a8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    wide = eight.astype(np.int16)
    volume = np.stack([wide // 4 + 300, wide])                        # two slices, two ranges
    np.save(tmp_path / "vol.npy", volume)
    raw = np.stack([triage_frame(me.read_image(tmp_path / name), 128)
                    for name in ("a8.png", "a16.png")])
    assert np.abs(raw[0] - raw[1]).max() > 0.05          # as read, the files differ
    own = {"frame_range": "own"}                          # cards of models trained since
    frames = model_inputs(raw, own)
    np.testing.assert_allclose(frames[0], frames[1], atol=1e-6)
    scorer = TriageScorer("xray-triage")
    scorer.info = {**scorer.info, **own}
    by_file = {Path(r.path).name: r.score
               for r in scorer.score_files([tmp_path / "a8.png", tmp_path / "a16.png"])}
    assert by_file["a8.png"] == pytest.approx(by_file["a16.png"], abs=1e-5)
    _, slices = triage_frames(me.read_image(tmp_path / "vol.npy"), 128)
    np.testing.assert_allclose(model_inputs(slices, own)[1], frames[0], atol=1e-6)
    # A card without the setting (trained before it) sees the frames as read, as it was trained.
    np.testing.assert_array_equal(model_inputs(raw, {}), raw)



def test_models_that_crop_keep_a_rectangular_frames_proportions() -> None:
    """A round head in a 100 x 200 matrix stays round for models that crop to the content (it is
    centred in a square of background first), and is squeezed, as the Kermany radiographs were,
    for the others."""
    from medenhance.image import from_array
    from medenhance.triage.data import crop_to_content, triage_frame

    yy, xx = np.mgrid[0:100, 0:200]
    head = (((yy - 50) ** 2 + (xx - 100) ** 2) < 40 ** 2).astype(np.float32) * 0.8 + 0.1
    image = from_array(head)

    def extent(frame: np.ndarray) -> tuple[int, int]:
        rows, cols = np.nonzero(frame > 0.5)
        return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1

    kept = triage_frame(image, 64, keep_aspect=True)
    height, width = extent(kept)
    assert abs(height - width) <= 1 and height == pytest.approx(64 * 80 / 200, abs=2)
    assert kept[0, 0] == pytest.approx(0.1, abs=0.01)          # the background, not black
    height, width = extent(triage_frame(image, 64))
    assert height == pytest.approx(2 * width, abs=2)             # squeezed
    # Cropped to the content, the kept head fills the frame as a square head would.
    height, width = extent(crop_to_content(kept))
    assert abs(height - width) <= 2 and height > 50


def test_scoring_reads_rectangular_frames_as_the_model_was_trained(tmp_path: Path) -> None:
    from medenhance.image import from_array
    from medenhance.triage.data import triage_frame
    from medenhance.triage.score import TriageScorer

    scorer = TriageScorer("mri-triage")          # crops to the head: keeps the proportions
    slice_ = me.read_image(Path(__file__).resolve().parents[2] / "samples"
                           / "mri_brain_glioma_Te-gl_0063.png").pixels
    tall = np.zeros((slice_.shape[0] + 96, slice_.shape[1]), np.float32)
    tall[48:-48] = slice_
    path = me.write_image(from_array((tall * 255).round().astype(np.uint8)), tmp_path / "t.png")
    expected, _ = scorer.score_frames(model_inputs(
        triage_frame(me.read_image(path), 128, keep_aspect=True)[None], scorer.info))
    assert scorer.score_files([path])[0].score == pytest.approx(float(expected[0]), rel=1e-6)


def test_frames_with_nan_are_refused_not_scored_nan() -> None:
    """A NaN score never reaches the threshold, so such a study would never be flagged."""
    from medenhance.errors import InvalidImageError
    from medenhance.triage.score import TriageScorer

    frames = np.full((1, 128, 128), 0.5, np.float32)
    frames[0, 3, 3] = np.nan
    with pytest.raises(InvalidImageError, match="NaN"):
        TriageScorer("mri-triage").score_frames(frames)


def test_percentile_range_does_not_let_a_burnt_in_marker_set_the_scale() -> None:
    """``frame_range: percentiles``: the anatomy's grey levels spread over [0, 1] whatever a
    bright marker of under 1 % of the pixels holds; its own range lets the marker set them."""
    rng = np.random.default_rng(0)
    anatomy = rng.uniform(0.2, 0.6, (64, 64)).astype(np.float32)
    marked = anatomy.copy()
    marked[:5, :5] = 1.0                              # 25 of 4096 pixels
    spread = percentile_range(np.stack([anatomy, marked]))
    assert spread.dtype == np.float32 and spread.min() >= 0 and spread.max() <= 1
    low, high = np.percentile(anatomy, [1, 99])
    np.testing.assert_allclose(spread[0], np.clip((anatomy - low) / (high - low), 0, 1),
                               atol=1e-5)
    # The marker changes the percentiles by a pixel's worth: the anatomy keeps its grey levels.
    assert np.abs(spread[1][5:, 5:] - spread[0][5:, 5:]).max() < 0.02
    assert (spread[1][:5, :5] == 1).all()
    stretched = own_range(marked[None])[0]
    assert np.abs(stretched[5:, 5:] - spread[0][5:, 5:]).max() > 0.2
    # A flat frame stays flat; one whose percentiles meet falls back to its own range.
    flat = np.full((1, 8, 8), 0.3, np.float32)
    np.testing.assert_array_equal(percentile_range(flat), flat)
    dot = np.zeros((1, 32, 32), np.float32)
    dot[0, 3, 4] = 0.5
    np.testing.assert_array_equal(percentile_range(dot), own_range(dot))
    np.testing.assert_array_equal(model_inputs(marked[None], {"frame_range": "percentiles"}),
                                  spread[1:])
    with pytest.raises(ConfigError, match="frame_range 'median' is not known to this version"):
        model_inputs(marked[None], {"frame_range": "median"})
