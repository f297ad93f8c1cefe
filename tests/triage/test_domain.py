"""The check of what a triage model was trained on: descriptor, fit, storage, use in scoring."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medenhance.cli import app
from medenhance.image import from_array
from medenhance.io import write_image
from medenhance.models import create_model
from medenhance.models.card import ModelCard, load_model, save_checkpoint
from medenhance.errors import ConfigError
from medenhance.triage.domain import (CHUNK, DESCRIPTOR, DIMENSIONS, PRECISION, DomainCheck,
                                      describe)
from medenhance.triage.score import TriageScorer

from .test_train_score import _study, _wavelet_config

runner = CliRunner()


def _chests(rng: np.random.Generator, n: int) -> np.ndarray:
    """Grey, textured frames filling the field: the kind the check is fitted to."""
    return np.stack([_study(rng, bool(i % 2)) for i in range(n)]).astype(np.float32) / 255.0


def _heads(rng: np.random.Generator, n: int, size: int = 64) -> np.ndarray:
    """A bright disc on a black background: another kind of image."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.45, 0.55), rng.uniform(0.45, 0.55), rng.uniform(0.3, 0.4)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2
        out.append(np.where(disc, 0.6 + 0.1 * rng.standard_normal((size, size)), 0.0))
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


def test_descriptor_is_the_histogram_and_the_cell_means(monkeypatch) -> None:
    frames = np.random.default_rng(0).random((3, 64, 48)).astype(np.float32)
    frames[0, 0, 0] = 1.0            # the top edge belongs to the last bin, as in numpy
    got = describe(frames)
    for frame, row in zip(frames, got, strict=True):
        counts, _ = np.histogram(frame, bins=16, range=(0.0, 1.0))
        np.testing.assert_allclose(row[:16] ** 2, counts / frame.size, atol=1e-12)
        cells = frame.reshape(4, 16, 4, 12).mean(axis=(1, 3)).ravel()
        np.testing.assert_allclose(row[16:32], cells, rtol=1e-6)
        f = frame.astype(np.float64)
        steps = [np.log(np.mean(np.abs(f[k::k, ::k] - f[:-k:k, ::k])) + 1e-4) if axis == 0 else
                 np.log(np.mean(np.abs(f[::k, k::k] - f[::k, :-k:k])) + 1e-4)
                 for k in (1, 2, 4) for axis in (0, 1)]
        np.testing.assert_allclose(row[32:], steps, rtol=1e-9)
    assert got.shape == (3, DIMENSIONS) == (3, 38)
    with pytest.raises(ValueError, match="frames of shape"):
        describe(np.zeros((2, 3, 64)))
    # Described a chunk at a time: the same numbers as all at once.
    many = np.random.default_rng(4).random((CHUNK + 5, 16, 16)).astype(np.float32)
    chunked = describe(many)
    monkeypatch.setattr("medenhance.triage.domain.CHUNK", 10 * CHUNK)
    np.testing.assert_array_equal(chunked, describe(many))


def test_fitted_check_keeps_its_kind_and_rejects_another() -> None:
    rng = np.random.default_rng(1)
    check = DomainCheck.fit(_chests(rng, 200), val := _chests(rng, 100))
    assert check.limit == pytest.approx(np.percentile(check.distances(val), 99))
    assert np.mean(check.distances(_chests(rng, 100)) > check.limit) < 0.06
    assert np.all(check.distances(_heads(rng, 20)) > 3 * check.limit)
    # Frames of one value (bins no training image reaches) neither break the fit nor pass.
    flat = DomainCheck.fit(np.full((10, 64, 64), 0.5, np.float32), np.full((4, 64, 64), 0.5,
                                                                           np.float32))
    assert np.isfinite(flat.limit) and flat.distances(_heads(rng, 2)).min() > flat.limit


def test_checkpoint_keeps_the_check_beside_the_network(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    check = DomainCheck.fit(_chests(rng, 50), _chests(rng, 20))
    net = create_model("fastunet_small", widths=[8, 8, 16])
    info = {"domain_check": check.card_entry()}
    card = ModelCard("m", "fastunet_small", {"widths": [8, 8, 16]}, task="triage",
                     extra={"triage": info})
    save_checkpoint(net, card, tmp_path / "m.safetensors", dtype=torch.float16,
                    aux=check.tensors())
    loaded = load_model(tmp_path / "m.safetensors")
    again = DomainCheck.of(loaded.card.extra["triage"], loaded.aux)
    assert again is not None and again.limit == check.limit
    np.testing.assert_allclose(again.mean, check.mean, rtol=1e-6)   # float32, not float16
    np.testing.assert_allclose(again.precision, check.precision, rtol=1e-5)
    frames = _heads(rng, 3)
    np.testing.assert_allclose(again.distances(frames), check.distances(frames), rtol=1e-4)
    # Models saved before the check have none; one that cannot be used is refused, not
    # silently left out (a newer descriptor, a card beside weights without the tensors).
    assert DomainCheck.of({}, loaded.aux) is None
    with pytest.raises(ConfigError, match="m.safetensors: its check .* not one this version"):
        DomainCheck.of({"domain_check": {**info["domain_check"], "descriptor": "other"}},
                       loaded.aux, str(loaded.path))
    with pytest.raises(ConfigError, match="lacks the check's tensors"):
        DomainCheck.of(info, {})
    with pytest.raises(ConfigError, match="wrong shape"):
        DomainCheck.of(info, {**loaded.aux, PRECISION: torch.eye(3)})


@pytest.fixture(scope="module")
def heads_and_chests(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domain")
    rng = np.random.default_rng(3)
    for label in ("NORMAL", "PNEUMONIA"):
        for i in range(60):
            write_image(from_array(_study(rng, label == "PNEUMONIA")),
                        root / "train" / label / f"p{i}_{label}.png")
    for i, frame in enumerate(_chests(rng, 20)):
        write_image(from_array((frame * 255).astype(np.uint8)), root / "new" / f"chest{i}.png")
    for i, frame in enumerate(_heads(rng, 5)):
        write_image(from_array((frame * 255).astype(np.uint8)), root / "new" / f"head{i}.png")
    return root / "train", root / "new"


def test_training_fits_the_check_and_scoring_marks_another_kind(
        heads_and_chests: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    train, new = heads_and_chests
    config = _wavelet_config(train.parent, tmp_path, "tiny-domain")
    trained = runner.invoke(app, ["train-triage", "-c", str(config)])
    assert trained.exit_code == 0, trained.output
    scorer = TriageScorer("tiny-domain")
    entry = scorer.model.card.extra["triage"]["domain_check"]
    assert entry["descriptor"] == DESCRIPTOR and scorer.domain is not None
    assert scorer.domain.limit == entry["limit"]
    results = {Path(r.path).stem: r for r in scorer.score_files(sorted(new.iterdir()))}
    heads = [r for name, r in results.items() if name.startswith("head")]
    chests = [r for name, r in results.items() if name.startswith("chest")]
    assert all(r.ood and r.domain_distance > entry["limit"] for r in heads)
    assert sum(r.domain_distance > entry["limit"] for r in chests) <= 2
    # The worklist says so; evaluate-triage writes the distance.
    out = runner.invoke(app, ["triage", str(new), "-m", "tiny-domain", "-o",
                              str(tmp_path / "w.csv")])
    assert out.exit_code == 0, out.output
    with open(tmp_path / "w.csv", newline="") as fh:
        rows = {Path(r["path"]).stem: r for r in csv.DictReader(fh)}
    assert all(rows[f"head{i}"]["ood"] == "1" for i in range(5))
    # With the features' own limit out of the way, the heads are out of distribution by the
    # check alone; a model saved before the check would pass them.
    scorer.info["ood_distance"] = float("inf")
    assert all(r.ood for r in scorer.score_files(sorted(new.glob("head*"))))
    bare = load_model("tiny-domain")
    bare.aux.clear()
    with pytest.raises(ConfigError, match="lacks the check's tensors"):
        TriageScorer(bare)
    del bare.card.extra["triage"]["domain_check"]
    plain = TriageScorer(bare)
    plain.info["ood_distance"] = float("inf")
    unchecked = plain.score_files(sorted(new.glob("head*")))
    assert not any(r.ood for r in unchecked) and all(np.isnan(r.domain_distance)
                                                     for r in unchecked)


def test_bundled_models_carry_the_check() -> None:
    from ..conftest import SAMPLES

    brain, chest = SAMPLES / "mri_brain_glioma_Te-gl_0063.png", \
        SAMPLES / "xray_chest_nih_00009128_000.png"
    for name, own, other in (("mri-triage", brain, chest), ("xray-triage", chest, brain),
                             ("xray-pneumonia", chest, brain)):
        scorer = TriageScorer(name)
        assert scorer.domain is not None, name
        near, far = scorer.score_files([own, other])
        assert near.domain_distance < scorer.domain.limit < far.domain_distance, name
        assert far.ood == 1, name


def test_a_thumbnail_blown_up_to_the_model_size_is_out_of_distribution(samples: Path,
                                                                       tmp_path: Path) -> None:
    """A 32-pixel copy of a radiograph was scored 0.03-0.29 by xray-pneumonia: a confident
    normal. Frames needing more than twice the enlargement of the smallest training image are
    out of distribution, whatever the features say."""
    from medenhance.degrade.resolution import resize
    from medenhance.io import read_image
    from medenhance.triage.data import too_small

    scorer = TriageScorer("xray-pneumonia")
    assert scorer.info["smallest_side"] == 224       # the Kermany images
    assert too_small(63, scorer.info) and not too_small(64, scorer.info)
    assert too_small(15, {"size": 128}) and not too_small(16, {"size": 128})   # older cards
    chest = read_image(samples / "xray_chest_nih_00009128_000.png").pixels
    for side in (32, 64):
        small = resize(chest.astype(np.float32), (side, side), "area")
        write_image(from_array((np.clip(small, 0, 1) * 255).astype(np.uint8)),
                    tmp_path / f"chest{side}.png")
    tiny, fine = scorer.score_files([tmp_path / "chest32.png", tmp_path / "chest64.png"])
    assert tiny.ood == 1 and tiny.too_small == "32x32"
    assert tiny.reading_note("CR/DX") == ("too small (32x32 pixels) for the model: read as "
                                          "flagged")
    assert fine.too_small == "" and "too small" not in fine.reading_note("CR/DX")
