"""Triage end to end on synthetic 'studies': train both kinds, score, worklist, evaluation."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medenhance.cli import app
from medenhance.image import from_array
from medenhance.io import read_image, write_image
from medenhance.triage.score import TriageScorer

from ..conftest import SAMPLES

runner = CliRunner()


def _study(rng: np.random.Generator, abnormal: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    img = 0.35 + 0.15 * np.sin(5 * xx + rng.uniform(0, 1)) * np.cos(4 * yy)
    img += rng.normal(0, 0.03, img.shape)
    if abnormal:  # a bright round "opacity"
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img += 0.35 * (((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(0.01, 0.03))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triage")
    rng = np.random.default_rng(0)
    for split, n in (("train", 80), ("test", 30)):
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(n):
                write_image(from_array(_study(rng, label == "PNEUMONIA")),
                            root / split / label / f"p{i}_{label}.png")
    return root


def _config(root: Path, kind: str, out: Path, extra: str = "") -> Path:
    path = out / f"{kind}.yaml"
    path.write_text(f"name: tiny-{kind}\nkind: {kind}\ndata: {root / 'train'}\nsize: 64\n{extra}"
                    "epochs: 4\nbatch_size: 16\nlr: 3.0e-3\nthreads: 1\n"
                    f"model_args: {{widths: [8, 16, 16, 32]}}\noutput_dir: {out / kind}\n"
                    "val_fraction: 0.25\n")
    return path


def _wavelet_config(root: Path, out: Path, name: str, extra: str = "") -> Path:
    """A one-class fixed-feature (wavelet) model of the tiny folders: nothing to train."""
    path = out / f"{name}.yaml"
    path.write_text(f"name: {name}\nkind: oneclass\nmodel: wavelet_features\n"
                    f"model_args: {{grid: 2}}\ndata: {root / 'train'}\nsize: 64\nepochs: 0\n"
                    f"val_fraction: 0.25\nthreads: 1\noutput_dir: {out / name}\n{extra}")
    return path


def test_supervised_triage_end_to_end(folders: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    result = runner.invoke(app, ["train-triage", "-c", str(_config(folders, "supervised",
                                                                       tmp_path))])
    assert result.exit_code == 0, result.output
    scorer = TriageScorer("tiny-supervised")
    info = scorer.model.card.extra["triage"]
    assert info["kind"] == "supervised" and info["temperature"] > 0
    assert scorer.model.card.metrics["val_sensitivity"] >= 0.95
    # The threshold chosen on the logits, and kept as the score it is too.
    assert info["threshold"] == pytest.approx(1 / (1 + np.exp(-info["threshold_logit"])))
    # The validation split under simulated acquisition changes, recorded in the card.
    from medenhance.triage.robustness import SHIFTS
    robust = scorer.model.card.extra["robustness"]
    assert set(robust["shifts"]) == set(SHIFTS) and "acquisition changes" in result.output
    assert robust["clean"] == pytest.approx(scorer.model.card.metrics["val_auroc"])
    assert scorer.model.card.metrics["val_robust_auroc"] == robust["robust_auroc"]

    worklist = tmp_path / "worklist.csv"
    bad = tmp_path / "bad" / "x.png"
    bad.parent.mkdir()
    bad.write_bytes(b"nope")
    out = runner.invoke(app, ["triage", str(folders / "test"), str(bad), "-m", "tiny-supervised",
                              "-o", str(worklist)])
    assert out.exit_code == 1 and "x.png" in out.output and "Traceback" not in out.output
    unreadable, *rows = list(csv.DictReader(open(worklist)))
    # The file that could not be scored heads the worklist rather than dropping out of it.
    assert unreadable["path"] == str(bad) and unreadable["score"] == ""
    assert unreadable["flag"] == "1" and unreadable["note"].startswith("unreadable (")
    assert len(rows) == 60 and set(rows[0]) >= {"path", "score", "flag", "frame", "frames",
                                                 "files", "study"}
    columns = ("frame", "frames", "files", "study")
    assert {tuple(r[c] for c in columns) for r in rows} == {("0", "1", "1", "")}
    keys = [(-max(int(r["flag"]), int(r["ood"])), -float(r["score"])) for r in rows]
    assert keys == sorted(keys)
    again = runner.invoke(app, ["triage", str(folders / "test"), "-m", "tiny-supervised",
                                "-o", str(worklist)])
    assert again.exit_code == 1 and "file exists" in again.output
    # The classifier's evidence map: its head at every location, whose mean is the logit (the
    # head is linear and the features are average-pooled).
    frames = np.stack([np.asarray(read_image(f).frames()[0], np.float32)
                       for f in sorted((folders / "test" / "PNEUMONIA").iterdir())[:6]])
    net = scorer.model.network
    with torch.no_grad():
        x = torch.from_numpy(frames)[:, None]
        torch.testing.assert_close(net.location_logits(x).mean((1, 2)), net(x), atol=1e-4,
                                   rtol=1e-4)
    assert scorer.evidence_maps(frames).shape == (6, 64, 64)

    ev = runner.invoke(app, ["evaluate-triage", str(folders / "test"), "-m", "tiny-supervised",
                             "-o", str(tmp_path / "ev"), "--bootstrap", "200", "--shifts"])
    assert ev.exit_code == 0, ev.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    robustness = summary["robustness"]
    assert robustness["clean"] == pytest.approx(summary["auroc"], abs=1e-9)
    assert set(robustness["shifts"]) >= {"zoom 1.3", "gamma 0.6"} and "zoom 1.3" in ev.output
    values = [v for row in robustness["shifts"].values() for v in row.values()]
    assert robustness["robust_auroc"] == pytest.approx(np.mean(values))
    assert (tmp_path / "ev" / "robustness.png").stat().st_size > 5000
    assert summary["auroc"] > 0.9 and summary["n_abnormal"] == 30
    assert summary["auroc_ci"][0] <= summary["auroc"] <= summary["auroc_ci"][1]
    assert summary["waits"]["triage_mean"] < summary["waits"]["arrival_mean"]
    assert (tmp_path / "ev" / "roc.png").stat().st_size > 5000
    assert (tmp_path / "ev" / "scores.png").stat().st_size > 5000
    assert summary["overlap"] is None and "optimistic" not in ev.output
    # Sensitivity and specificity: Wilson intervals, which contain the value and do not
    # collapse to a point when every case is right.
    for key in ("sensitivity", "specificity", "accuracy"):
        low, high = summary[f"{key}_ci"]
        assert low <= summary[key] <= high and high - low > 0.01
    # The model's own training folder: numbers given, with a warning; a rerun without
    # --shifts does not leave the earlier evaluation's robustness.png beside its own.
    own = runner.invoke(app, ["evaluate-triage", str(folders / "train"), "-m", "tiny-supervised",
                              "-o", str(tmp_path / "ev"), "--bootstrap", "200", "--overwrite"])
    assert own.exit_code == 0, own.output
    assert "which holds these images: these numbers are optimistic" in " ".join(
        own.output.split())
    assert not (tmp_path / "ev" / "robustness.png").exists()
    # A folder elsewhere of links to training images is the training data too.
    links = tmp_path / "links"
    for label in ("NORMAL", "PNEUMONIA"):
        (links / label).mkdir(parents=True)
        for source in sorted((folders / "train" / label).iterdir())[:4]:
            (links / label / source.name).symlink_to(source)
    linked = runner.invoke(app, ["evaluate-triage", str(links), "-m", "tiny-supervised",
                                 "-o", str(tmp_path / "ev"), "--bootstrap", "100", "--overwrite"])
    assert linked.exit_code == 0, linked.output
    assert (f"8 of these images are (links to, or prepared from) training or validation "
            f"images of {folders / 'train'}, which tiny-supervised "
            "was trained and calibrated on: these numbers are optimistic") in " ".join(
        linked.output.split())
    # The card knows its training folder from anywhere, though given as a relative path.
    from medenhance.models.card import load_model

    trained = load_model("tiny-supervised").card
    assert trained.training_data["root_resolved"] == str((folders / "train").resolve())
    assert trained.metrics["val_normal"] + trained.metrics["val_abnormal"] == \
        trained.metrics["val_images"] and trained.metrics["val_abnormal"] > 0
    # So are copies of them, and a dataset prepared from them.
    copied = tmp_path / "copied"
    for label in ("NORMAL", "PNEUMONIA"):
        (copied / label).mkdir(parents=True)
        for source in sorted((folders / "train" / label).iterdir())[:3]:
            (copied / label / source.name).write_bytes(source.read_bytes())
    result = runner.invoke(app, ["evaluate-triage", str(copied), "-m", "tiny-supervised",
                                 "-o", str(tmp_path / "ev"), "--bootstrap", "100", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "6 of these images are copies of training or validation images of" in " ".join(
        result.output.split())
    prepared = tmp_path / "prepared"
    assert runner.invoke(app, ["prepare", str(links), "-o", str(prepared), "--split",
                               "0,0,1", "--min-foreground", "0"]).exit_code == 0
    result = runner.invoke(app, ["evaluate-triage", str(prepared), "-m", "tiny-supervised",
                                 "-o", str(tmp_path / "ev"), "--bootstrap", "100", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "8 of these images are (links to, or prepared from) training" in " ".join(
        result.output.split())


@pytest.mark.parametrize("method", ["synthetic", "transforms", "contrastive"])
def test_oneclass_never_trains_on_abnormal(folders: Path, tmp_path: Path, monkeypatch,
                                           method: str) -> None:
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    config = _config(folders, "oneclass", tmp_path, f"oneclass_method: {method}\n")
    result = runner.invoke(app, ["train-triage", "-c", str(config)])
    assert result.exit_code == 0, result.output
    scorer = TriageScorer("tiny-oneclass")
    card = scorer.model.card
    assert card.training_data["abnormal_in_training"] == 0
    # The training split's abnormal images are not thrown away: they join validation (a
    # quarter of the 160 images, about 40, plus about 60 abnormal ones of the training split).
    moved = re.search(r"one-class: (\d+) abnormal image\(s\) of the training split join "
                      r"validation", " ".join(result.output.split()))
    assert moved and int(moved.group(1)) > 40
    assert card.metrics["val_images"] == 40 + int(moved.group(1))
    info = card.extra["triage"]
    assert info["kind"] == "oneclass" and len(info["platt"]) == 2
    assert info["score"] == ("logit" if method == "synthetic" else "mahalanobis-views")
    # Something utterly unlike the (normal) training images lies beyond every new normal study.
    noise = np.random.default_rng(1).random((3, 64, 64)).astype(np.float32)
    _, dist = scorer.score_frames(noise)
    test = np.stack([_study(np.random.default_rng(100 + i), False) for i in range(40)]) / 255.0
    _, in_dist = scorer.score_frames(test.astype(np.float32))
    assert np.median(dist) > max(card.extra["triage"]["ood_distance"], np.percentile(in_dist, 95))


def test_denoiser_is_not_a_triage_model(tmp_path: Path) -> None:
    out = runner.invoke(app, ["triage", str(tmp_path), "-m", "xray-denoise", "-o",
                              str(tmp_path / "w.csv")])
    assert out.exit_code == 1 and "not a triage model" in out.output


def test_split_seed_fixes_the_patient_split(folders: Path, tmp_path: Path) -> None:
    from medenhance.triage.train import load_triage_config

    config = load_triage_config(_config(folders, "supervised", tmp_path),
                                ["seed=3", "split_seed=0"])
    assert (config.seed, config.patient_split_seed) == (3, 0)
    assert load_triage_config(_config(folders, "supervised", tmp_path),
                              ["seed=3"]).patient_split_seed == 3


def test_equalized_cropped_model_scores_frames_prepared_alike(folders: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    """A model trained on cropped, histogram-equalised frames gets them again when it scores
    files."""
    from skimage import exposure

    from medenhance.triage.data import crop_to_content, model_inputs, triage_frame

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    config = _config(folders, "oneclass", tmp_path,
                     "equalize: true\ncrop: true\naugment: strong\n")
    result = runner.invoke(app, ["train-triage", "-c", str(config)])
    assert result.exit_code == 0, result.output
    scorer = TriageScorer("tiny-oneclass")
    info = scorer.model.card.extra["triage"]
    assert info["equalize"] is True and info["crop"] is True
    files = sorted((folders / "test" / "NORMAL").iterdir())[:5]
    frames = model_inputs(np.stack([triage_frame(read_image(f), 64) for f in files]), info)
    first = read_image(files[0]).frames()[0]
    stretched = (first - first.min()) / (first.max() - first.min())    # each frame's own range
    np.testing.assert_allclose(frames[0], exposure.equalize_hist(crop_to_content(stretched),
                                                                 nbins=1024), atol=1e-6)
    # Equalised grey levels are spread evenly: the mean is near 0.5, the quartiles near 1/4, 3/4.
    assert np.quantile(frames, [0.25, 0.5, 0.75]) == pytest.approx([0.25, 0.5, 0.75], abs=0.03)
    expected, _ = scorer.score_frames(frames)
    got = [r.score for r in scorer.score_files(files)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_augment_ranges_and_reproducibility() -> None:
    import torch
    from scipy.ndimage import gaussian_filter

    from medenhance.triage.train import _gaussian_blur, augment

    x = torch.rand(6, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    standard = augment(x, gen)
    # "standard" draws exactly 7 numbers per image, as it always did: runs stay reproducible.
    reference = torch.Generator().manual_seed(0)
    torch.rand(6, 7, generator=reference)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=reference))
    strong = augment(x, torch.Generator().manual_seed(0), "strong")
    assert 0 <= float(strong.min()) and float(strong.max()) <= 1
    assert float((strong - standard).abs().mean()) > 0.01
    sigma = torch.tensor([0.2, 0.5, 1.0])
    blurred = _gaussian_blur(x[:3], sigma)
    for i in range(3):
        ref = gaussian_filter(x[i, 0].numpy(), float(sigma[i]), mode="nearest",
                              truncate=3 / float(sigma[i]))
        np.testing.assert_allclose(blurred[i, 0].numpy(), ref, atol=1e-5)
    # max_zoom only moves the top of the scale range: 1.1 is the standard range.
    same = augment(x, torch.Generator().manual_seed(0), max_zoom=1.1)
    torch.testing.assert_close(same, standard, atol=1e-5, rtol=0)
    wider = augment(x, torch.Generator().manual_seed(0), max_zoom=1.6)
    assert float((wider - standard).abs().max()) > 0.05


@pytest.mark.parametrize("setting", ["fit_zoom=0.8", "fit_zoom=3", "max_zoom=0.5",
                                     "fit_changes=-1", "fit_changes=9"])
def test_zoom_settings_are_checked(folders: Path, tmp_path: Path, setting: str) -> None:
    from medenhance.errors import ConfigError
    from medenhance.triage.train import load_triage_config

    with pytest.raises(ConfigError, match=setting.split("=")[0] + " must be in"):
        load_triage_config(_config(folders, "supervised", tmp_path), [setting])


def test_covariance_setting_is_checked(folders: Path, tmp_path: Path) -> None:
    from medenhance.errors import ConfigError
    from medenhance.triage.train import load_triage_config

    with pytest.raises(ConfigError, match="covariance must be shrunk or ledoit-wolf, got 'lw'"):
        load_triage_config(_config(folders, "supervised", tmp_path), ["covariance=lw"])


@pytest.mark.parametrize("n", [30, 400])
def test_feature_gaussian_covariances_agree_with_their_definitions(n: int) -> None:
    """``shrunk``: the sample covariance pulled towards its mean variance by D / (N + D);
    ``ledoit-wolf``: scikit-learn's estimator, also where there are fewer samples than features
    (the MRI case), where the sample covariance cannot be inverted."""
    from sklearn.covariance import LedoitWolf

    from medenhance.triage.train import fit_gaussian

    rng = np.random.default_rng(0)
    d = 60
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    features = rng.normal(size=(n, d)) @ mixing + 3.0
    mean, precision = fit_gaussian(features, "ledoit-wolf")
    reference = LedoitWolf().fit(features)
    np.testing.assert_allclose(mean, reference.location_, rtol=1e-12)
    np.testing.assert_allclose(precision, reference.precision_, rtol=1e-6, atol=1e-8)
    _, shrunk_precision = fit_gaussian(features)
    cov = np.cov(features, rowvar=False)
    alpha = max(0.05, d / (n + d))
    expected = (1 - alpha) * cov + alpha * np.trace(cov) / d * np.eye(d)
    np.testing.assert_allclose(np.linalg.inv(shrunk_precision), expected, rtol=1e-8, atol=1e-10)
    # The two shrink by different amounts: the estimates differ.
    assert np.abs(precision - shrunk_precision).max() > 1e-3


def test_supervised_model_can_start_from_a_oneclass_network(folders: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    import torch

    from medenhance.errors import ConfigError
    from medenhance.models.card import load_model
    from medenhance.models.registry import create_model
    from medenhance.triage.train import _initialise_backbone, load_triage_config

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    oneclass = _config(folders, "oneclass", tmp_path)
    assert runner.invoke(app, ["train-triage", "-c", str(oneclass)]).exit_code == 0
    config = load_triage_config(_config(folders, "supervised", tmp_path),
                                ["init_from=tiny-oneclass"])
    model = create_model("small_resnet", widths=[8, 16, 16, 32])
    line, info = _initialise_backbone(model, config)
    assert "tiny-oneclass" in line and "WARNING" not in line
    loaded = load_model("tiny-oneclass")
    assert info["sha256"] == hashlib.sha256(loaded.path.read_bytes()).hexdigest()
    source = loaded.network.state_dict()
    state = model.state_dict()
    # The source's Gaussian describes its own training data: it is not copied.
    assert float(source["feature_precision"].abs().sum()) > 0
    assert float(state["feature_precision"].abs().sum()) == 0
    assert float(state["feature_mean"].abs().sum()) == 0
    assert torch.equal(state["stem.0.weight"], source["stem.0.weight"])
    assert torch.equal(state["stages.7.body.4.running_var"], source["stages.7.body.4.running_var"])
    assert state["head.1.weight"].shape == (1, 32) and source["head.1.weight"].shape == (8, 32)
    # Another split of the same data is allowed but called out; other data is not a concern;
    # another width is an error, not a traceback.
    other = load_triage_config(_config(folders, "supervised", tmp_path),
                               ["init_from=tiny-oneclass", "split_seed=5"])
    assert "WARNING" in _initialise_backbone(create_model("small_resnet", widths=[8, 16, 16, 32]),
                                             other)[0]
    lowest = load_triage_config(_config(folders, "supervised", tmp_path),
                                ["init_from=tiny-oneclass", "val_split=lowest-ids"])
    assert "WARNING" in _initialise_backbone(create_model("small_resnet", widths=[8, 16, 16, 32]),
                                             lowest)[0]
    elsewhere = load_triage_config(_config(folders, "supervised", tmp_path),
                                   ["init_from=tiny-oneclass", "split_seed=5",
                                    f"data={folders / 'test'}"])
    assert "WARNING" not in _initialise_backbone(
        create_model("small_resnet", widths=[8, 16, 16, 32]), elsewhere)[0]
    with pytest.raises(ConfigError, match="does not fit"):
        _initialise_backbone(create_model("small_resnet", widths=[8, 16, 16, 64]), config)
    result = runner.invoke(app, ["train-triage", "-c", str(_config(folders, "supervised",
                                                                       tmp_path)),
                                 "--set", "init_from=tiny-oneclass"])
    assert result.exit_code == 0 and "initialised from tiny-oneclass" in result.output
    card = TriageScorer("tiny-supervised").model.card
    assert card.training_data["init_from"]["sha256"] == info["sha256"]
    typo = runner.invoke(app, ["train-triage", "-c", str(_config(folders, "supervised",
                                                                     tmp_path)),
                               "--set", "init_from=tiny-onecalss", "--overwrite"])
    assert typo.exit_code == 1 and "unknown model 'tiny-onecalss'" in typo.output
    assert "Traceback" not in typo.output


def test_upright_only_model_scores_the_upright_distance(folders: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    """``view_average: false`` (and cards written before the view average) score one view."""
    import torch

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    config = _config(folders, "oneclass", tmp_path, "view_average: false\n")
    assert runner.invoke(app, ["train-triage", "-c", str(config)]).exit_code == 0
    scorer = TriageScorer("tiny-oneclass")
    assert scorer.model.card.extra["triage"]["score"] == "mahalanobis"
    frames = np.stack([_study(np.random.default_rng(i), False) for i in range(4)]) / 255.0
    frames = frames.astype(np.float32)
    _, dist = scorer.score_frames(frames)
    net = scorer.model.network
    with torch.no_grad():
        x = torch.from_numpy(frames)[:, None]
        upright = net.mahalanobis(net.density_features(x)).numpy()
        averaged = net.view_distance(x).numpy()
    np.testing.assert_allclose(dist, upright, rtol=1e-5)
    assert not np.allclose(dist, averaged, rtol=1e-3)


def test_random_zoom_enlarges_within_the_image() -> None:
    from medenhance.triage.train import random_zoom

    ramp = torch.linspace(0, 1, 64).expand(64, 64)                # x grows left to right
    x = ramp.repeat(200, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    assert torch.allclose(random_zoom(x, 1.0, gen), x, atol=1e-6)
    out = random_zoom(x, 1.5, gen)
    slope = (out[:, 0, :, 40] - out[:, 0, :, 20]).mean(1) / (ramp[0, 40] - ramp[0, 20])
    # Each image is enlarged by its own factor z in [1, 1.5]: a pixel step covers 1/z of the
    # original's, so the ramp is flatter by that factor.
    assert slope.min() >= 1 / 1.5 - 0.01 and slope.max() <= 1.01
    assert slope.max() - slope.min() > 0.25
    # The view stays inside the image: no flat run of repeated border values.
    assert bool((out[:, 0, 0].diff(dim=-1) > 0).all())
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.allclose(out[:, 0, 0], out[:, 0, -1], atol=1e-6)   # rows still identical


def test_gaussian_is_fitted_to_zoomed_copies_too() -> None:
    from medenhance.triage.train import FIT_ZOOM_COPIES, gaussian_fit_images

    images = np.random.default_rng(0).random((5, 32, 32), dtype=np.float32)
    assert gaussian_fit_images(images, 1.0, 0) is images
    fit = gaussian_fit_images(images, 1.3, 0)
    assert fit.shape == ((1 + FIT_ZOOM_COPIES) * 5, 32, 32)
    np.testing.assert_array_equal(fit[:5], images)
    # The copies are new views (enlarged, so smoother), reproducible from the seed.
    assert np.abs(np.diff(fit[5:], axis=-1)).mean() < 0.9 * np.abs(np.diff(images, axis=-1)).mean()
    np.testing.assert_array_equal(fit, gaussian_fit_images(images, 1.3, 0))


def test_acquisition_copies_span_the_simulated_changes() -> None:
    from medenhance.triage.train import acquisition_copies

    flat = np.full((1, 32, 32), 0.5, dtype=np.float32)
    copies = acquisition_copies(flat, 300, 0)
    assert copies.shape == (300, 32, 32) and copies.dtype == np.float32
    np.testing.assert_array_equal(copies, acquisition_copies(flat, 300, 0))
    assert not np.array_equal(copies, acquisition_copies(flat, 300, 1))       # the seed counts
    assert float(copies.min()) >= 0 and float(copies.max()) <= 1
    # Gamma in [0.6, 1.6] maps 0.5 to [0.5 ** 1.6, 0.5 ** 0.6]; blur and resolution keep a flat
    # frame flat, so each copy's median is its gamma's, spread over the whole range.
    medians = np.median(copies.reshape(300, -1), axis=1)
    assert medians.min() >= 0.5 ** 1.6 - 0.01 and medians.max() <= 0.5 ** 0.6 + 0.01
    assert medians.min() < 0.5 ** 1.5 and medians.max() > 0.5 ** 0.7
    # About half the copies are noisy, with sigma up to 0.04.
    spread = copies.reshape(300, -1).std(axis=1)
    assert 0.35 < np.mean(spread > 1e-4) < 0.65 and spread.max() <= 0.045
    # Noise near white stays in [0, 1].
    bright = acquisition_copies(np.full((1, 32, 32), 0.995, dtype=np.float32), 50, 0)
    assert float(bright.max()) <= 1 and float(bright.min()) >= 0
    # Blur and lower resolution smooth a noise texture: some copies much smoother than it.
    texture = np.random.default_rng(1).random((2, 32, 32), dtype=np.float32)
    changed = acquisition_copies(texture, 3, 0)
    assert changed.shape == (6, 32, 32)
    roughness = np.abs(np.diff(changed, axis=-1)).mean((1, 2))
    assert roughness.min() < 0.6 * np.abs(np.diff(texture, axis=-1)).mean()


def test_acquisition_copies_are_the_training_frames_prepared_as_scoring_prepares_them(
        folders: Path, tmp_path: Path, monkeypatch) -> None:
    """With copies left unchanged, their features must be the training images' features exactly:
    the same rows, read as read and then cropped and equalised as the originals were."""
    import medenhance.triage.train as train_module

    fitted = []
    monkeypatch.setattr(train_module, "acquisition_copies",
                        lambda frames, copies, seed: np.concatenate([frames] * copies))
    real_fit = train_module.fit_gaussian
    monkeypatch.setattr(train_module, "fit_gaussian",
                        lambda features, covariance: fitted.append(features)
                        or real_fit(features, covariance))
    config = train_module.load_triage_config(_wavelet_config(
        folders, tmp_path, "tiny-copies",
        "crop: true\nequalize: true\nfit_changes: 2\nregister: false\nrobustness: false\n"))
    train_module.train_triage(config, log=lambda line: None)
    features = fitted[0]
    n = len(features) // 3
    assert len(features) == 3 * n and n > 0
    np.testing.assert_array_equal(features[n: 2 * n], features[:n])
    np.testing.assert_array_equal(features[2 * n:], features[:n])


def test_validation_robustness_rebuilds_the_training_split(folders: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    from medenhance.triage.robustness import validation_robustness

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    result = runner.invoke(app, ["train-triage", "-c", str(_config(folders, "supervised",
                                                                       tmp_path))])
    assert result.exit_code == 0, result.output
    scorer = TriageScorer("tiny-supervised")
    again = validation_robustness(scorer)
    recorded = scorer.model.card.extra["robustness"]
    assert again["clean"] == pytest.approx(recorded["clean"], abs=1e-6)
    assert again["robust_auroc"] == pytest.approx(recorded["robust_auroc"], abs=1e-6)


@pytest.mark.parametrize("key, value", [("fit_zoom", 1.5), ("fit_changes", 2)])
def test_fitted_copies_change_only_the_gaussian(folders: Path, tmp_path: Path, key: str,
                                                value: float) -> None:
    from medenhance.models.card import load_model
    from medenhance.triage.train import TriageConfig, load_triage_config, train_triage

    states = {}
    for setting in (getattr(TriageConfig, key), value):
        out = tmp_path / str(setting)
        out.mkdir()
        config = load_triage_config(_config(folders, "oneclass", out),
                                    ["epochs=1", f"{key}={setting}", "register=false",
                                     "robustness=false"])
        path, _ = train_triage(config, log=lambda line: None)
        loaded = load_model(path)
        assert loaded.card.config[key] == setting
        states[setting] = loaded.network.state_dict()
    plain, zoomed = states[getattr(TriageConfig, key)], states[value]
    assert torch.equal(plain["stem.0.weight"], zoomed["stem.0.weight"])   # same training
    assert not torch.allclose(plain["feature_mean"], zoomed["feature_mean"])


def test_patch_nn_model_refits_an_existing_network(folders: Path, tmp_path: Path) -> None:
    """``epochs: 0`` keeps the ``init_from`` network and fits only the normal model; the
    ``patch-nn`` score then comes from the stored patch memory, through files as through frames."""
    from scipy.special import expit

    from medenhance.errors import ConfigError
    from medenhance.models.card import load_model
    from medenhance.triage.data import model_inputs, triage_frame
    from medenhance.triage.train import load_triage_config, train_triage

    from medenhance.triage.robustness import validation_robustness

    base, _ = train_triage(load_triage_config(_config(folders, "oneclass", tmp_path),
                                              ["epochs=1", "register=false", "robustness=false"]),
                           log=lambda line: None)
    (tmp_path / "refit").mkdir()
    refit = load_triage_config(_config(folders, "oneclass", tmp_path / "refit"),
                               ["epochs=0", f"init_from={base}", "oneclass_score=patch-nn",
                                "memory_size=50", "crop=true", "register=false"])
    path, metrics = train_triage(refit, log=lambda line: None)
    network, patched = load_model(base).network, load_model(path)
    for key, value in network.state_dict().items():
        if not key.startswith(("head.", "feature_")):
            assert torch.equal(patched.network.state_dict()[key], value), key
    assert patched.network.patch_memory.shape == (50, 16 + 16 + 32)
    assert patched.card.arguments["memory_size"] == 50
    scorer = TriageScorer(patched)
    assert scorer.info["score"] == "patch-nn" and scorer.info["crop"] is True
    assert patched.card.extra["history"] == []       # no epoch was trained
    files = sorted((folders / "test" / "PNEUMONIA").iterdir())[:4]
    frames = model_inputs(np.stack([triage_frame(read_image(f), 64) for f in files]), scorer.info)
    expected, _ = scorer.score_frames(frames)
    a, b = scorer.info["platt"]
    raw = patched.network.patch_distance(torch.from_numpy(frames)[:, None]).detach().numpy()
    np.testing.assert_allclose(expected, expit(a * (raw.astype(np.float64) - b)), atol=1e-6)
    np.testing.assert_allclose([r.score for r in scorer.score_files(files)], expected, rtol=1e-5)
    # The robustness recorded in training (crop and patch score on the changed frames) is what
    # the validation split, rebuilt from the card, gives again.
    assert validation_robustness(scorer)["robust_auroc"] == pytest.approx(
        metrics["val_robust_auroc"], abs=1e-9)
    # Heatmaps of the flagged studies: the left half is the network's input.
    from PIL import Image

    heat, worklist_csv = tmp_path / "heat", tmp_path / "w.csv"
    args = ["triage", str(folders / "test"), "-m", str(path), "-o", str(worklist_csv),
            "--heatmaps", str(heat)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(worklist_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["use"] for row in rows} == {"research use only (not for diagnosis)"}
    # Every flagged row gets one: at or above the threshold, or out of distribution.
    flagged = [row for row in rows if row["flag"] == "1"]
    pngs = sorted(heat.glob("*.png"))
    assert len(pngs) == len(flagged) > 0
    page = (heat / "index.html").read_text()
    assert [page.index(f'src="{png.name}"') for png in pngs] == sorted(
        page.index(f'src="{png.name}"') for png in pngs)          # in worklist order
    assert page.count("<figure>") == len(pngs) and "research use only" in page
    first = flagged[0]
    assert pngs[0].name == f"{int(first['rank']):04d}_{Path(first['path']).stem}.png"
    opened = Image.open(pngs[0])
    assert "research use only" in opened.text["Comment"]
    # 64 x 128, each pixel a 6 x 6 block, above a caption strip (white text on black).
    caption = np.asarray(opened)[384:]
    assert caption.shape == (24, 768, 3) and caption.max() > 200 and np.median(caption) == 0
    picture = np.asarray(opened)[:384]
    np.testing.assert_array_equal(picture[::6, ::6].repeat(6, 0).repeat(6, 1), picture)
    seen = model_inputs(triage_frame(read_image(first["path"]), 64)[None], scorer.info)[0]
    np.testing.assert_allclose(picture[::6, :384:6, 0], np.round(seen * 255), atol=1)
    again = runner.invoke(app, args + ["--overwrite"])      # the worklist exists as well
    assert again.exit_code == 0
    refused = runner.invoke(app, ["triage", str(folders / "test"), "-m", str(path), "-o",
                                  str(tmp_path / "x.csv"), "--heatmaps", str(heat)])
    assert refused.exit_code == 1 and "already holds PNG files" in refused.output
    gaussian = runner.invoke(app, ["triage", str(folders / "test"), "-m", str(base), "-o",
                                   str(tmp_path / "g.csv"), "--heatmaps", str(tmp_path / "g")])
    assert gaussian.exit_code == 1 and "no map of where its score comes from" in gaussian.output
    assert not (tmp_path / "g.csv").exists()
    # The feature distance (out-of-distribution check) is measured as in training, over the 8
    # views; 10 % of the validation studies lie beyond the recorded 90th percentile.
    from medenhance.triage.robustness import validation_split

    assert scorer.info["distance"] == "views"
    with torch.no_grad():
        views = patched.network.view_distance(torch.from_numpy(frames)[:, None]).numpy()
    np.testing.assert_allclose(scorer.score_frames(frames)[1], views, rtol=1e-5)
    val_frames, _ = validation_split(scorer)
    val_dist = scorer.score_frames(model_inputs(val_frames, scorer.info))[1]
    assert np.mean(val_dist > scorer.info["distance_p90"]) == pytest.approx(0.1,
                                                                             abs=1 / len(val_dist))
    # A batch unlike the training population (coarse noise) gets the population warning; the
    # test folder, drawn like the training folder, does not.
    rng = np.random.default_rng(1)
    for i in range(20):
        noise = np.kron(rng.random((16, 16)), np.ones((4, 4)))
        write_image(from_array((noise * 255).astype(np.uint8)), tmp_path / "noise" / f"{i}.png")
    odd = runner.invoke(app, ["triage", str(tmp_path / "noise"), "-m", str(path), "-o",
                              str(tmp_path / "noise.csv")])
    assert odd.exit_code == 0 and "do not look like the population" in odd.output
    assert "do not look like the population" not in result.output
    # Asked for more than there are: every normal patch is kept, and the model still loads.
    (tmp_path / "all").mkdir()
    everything = load_triage_config(_config(folders, "oneclass", tmp_path / "all"),
                                     ["epochs=0", f"init_from={base}", "oneclass_score=patch-nn",
                                      "memory_size=1000000", "register=false",
                                      "robustness=false"])
    whole = load_model(train_triage(everything, log=lambda line: None)[0])
    n_normal = len(whole.network.patch_memory)
    assert whole.card.arguments["memory_size"] == n_normal < 1000000
    assert n_normal % (16 * 16) == 0          # all 16x16 patches of each training normal
    for bad in (["epochs=0"], ["epochs=0", f"init_from={base}", "kind=supervised"],
                ["epochs=0", f"init_from={base}", "oneclass_method=synthetic"],
                ["oneclass_score=patch-nn", "kind=supervised"], ["oneclass_score=nearest"],
                ["oneclass_score=patch-nn", "memory_size=0"],
                ["oneclass_score=patch-nn", "model_args={memory_size: 5}"]):
        with pytest.raises(ConfigError):
            load_triage_config(_config(folders, "oneclass", tmp_path), bad)


def test_a_prepared_dataset_trains_and_evaluates_by_its_own_split(folders: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """`prepare` -> `train-triage` -> `evaluate-triage`: training reads the manifest's train and
    val rows only, and the evaluation its test rows."""
    from medenhance.triage.robustness import validation_split

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    prepared = tmp_path / "prepared"
    out = runner.invoke(app, ["prepare", str(folders / "train"), "-o", str(prepared), "--split",
                              "0.6,0.2,0.2", "--patient-regex", r"^(p\d+)_"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(open(prepared / "manifest.csv")))
    count = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert min(count.values()) > 0 and {r["label"] for r in rows} == {"NORMAL", "PNEUMONIA"}
    result = runner.invoke(app, ["train-triage", "-c", str(_config(folders, "supervised",
                                                                   tmp_path)),
                                 "--set", f"data={prepared / 'manifest.csv'}"])
    assert result.exit_code == 0, result.output
    assert "train/val split of the manifest" in result.output
    # A trained model is not replaced unless asked, in its run folder or under its name.
    again = runner.invoke(app, ["train-triage", "-c", str(_config(folders, "supervised",
                                                                  tmp_path))])
    assert again.exit_code == 1 and "already holds a trained model" in again.output
    assert "training supervised" not in again.output     # said once the checks have passed
    moved = runner.invoke(app, ["train-triage", "-c", str(_config(folders, "supervised",
                                                                  tmp_path)),
                                "--set", f"output_dir={tmp_path / 'elsewhere'}"])
    assert moved.exit_code == 1 and "a model named 'tiny-supervised' is already" in moved.output
    assert not (tmp_path / "elsewhere" / "best.safetensors").exists()
    scorer = TriageScorer("tiny-supervised")
    assert scorer.model.card.training_data["images"] == {"train": count["train"],
                                                         "val": count["val"]}
    _, labels = validation_split(scorer)
    val_rows = [r for r in rows if r["split"] == "val"]
    assert list(labels) == [int(r["label"] == "PNEUMONIA") for r in val_rows]
    ev = runner.invoke(app, ["evaluate-triage", str(prepared), "-m", "tiny-supervised", "-o",
                             str(tmp_path / "eval")])
    assert ev.exit_code == 0, ev.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_normal"] + summary["n_abnormal"] == count["test"]
    scored = {Path(r["path"]).name for r in csv.DictReader(open(tmp_path / "eval" / "scores.csv"))}
    assert scored == {Path(r["path"]).name for r in rows if r["split"] == "test"}
    folder = runner.invoke(app, ["evaluate-triage", str(folders / "test"), "-m", "tiny-supervised",
                                 "--split", "val", "-o", str(tmp_path / "eval2")])
    assert folder.exit_code == 1 and "--split is for datasets made by" in folder.output
    rerun = ["evaluate-triage", str(prepared), "-m", "tiny-supervised", "-o",
             str(tmp_path / "eval")]
    assert "already holds an evaluation" in runner.invoke(app, rerun).output
    assert runner.invoke(app, rerun + ["--overwrite"]).exit_code == 0
    unknown = runner.invoke(app, rerun + ["--overwrite", "--normal", "healthy"])
    assert unknown.exit_code == 1 and "['NORMAL', 'PNEUMONIA']" in unknown.output
    assert "--normal names other normal labels" in unknown.output

    # Images prepared from a folder without label sub-folders have no label to learn from.
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted((folders / "train" / "NORMAL").iterdir())[:6]:
        (flat / f.name).write_bytes(f.read_bytes())
    assert runner.invoke(app, ["prepare", str(flat), "-o", str(tmp_path / "flat-prep")]
                         ).exit_code == 0
    bad = runner.invoke(app, ["train-triage", "-c", str(_config(folders, "supervised", tmp_path)),
                              "--set", f"data={tmp_path / 'flat-prep'}", "--overwrite"])
    assert bad.exit_code == 1 and "6 of 6 rows have no label" in bad.output
    assert "Traceback" not in bad.output


def test_one_path_is_one_study_and_a_checkpoint_path_loads(samples: Path) -> None:
    from medenhance.models.card import bundled_dir

    scorer = TriageScorer(bundled_dir() / "xray-pneumonia.safetensors")
    sample = samples / "xray_chest_nih_00009128_000.png"
    one = scorer.score_files(str(sample))
    assert len(one) == 1 and one[0].score == scorer.score_files([sample])[0].score


def test_fewer_images_than_a_batch_still_train(folders: Path, tmp_path: Path, monkeypatch) -> None:
    """60 normal training images with batch_size 64 gave no step at all, yet a saved model."""
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    config = _config(folders, "oneclass", tmp_path, "batch_size: 64\n")
    text = config.read_text().replace("epochs: 4\nbatch_size: 16\n", "epochs: 1\n")
    config.write_text(text)
    result = runner.invoke(app, ["train-triage", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "note: batch size" in result.output
    history = TriageScorer("tiny-oneclass").model.card.extra["history"]
    assert np.isfinite(history[0]["train_loss"])


def test_outputs_that_would_land_in_the_inputs_are_refused(folders: Path, tmp_path: Path) -> None:
    test = folders / "test"
    inside = runner.invoke(app, ["evaluate-triage", str(test), "-m", "xray-pneumonia", "-o",
                                 str(test / "NORMAL")])
    assert inside.exit_code == 1 and "inside the evaluated data" in inside.output
    assert not (test / "NORMAL" / "roc.png").exists()
    same = runner.invoke(app, ["triage", str(test / "NORMAL"), "-o", str(tmp_path / "x"),
                               "--heatmaps", str(tmp_path / "x")])
    assert same.exit_code == 1 and "is also the worklist" in same.output
    assert not (tmp_path / "x").exists()
    (tmp_path / "afile").write_text("")           # refused before scoring, not after
    under = runner.invoke(app, ["triage", str(test / "NORMAL"), "-o", str(tmp_path / "w.csv"),
                                "--heatmaps", str(tmp_path / "afile" / "sub")])
    assert under.exit_code == 1 and "is a file, not a folder" in under.output
    assert not (tmp_path / "w.csv").exists()


def test_a_failed_training_leaves_no_empty_run_folder(folders: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    only_normal = tmp_path / "only-normal"
    (only_normal / "NORMAL").mkdir(parents=True)
    for src in sorted((folders / "train" / "NORMAL").iterdir())[:10]:
        (only_normal / "NORMAL" / src.name).write_bytes(src.read_bytes())
    config = _config(only_normal.parent, "oneclass", tmp_path)
    config.write_text(config.read_text().replace(f"data: {only_normal.parent / 'train'}",
                                                 f"data: {only_normal}"))
    result = runner.invoke(app, ["train-triage", "-c", str(config)])
    assert result.exit_code == 1 and "normal and abnormal" in result.output, result.output
    assert "only normal images (label folder(s) NORMAL" in " ".join(result.output.split())
    assert not (tmp_path / "oneclass").exists()
    kept = tmp_path / "kept"        # a folder that existed before is left as it was
    kept.mkdir()
    result = runner.invoke(app, ["train-triage", "-c", str(config), "--set",
                                 f"output_dir={kept}"])
    assert result.exit_code == 1 and "normal and abnormal" in result.output and kept.is_dir()


def test_evaluate_triage_lists_what_it_could_not_read(folders: Path, tmp_path: Path) -> None:
    """Two unreadable files in a label folder were dropped without a word, exit status 0."""
    data = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (data / label).mkdir(parents=True)
        for src in sorted((folders / "test" / label).iterdir())[:6]:
            (data / label / src.name).write_bytes(src.read_bytes())
    (data / "PNEUMONIA" / "text.png").write_text("not an image")
    (data / "loose.png").write_bytes(src.read_bytes())         # outside the label folders
    result = runner.invoke(app, ["evaluate-triage", str(data), "-m", "xray-pneumonia", "-o",
                                 str(tmp_path / "ev"), "--bootstrap", "100"])
    assert result.exit_code == 1, result.output
    assert "1 of 13 input(s) failed" in result.output and "text.png" in result.output
    said = " ".join(result.output.split())
    assert "1 image(s) lie outside the label sub-folders and were not evaluated" in said
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["unlabelled"] == [str(data / "loose.png")]
    # In Python, the scored studies can be kept (the benchmark reuses them).
    from medenhance.triage.evaluate import evaluate_triage_folder

    studies: list = []
    again = evaluate_triage_folder(data, "xray-pneumonia", tmp_path / "ev3", n_bootstrap=10,
                                   studies=studies)
    assert len(studies) == again["n_normal"] + again["n_abnormal"] == 12
    with open(tmp_path / "ev3" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [round(r.score, 10) for r in studies] == [float(row["score"]) for row in rows]
    assert {row["use"] for row in rows} == {"research use only (not for diagnosis)"}
    assert summary["n_abnormal"] == 6 and summary["n_normal"] == 6
    negative = runner.invoke(app, ["evaluate-triage", str(data), "-m", "xray-pneumonia", "-o",
                                   str(tmp_path / "ev2"), "--minutes", "-5"])
    assert negative.exit_code == 1 and "--minutes" in negative.output


def test_ctrl_c_finishes_with_the_best_epoch_so_far(folders: Path, tmp_path: Path,
                                                    monkeypatch) -> None:
    """An interrupted train-triage lost every epoch, without a word."""
    import os
    import signal

    from medenhance.triage.train import load_triage_config, train_triage

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    config = load_triage_config(_config(folders, "supervised", tmp_path), [])
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch 2/"):
            os.kill(os.getpid(), signal.SIGINT)          # as Ctrl-C would

    # As in a terminal (a shell's background job, as CI may run this, starts with SIGINT ignored).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        train_triage(config, log=log)
        # The handler is handed back: Ctrl-C interrupts again as usual.
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
    assert any(line.startswith("interrupted in epoch 3") for line in lines), lines
    card = TriageScorer(str(tmp_path / "supervised" / "best.safetensors")).model.card
    assert [h["epoch"] for h in card.extra["history"]] == [1, 2]


def test_training_leaves_out_what_it_must_not_learn_from(folders: Path, samples: Path,
                                                          tmp_path: Path, monkeypatch) -> None:
    """An MR image in a radiograph model's folder, blank and 8x8 images and copies filed under
    both labels were all learnt from, and only the first unreadable file was named."""
    import shutil

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    data = tmp_path / "data"
    shutil.copytree(folders / "train", data)
    normal, abnormal = data / "NORMAL", data / "PNEUMONIA"
    shutil.copyfile(samples / "mr_head_MR1_JPLL.dcm", abnormal / "mr.dcm")
    write_image(from_array(np.zeros((64, 64), np.uint8)), normal / "blank.png")
    write_image(from_array(np.full((8, 8), 99, np.uint8)), normal / "tiny.png")
    first = sorted(normal.glob("p*.png"))[0]
    shutil.copyfile(first, normal / "again.png")                 # a copy: kept once
    twin = sorted(abnormal.glob("p*.png"))[0]
    # The same picture as a 16-bit PNG under the other label: both are left out.
    values = read_image(twin).pixels
    write_image(from_array((values * 65535).astype(np.uint16)), normal / "twin16.png")
    (normal / "broken.png").write_bytes(b"not a png")
    shutil.copyfile(first, data / "loose.png")         # no label folder: left out, with a note
    config = _config(data.parent, "supervised", tmp_path,
                     "modality: CR/DX\nepochs: 1\n").read_text().replace(
        f"data: {data.parent / 'train'}", f"data: {data}").replace("epochs: 4\n", "")
    (tmp_path / "c.yaml").write_text(config)
    result = runner.invoke(app, ["train-triage", "-c", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "7 image(s) left out" in said and "1 unreadable file(s) skipped" in said
    rows = {Path(r["path"]).name: r["reason"]
            for r in csv.DictReader(open(tmp_path / "supervised" / "skipped.csv"))}
    assert rows["mr.dcm"].startswith("modality MR, the model is for CR/DX")
    assert rows["loose.png"].startswith("not in a label sub-folder")
    assert rows["blank.png"].startswith("empty") and rows["tiny.png"].startswith("too small")
    # Files are read in name order: the later of each pair names the earlier.
    assert rows[first.name] == f"a copy of {normal / 'again.png'}" and "again.png" not in rows
    assert "labelled NORMAL, not PNEUMONIA: both left out" in rows[twin.name]
    assert rows["twin16.png"].startswith("labelled otherwise") and "unreadable" in rows[
        "broken.png"]
    card = TriageScorer("tiny-supervised").model.card
    assert card.training_data["left_out"] == 7 and card.training_data["unreadable"] == 1
    assert sum(card.training_data["images"].values()) == 160 - 1


def test_an_ensemble_scores_the_mean_of_its_members(folders: Path, tmp_path: Path) -> None:
    """``ensemble:`` joins models of one recipe trained with other seeds: its logit, distance and
    heatmap are the members' mean; only the calibration and the operating point are fitted."""
    from scipy.special import expit

    from medenhance.models.card import load_model
    from medenhance.triage.data import model_inputs, triage_frame
    from medenhance.triage.train import load_triage_config, train_triage

    quiet = {"log": lambda line: None}
    members = []
    for seed in (0, 1):
        (tmp_path / f"m{seed}").mkdir()
        config = _config(folders, "supervised", tmp_path / f"m{seed}")
        members.append(train_triage(load_triage_config(config, [
            "epochs=1", f"seed={seed}", "split_seed=0", "register=false", "robustness=false"]),
            **quiet)[0])
    (tmp_path / "ens").mkdir()
    config = _config(folders, "supervised", tmp_path / "ens")
    path, metrics = train_triage(load_triage_config(config, [
        "epochs=0", "split_seed=0", "register=false",
        f"ensemble=[{members[0]}, {members[1]}]"]), **quiet)
    ensemble = load_model(path)
    assert ensemble.card.architecture == "triage_ensemble"
    assert [m["seed"] for m in ensemble.card.training_data["ensemble"]] == [0, 1]
    assert "val_robust_auroc" in metrics
    # Its check of what it was trained on is fitted, as any model's, to the training images,
    # their zoomed copies and 2 acquisition-changed copies of each, though an ensemble config
    # refuses fit_zoom and fit_changes for its own Gaussian.
    from medenhance.triage.domain import DomainCheck
    from medenhance.triage.robustness import rebuilt_split
    from medenhance.triage.train import acquisition_copies, gaussian_fit_images

    data, train, val = rebuilt_split(ensemble.card.config)
    info = ensemble.card.extra["triage"]
    inputs = model_inputs(data.images, info)
    expected = DomainCheck.fit(np.concatenate([
        gaussian_fit_images(inputs[train], 1.25, 0),
        model_inputs(acquisition_copies(data.images[train], 2, 0), info)]), inputs[val])
    check = TriageScorer(ensemble).domain
    np.testing.assert_allclose(check.mean, expected.mean, rtol=1e-5)
    assert check.limit == pytest.approx(expected.limit, rel=1e-5)
    nets = [load_model(m).network for m in members]
    files = sorted((folders / "test" / "PNEUMONIA").iterdir())[:3] + \
        sorted((folders / "test" / "NORMAL").iterdir())[:3]
    scorer = TriageScorer(ensemble)
    frames = model_inputs(np.stack([triage_frame(read_image(f), 64) for f in files]), scorer.info)
    x = torch.from_numpy(frames)[:, None]
    with torch.no_grad():
        logits = torch.stack([n(x) for n in nets]).mean(0).double().numpy()
        distance = torch.stack([n.mahalanobis(n.density_features(x)) for n in nets]).mean(0)
        where = torch.stack([n.location_logits(x) for n in nets]).mean(0)
    prob, dist = scorer.score_frames(frames)
    np.testing.assert_allclose(prob, expit(logits / scorer.info["temperature"]), rtol=1e-5)
    np.testing.assert_allclose(dist, distance.numpy(), rtol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(ensemble.network.location_logits(x).numpy(), where.numpy(),
                                   rtol=1e-5, atol=1e-6)
    # The members are not changed by joining (the saved ensemble holds their weights).
    for net, member in zip(nets, ensemble.network.members, strict=True):
        for key, value in net.state_dict().items():
            assert torch.equal(member.state_dict()[key], value), key
    # Another model started from the ensemble starts from its first member.
    (tmp_path / "next").mkdir()
    start, _ = train_triage(load_triage_config(_config(folders, "oneclass", tmp_path / "next"), [
        "epochs=0", f"init_from={path}", "register=false", "robustness=false"]), **quiet)
    started = load_model(start)
    assert started.card.training_data["init_from"]["member"] == 0
    for key, value in nets[0].state_dict().items():
        if not key.startswith(("head.", "feature_")):
            assert torch.equal(started.network.state_dict()[key], value), key


def test_an_ensemble_refuses_members_trained_otherwise(folders: Path, tmp_path: Path) -> None:
    from medenhance.errors import ConfigError
    from medenhance.triage.train import load_triage_config, train_triage

    quiet = {"log": lambda line: None}
    trained = {}
    for name, sets in (("a", ["split_seed=0"]), ("b", ["split_seed=1"]),
                       ("c", ["split_seed=0", "size=32"])):
        (tmp_path / name).mkdir()
        config = _config(folders, "supervised", tmp_path / name)
        trained[name] = train_triage(load_triage_config(config, [
            "epochs=1", "register=false", "robustness=false", *sets]), **quiet)[0]
    (tmp_path / "ens").mkdir()
    config = _config(folders, "supervised", tmp_path / "ens")
    for other, words in (("b", "patient split"), ("c", "size 32")):
        with pytest.raises(ConfigError, match=words):
            train_triage(load_triage_config(config, [
                "epochs=0", "split_seed=0", "register=false",
                f"ensemble=[{trained['a']}, {trained[other]}]"]), **quiet)
    for sets in (["epochs=2", f"ensemble=[{trained['a']}, {trained['a']}]"],
                 ["epochs=0", f"ensemble=[{trained['a']}]"]):
        with pytest.raises(ConfigError, match="ensemble: needs two or more"):
            load_triage_config(config, sets)
    for setting in ("fit_zoom=1.25", "fit_changes=2"):     # would be recorded, not done
        with pytest.raises(ConfigError, match=f"{setting.replace('=', ': ')}: an ensemble's"):
            load_triage_config(config, ["epochs=0", setting,
                                        f"ensemble=[{trained['a']}, {trained['b']}]"])
    assert not (tmp_path / "ens" / "supervised").exists()


@pytest.mark.parametrize("covariance", ["shrunk", "ledoit-wolf"])
def test_wavelet_oneclass_model_fits_only_a_gaussian(folders: Path, tmp_path: Path,
                                                   monkeypatch, covariance: str) -> None:
    """``model: wavelet_features``: fixed features, the normal images' Gaussian fitted (with the
    config's covariance), scored by the distance to it, with a map of where it comes from."""
    from scipy.special import expit

    from medenhance.triage.data import model_inputs, triage_frame
    from medenhance.triage.metrics import auroc
    from medenhance.triage.train import fit_gaussian

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    config = _wavelet_config(folders, tmp_path, "tiny-wavelet", f"covariance: {covariance}\n")
    result = runner.invoke(app, ["train-triage", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "fixed features, nothing to train" in " ".join(result.output.split())
    assert "warning" not in result.output           # 20 normal validation images and more
    scorer = TriageScorer("tiny-wavelet")
    card, net = scorer.model.card, scorer.model.network
    assert card.architecture == "wavelet_features" and card.arguments == {
        "wavelengths": [4.0, 8.0, 16.0, 32.0], "orientations": 6, "grid": 2}
    assert card.training_data["abnormal_in_training"] == 0
    assert scorer.info["score"] == "mahalanobis" and scorer.info["distance"] == "upright"
    # The stored Gaussian is the one of the normal training images' features.
    from medenhance.triage.data import load_labelled, train_val_split
    from medenhance.triage.train import oneclass_split

    data = load_labelled(folders / "train", ["NORMAL"], 64)
    data.images = model_inputs(data.images, scorer.info)
    train, _ = oneclass_split(data, *train_val_split(data, 0.25, 0), lambda line: None)
    features = net.density_features(torch.from_numpy(data.images[train])[:, None]).numpy()
    mean, precision = fit_gaussian(features.astype(np.float64), covariance)
    np.testing.assert_allclose(net.feature_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.feature_precision.numpy(), precision, rtol=1e-3, atol=1e-3)
    # Scores are the calibrated distance, and a bright blob in a normal study is found.
    files = sorted((folders / "test" / "NORMAL").iterdir()) + sorted(
        (folders / "test" / "PNEUMONIA").iterdir())
    frames = model_inputs(np.stack([triage_frame(read_image(f), 64) for f in files]), scorer.info)
    prob, dist = scorer.score_frames(frames)
    a, b = scorer.info["platt"]
    np.testing.assert_allclose(prob, expit(a * (dist - b)), atol=1e-9)
    labels = np.r_[np.zeros(30), np.ones(30)]
    assert auroc(labels, prob) > 0.85
    maps = scorer.evidence_maps(frames[30:33])
    assert maps.shape == (3, 64, 64) and (maps >= 0).all()
    # A bright spot put into the upper right quarter of normal studies is where the map points.
    yy, xx = np.mgrid[0:64, 0:64]
    spotted = []
    for seed in range(5):
        study = _study(np.random.default_rng(200 + seed), False).astype(np.float64) / 255
        spotted.append(np.clip(study + 0.35 * ((yy - 16) ** 2 + (xx - 48) ** 2 < 40), 0, 1))
    maps = scorer.evidence_maps(model_inputs(np.stack(spotted).astype(np.float32), scorer.info))
    peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
    assert all(y < 32 <= x for y, x in peaks), peaks
    # A network with fixed features cannot be trained, nor be a classifier.
    for extra in ("epochs: 3\n", "kind: supervised\n", "oneclass_score: patch-nn\n"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(config.read_text().replace("epochs: 0\n", "").replace(
            "kind: oneclass\n", "") + ("" if "epochs" in extra else "epochs: 0\n")
            + ("" if "kind" in extra else "kind: oneclass\n") + extra)
        refused = runner.invoke(app, ["train-triage", "-c", str(bad)])
        assert refused.exit_code != 0 and "fixed features" in refused.output, extra
    # A handful of normal validation images: the model is saved, with a warning that says so.
    few_val = runner.invoke(app, ["train-triage", "-c", str(config), "--set", "val_fraction=0.08",
                                  "--set", "register=false", "--set", "robustness=false",
                                  "--set", f"output_dir={tmp_path / 'few-val'}"])
    assert few_val.exit_code == 0, few_val.output
    assert re.search(r"warning: the operating point rests on \d normal validation image",
                     " ".join(few_val.output.split())), few_val.output
    # Settings of network training would be ignored: they are refused, not silently dropped.
    for setting in ("augment=strong", "oneclass_method=synthetic", "max_zoom=1.3"):
        refused = runner.invoke(app, ["train-triage", "-c", str(config), "--set", setting])
        assert refused.exit_code == 1 and "settings of network training" in refused.output
    # A filter bank it cannot build is refused before any image is read.
    refused = runner.invoke(app, ["train-triage", "-c", str(config), "--set",
                                  "model_args={wavelengths: [1]}"])
    assert refused.exit_code == 1 and "model_args: wavelengths >= 2 px" in refused.output
    assert "training" not in refused.output and "Traceback" not in refused.output
    # One normal training image is no Gaussian (its covariance is not finite).
    few = tmp_path / "few"
    rng = np.random.default_rng(5)
    for i in range(2):          # one for training, one for validation
        write_image(from_array(_study(rng, False)), few / "NORMAL" / f"n{i}.png")
    for i in range(6):
        write_image(from_array(_study(rng, True)), few / "PNEUMONIA" / f"a{i}.png")
    refused = runner.invoke(app, ["train-triage", "-c", str(config), "--set", f"data={few}",
                                  "--set", "register=false", "--set", "robustness=false",
                                  "--set", "val_fraction=0.5",
                                  "--set", f"output_dir={tmp_path / 'few-run'}"])
    assert refused.exit_code == 1, refused.output
    assert "too few to fit the feature Gaussian" in " ".join(refused.output.split())


def test_training_warns_about_a_model_not_to_use() -> None:
    from medenhance.triage.train import validation_warnings

    labels = np.r_[np.zeros(20), np.ones(20)]
    good = np.r_[np.linspace(0.0, 0.4, 20), np.linspace(0.6, 1.0, 20)]
    assert validation_warnings(labels, good, 1.0) == []
    lines = validation_warnings(labels, good[::-1], 0.0)
    assert len(lines) == 1 and "AUROC 0.000" in lines[0]
    flat = np.full(40, 0.7992) + np.linspace(0, 4e-4, 40)
    assert any("calibration is flat" in line for line in validation_warnings(labels, flat, 1.0))
    few = validation_warnings(np.r_[np.zeros(3), np.ones(30)], np.linspace(0, 1, 33), 1.0)
    assert len(few) == 1 and "3 normal validation image(s)" in few[0]


@pytest.mark.parametrize("crop", [True, False])
def test_every_path_reads_frames_as_the_model_was_trained(folders: Path, tmp_path: Path,
                                                          monkeypatch, crop: bool) -> None:
    """A model that crops to the content keeps a frame's proportions (``keep_aspect``), one that
    does not squeezes it: in training, scoring, heatmaps and both robustness measures alike, or
    a path would show the model frames unlike those it learnt from."""
    from medenhance.triage import data as triage_data
    from medenhance.triage.heatmap import write_heatmaps
    from medenhance.triage.robustness import model_robustness, validation_split

    asked: list[bool] = []
    sized = triage_data._sized

    def spy(frame: np.ndarray, size: int, keep_aspect: bool = False) -> np.ndarray:
        asked.append(keep_aspect)
        return sized(frame, size, keep_aspect)

    monkeypatch.setattr(triage_data, "_sized", spy)
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    config = _wavelet_config(folders, tmp_path, "tiny-aspect", f"crop: {str(crop).lower()}\n")
    result = runner.invoke(app, ["train-triage", "-c", str(config)])
    assert result.exit_code == 0, result.output
    files = sorted((folders / "test" / "NORMAL").iterdir())[:3] + sorted(
        (folders / "test" / "PNEUMONIA").iterdir())[:3]
    scorer = TriageScorer("tiny-aspect")
    paths = {"training": lambda: None,
             "scoring": lambda: scorer.score_files(files),
             "heatmaps": lambda: write_heatmaps(scorer, list(enumerate(
                 scorer.score_files(files), 1)), tmp_path / "heat"),
             "robustness on files": lambda: model_robustness(scorer, files,
                                                             np.r_[np.zeros(3), np.ones(3)]),
             "validation split": lambda: validation_split(scorer)}
    for name, call in paths.items():
        if name != "training":
            asked.clear()
            call()
        assert asked and set(asked) == {crop}, name


def test_links_into_a_prepared_datasets_test_split_are_not_training_images(tmp_path: Path) -> None:
    """A model trained on a prepared dataset saw its train and val splits only: links to its test
    images are unseen, links to its train images are not."""
    from types import SimpleNamespace

    from medenhance.triage.evaluate import training_overlap

    prepared = tmp_path / "prepared"
    rows = ["path,label,split"]
    for split in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            image = prepared / split / label / f"{split}_{label}.png"
            image.parent.mkdir(parents=True)
            image.write_bytes(f"{split} {label}: not read here".encode())
            rows.append(f"{image.relative_to(prepared)},{label},{split}")
    (prepared / "manifest.csv").write_text("\n".join(rows) + "\n")
    card = SimpleNamespace(name="m", training_data={"root": str(prepared)})
    links = tmp_path / "links"
    links.mkdir()
    for split in ("test", "train"):
        (links / f"{split}.png").symlink_to(prepared / split / "NORMAL" / f"{split}_NORMAL.png")
    assert training_overlap(card, links, None, [links / "test.png"]) is None
    # A card whose resolved folder is gone (a moved checkout) falls back on the folder as given.
    moved = SimpleNamespace(name="m", training_data={"root": str(prepared),
                                                     "root_resolved": str(tmp_path / "gone")})
    assert training_overlap(moved, links, None, [links / "train.png"]) is not None
    assert training_overlap(card, links, None, [links / "test.png", links / "train.png"]) == (
        f"1 of these images is (links to, or prepared from) training or validation images of "
        f"{prepared}, which m was trained and calibrated on")
    # The files its train and val images were prepared from are training images too.
    (tmp_path / "raw").mkdir()
    for split in ("train", "test"):
        (tmp_path / "raw" / f"{split}.png").write_bytes(f"{split} raw".encode())
    (prepared / "manifest.csv").write_text("\n".join(
        [rows[0] + ",source"] + [f"{r},{tmp_path / 'raw' / (r.split(',')[2] + '.png')}"
                                 for r in rows[1:] if r.split(",")[2] in ("train", "test")])
        + "\n")
    assert training_overlap(card, tmp_path / "raw", None, [tmp_path / "raw" / "test.png"]) is None
    assert "1 of these images is (links to, or prepared from)" in training_overlap(
        card, tmp_path / "raw", None, [tmp_path / "raw" / "train.png"])


def test_evaluate_triage_counts_a_copied_image_once_and_leaves_out_contradicting_labels(
        folders: Path, tmp_path: Path) -> None:
    """One picture under two names was scored twice, even under a normal and an abnormal
    label; a study out of distribution had flag 0 in scores.csv and 1 in the worklist."""
    data = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (data / label).mkdir(parents=True)
        for src in sorted((folders / "test" / label).iterdir())[:6]:
            (data / label / src.name).write_bytes(src.read_bytes())
    normal = sorted((data / "NORMAL").iterdir())
    (data / "NORMAL" / "again.png").write_bytes(normal[0].read_bytes())       # same label
    (data / "PNEUMONIA" / "relabelled.png").write_bytes(normal[1].read_bytes())  # the other
    mri = SAMPLES / "mri_brain_glioma_Te-gl_0063.png"      # a radiograph model's foreign study
    (data / "NORMAL" / "mri.png").write_bytes(mri.read_bytes())
    result = runner.invoke(app, ["evaluate-triage", str(data), "-m", "xray-pneumonia", "-o",
                                 str(tmp_path / "ev"), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "1 image(s) lie under a normal and an abnormal label and were left out" in said
    assert "relabelled.png" in said and "1 file(s) repeat an image already read" in said
    assert "out of distribution (unlike anything the model was trained on)" in said
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert (summary["n_normal"], summary["n_abnormal"]) == (6, 6)     # 6+2 and 6+1, less 3
    first, second = sorted([str(data / "NORMAL" / "again.png"), str(normal[0])])
    assert summary["repeats"] == [f"{second}: the same image as {first}"]
    assert len(summary["conflicts"]) == 1 and str(normal[1]) in summary["conflicts"][0]
    with open(tmp_path / "ev" / "scores.csv", newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert not {"relabelled.png", normal[1].name} & set(rows)
    assert len({"again.png", normal[0].name} & set(rows)) == 1
    assert rows["mri.png"]["ood"] == rows["mri.png"]["flag"] == "1"
    for row in rows.values():
        assert int(row["flag"]) == max(int(row["above_threshold"]), int(row["ood"]))
        assert int(row["above_threshold"]) == int(float(row["score"]) >= summary["threshold"])
    abnormal = [r for r in rows.values() if r["label"] == "1"]
    assert summary["sensitivity"] == pytest.approx(
        sum(int(r["above_threshold"]) for r in abnormal) / len(abnormal))


def test_evaluate_triage_refuses_standard_output_and_a_csv_that_is_no_dataset(
        folders: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate-triage", str(folders / "test"), "-m",
                                 "xray-pneumonia", "-o", "-"])
    assert result.exit_code == 1 and "-o -: an evaluation writes a folder" in result.output
    assert not (tmp_path / "-").exists()
    (tmp_path / "worklist.csv").write_text("rank,path,score\n1,a.png,0.9\n")
    result = runner.invoke(app, ["evaluate-triage", "worklist.csv", "-m", "xray-pneumonia",
                                 "-o", "ev"])      # said "ev: inside the evaluated data ."
    assert result.exit_code == 1 and "worklist.csv: no 'label' column" in result.output


def test_an_unknown_triage_model_lists_triage_models_only(folders: Path) -> None:
    result = runner.invoke(app, ["triage", str(folders / "test"), "-m", "xray-triag", "-o",
                                 "-"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "unknown model 'xray-triag'; available triage models:" in said
    assert "xray-triage" in said and "xray-denoise" not in said
    result = runner.invoke(app, ["triage", str(folders / "test"), "-m", "", "-o", "-"])
    assert result.exit_code == 1 and "no model given" in result.output


def test_frame_range_percentiles_is_how_the_model_is_fitted_and_scored(
        folders: Path, tmp_path: Path, monkeypatch) -> None:
    """``frame_range: percentiles`` reaches the card, the Gaussian's fit and scoring alike."""
    from medenhance.errors import ConfigError
    from medenhance.triage.data import (load_labelled, percentile_range, train_val_split,
                                        triage_frame)
    from medenhance.triage.train import load_triage_config, oneclass_split

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    config = _wavelet_config(folders, tmp_path, "tiny-percentiles", "frame_range: percentiles\n")
    with pytest.raises(ConfigError, match="frame_range must be own or percentiles, got 'max'"):
        load_triage_config(config, ["frame_range=max"])
    result = runner.invoke(app, ["train-triage", "-c", str(config)])
    assert result.exit_code == 0, result.output
    scorer = TriageScorer("tiny-percentiles")
    net = scorer.model.network
    assert scorer.info["frame_range"] == "percentiles"
    assert scorer.model.card.config["frame_range"] == "percentiles"
    data = load_labelled(folders / "train", ["NORMAL"], 64)
    train, _ = oneclass_split(data, *train_val_split(data, 0.25, 0), lambda line: None)
    features = net.density_features(torch.from_numpy(percentile_range(data.images[train]))[:, None])
    np.testing.assert_allclose(net.feature_mean.numpy(), features.double().mean(0).numpy(),
                               atol=1e-4)
    files = sorted((folders / "test" / "PNEUMONIA").iterdir())[:4]
    frames = np.stack([triage_frame(read_image(f), 64) for f in files])
    _, dist = scorer.score_frames(percentile_range(frames))
    assert [r.distance for r in scorer.score_files(files)] == pytest.approx(dist.tolist(),
                                                                          rel=1e-5)


def test_copies_form_groups_that_count_once_or_not_at_all() -> None:
    """Copies were judged in pairs: a chain (a byte copy of a DICOM copy) kept its first file
    under a label its last one contradicted, and a copy was "counted once" when its group was
    left out."""
    from medenhance.triage.evaluate import _resolve_copies

    labels = {"N/a": {"NORMAL"}, "N/b": {"NORMAL"}, "P/c": {"PNEUMONIA"}, "N/d": {"NORMAL"},
              "N/e": {"NORMAL"}, "N/f": {"NORMAL", "PNEUMONIA"}, "N/g": {"NORMAL"}}
    copies = {"N/b": "N/a", "P/c": "N/b", "N/e": "N/d"}        # c -> b (bytes) -> a (SOP UID)
    repeats, conflicts, dropped = _resolve_copies(list(labels), labels, copies, {"normal"})
    assert dropped == {"N/a", "N/b", "P/c", "N/f"}
    assert conflicts == ["N/a and N/b and P/c: the same image, labelled NORMAL and PNEUMONIA",
                         "N/f: one file, labelled NORMAL and PNEUMONIA"]
    assert repeats == ["N/e: the same image as N/d"]


def test_evaluate_triage_follows_a_chain_of_copies_and_a_manifest_listing_a_file_twice(
        folders: Path, tmp_path: Path) -> None:
    import pydicom

    from medenhance.errors import DatasetError
    from medenhance.triage.evaluate import evaluate_triage_folder

    data = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (data / label).mkdir(parents=True)
        for src in sorted((folders / "test" / label).iterdir())[:4]:
            (data / label / src.name).write_bytes(src.read_bytes())
    dicom = SAMPLES / "cr_chest_RG1_J2KI.dcm"
    (data / "NORMAL" / "a.dcm").write_bytes(dicom.read_bytes())
    ds = pydicom.dcmread(dicom)
    ds.PatientName = "Other^Bytes"                  # the same SOP Instance UID, other bytes
    ds.save_as(data / "NORMAL" / "b.dcm")
    (data / "PNEUMONIA" / "c.dcm").write_bytes((data / "NORMAL" / "b.dcm").read_bytes())
    result = evaluate_triage_folder(data, "xray-pneumonia", tmp_path / "ev", n_bootstrap=10)
    assert (result["n_normal"], result["n_abnormal"]) == (4, 4) and result["repeats"] == []
    assert [c.split(": ")[1] for c in result["conflicts"]] == [
        "the same image, labelled NORMAL and PNEUMONIA"]
    # A manifest that lists one file twice: one study; under two labels, none.
    rows = [(f.relative_to(data), f.parent.name) for f in sorted(data.glob("*/p*.png"))]
    for extra, name in (([rows[0]], "twice"), ([(rows[0][0], "PNEUMONIA")], "relabelled")):
        (data / f"{name}.csv").write_text("path,label,split\n" + "".join(
            f"{p},{lab},test\n" for p, lab in rows + extra))
        result = evaluate_triage_folder(data / f"{name}.csv", "xray-pneumonia",
                                        tmp_path / name, n_bootstrap=10)
        assert result["n_normal"] == (4 if name == "twice" else 3) and result["n_abnormal"] == 4
    only = tmp_path / "only"                         # nothing left: said, not an IndexError
    (only / "NORMAL").mkdir(parents=True)
    (only / "PNEUMONIA").mkdir()
    for label in ("NORMAL", "PNEUMONIA"):
        (only / label / "x.png").write_bytes((data / rows[0][0]).read_bytes())
    with pytest.raises(DatasetError, match="nothing to evaluate of its 2 images: 2 were left out "
                                           "as one image under a normal and an abnormal label"):
        evaluate_triage_folder(only, "xray-pneumonia", tmp_path / "ev-only", n_bootstrap=10)


def test_evaluate_triage_knows_a_picture_by_its_grey_levels_not_its_bytes(
        folders: Path, tmp_path: Path) -> None:
    """A picture saved again (other compression, other bytes) is the same picture, as
    train-triage finds copies."""
    from PIL import Image

    from medenhance.triage.evaluate import evaluate_triage_folder

    data = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (data / label).mkdir(parents=True)
        for src in sorted((folders / "test" / label).iterdir())[:4]:
            (data / label / src.name).write_bytes(src.read_bytes())
    first = sorted((data / "NORMAL").iterdir())[0]
    Image.open(first).save(data / "PNEUMONIA" / "deeper.png", compress_level=0)
    assert (data / "PNEUMONIA" / "deeper.png").read_bytes() != first.read_bytes()
    result = evaluate_triage_folder(data, "xray-pneumonia", tmp_path / "ev", n_bootstrap=10)
    assert (result["n_normal"], result["n_abnormal"]) == (3, 4)
    assert result["conflicts"] == [f"{first} and {data / 'PNEUMONIA' / 'deeper.png'}: the same "
                                   "image, labelled NORMAL and PNEUMONIA"]


def test_evaluate_triage_warns_when_the_operating_point_is_worse_than_on_validation(
        shared: Path, tmp_path: Path) -> None:
    """Specificity 0.20 against 0.80 on validation passed without a word: the warning asked for
    a specificity under 0.05 or a sensitivity 0.10 under target."""
    import shutil

    from medenhance.models.card import bundled_dir

    data = tmp_path / "data"
    for label, n in (("NORMAL", 40), ("PNEUMONIA", 10)):
        (data / label).mkdir(parents=True)
        for src in sorted((shared / "xray-chest-kermany-224" / "test" / label).iterdir())[:n]:
            (data / label / src.name).symlink_to(src)
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate-triage", str(data), "-m", "xray-triage", "-o",
                                 str(tmp_path / "ev"), "--bootstrap", "100"])
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    said = " ".join(result.output.split())
    assert result.exit_code == 0, said
    from medenhance.triage.evaluate import validation_low
    from medenhance.triage.metrics import wilson_ci

    validation = summary["validation"]
    assert validation["normal"] == 170          # counted in the card: Wilson on both sides
    low = wilson_ci(round(validation["specificity"] * 170), 170)[0]
    assert validation_low(validation["specificity"], 170) == low > summary["specificity_ci"][1]
    assert validation_low(0.9, None) == pytest.approx(0.85)     # older cards: 0.05 of slack
    # 14 of 18 validation normals (mri-triage): 0.778 is weak evidence, and a test interval
    # up to 0.65 is no worse beyond chance (the 0.05 of slack would have said it was).
    assert validation_low(14 / 18, 18) < 0.65 < 14 / 18 - 0.05
    assert validation_low(14 / 18, 18.0) == validation_low(14 / 18, 18)
    for odd in (1.2, -0.1, float("nan")):          # hand-edited cards: no warning, no crash
        assert validation_low(odd, 100) == -np.inf
    assert validation_low(0.9, True) == pytest.approx(0.85)
    assert (f"specificity {summary['specificity']:.3f} [{summary['specificity_ci'][0]:.3f}, "
            f"{summary['specificity_ci'][1]:.3f}] against "
            f"{summary['validation']['specificity']:.3f} on validation") in said
    assert "does not hold on these studies" in said
    assert summary["operating_point"] in said               # kept in summary.json too
    # The same model, said to have done no better on validation: no warning.
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(bundled_dir() / f"xray-triage{suffix}", tmp_path / f"m{suffix}")
    card = json.loads((tmp_path / "m.json").read_text())
    card["metrics"]["val_specificity"] = summary["specificity"]
    (tmp_path / "m.json").write_text(json.dumps(card))
    modest = runner.invoke(app, ["evaluate-triage", str(data), "-m",
                                 str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "ev2"),
                                 "--bootstrap", "100"])
    assert modest.exit_code == 0 and "does not hold" not in modest.output
    assert json.loads((tmp_path / "ev2" / "summary.json").read_text())["operating_point"] is None
    assert "right way round" not in modest.output
    # The labels the wrong way round: said so.
    swapped = runner.invoke(app, ["evaluate-triage", str(data), "-m", "xray-pneumonia",
                                  "--normal", "PNEUMONIA", "-o", str(tmp_path / "ev3"),
                                  "--bootstrap", "100"])
    assert swapped.exit_code == 0 and "are the labels the right way round" in " ".join(
        swapped.output.split())


@pytest.mark.parametrize("change,said", [
    ({"threshold": "high"}, "threshold 'high' is not a score from 0 to 1"),
    ({"threshold": 1.5}, "threshold 1.5 is not a score from 0 to 1"),
    ({"platt": None}, "platt None is not two numbers"),
    ({"kind": "magic"}, "kind 'magic' is neither supervised nor oneclass"),
    ({"ood_distance": None}, "ood_distance None is not a number"),
    ({"smallest_side": 0}, "smallest_side 0 is not a number of pixels"),
    ({"size": "128"}, "size '128' is not a number of pixels"),
    ({"threshold_logit": "x"}, "threshold_logit 'x' is not a number"),
    ({"threshold": 0.5, "threshold_logit": 2.0}, "(a score of 0.880797) disagree: edit both"),
])
def test_a_hand_edited_triage_card_is_refused_in_one_line(tmp_path: Path, change: dict,
                                                          said: str) -> None:
    """A threshold of "high" or a card without platt failed with a 60-line traceback; a
    threshold of 1.5 flagged nothing without a word."""
    import shutil

    from medenhance.models.card import bundled_dir

    for suffix in (".safetensors", ".json"):
        shutil.copyfile(bundled_dir() / f"xray-triage{suffix}", tmp_path / f"m{suffix}")
    card = json.loads((tmp_path / "m.json").read_text())
    card["extra"]["triage"].update(change)
    (tmp_path / "m.json").write_text(json.dumps(card))
    image = Path(__file__).parents[2] / "samples" / "xray_chest_nih_00009128_000.png"
    result = CliRunner().invoke(app, ["triage", str(image), "-m", str(tmp_path / "m.safetensors"),
                                      "-o", str(tmp_path / "w.csv")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert said in " ".join(result.output.split())
    assert not (tmp_path / "w.csv").exists()


def test_an_interrupted_triage_says_nothing_was_written(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C in `triage` and `evaluate-triage` exited 130 without a word."""
    from medenhance.triage import evaluate as evaluating
    from medenhance.triage.score import TriageScorer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TriageScorer, "score_files", interrupted)
    monkeypatch.setattr(evaluating, "evaluate_triage_folder", interrupted)
    samples = Path(__file__).parents[2] / "samples"
    (tmp_path / "w.csv").write_text("an earlier worklist")
    result = CliRunner().invoke(app, ["triage", str(samples), "-m", "xray-triage", "-o",
                                      str(tmp_path / "w.csv"), "--overwrite"])
    assert result.exit_code == 130 and "no worklist written" in result.output
    assert (tmp_path / "w.csv").read_text() == "an earlier worklist"
    (tmp_path / "d" / "NORMAL").mkdir(parents=True)
    result = CliRunner().invoke(app, ["evaluate-triage", str(tmp_path / "d"), "-m",
                                      "xray-triage", "-o", str(tmp_path / "ev")])
    assert result.exit_code == 130 and "the evaluation is not finished" in result.output


def test_a_flat_calibration_is_repeated_wherever_the_model_is_used(tmp_path: Path) -> None:
    """train-triage warned that a classifier's calibration hit its limit (every score about
    0.502), but triage and evaluate-triage listed the scores without a word."""
    import shutil

    from medenhance.models.card import bundled_dir
    from medenhance.triage.metrics import LOG_TEMPERATURE_BOUNDS

    for suffix in (".safetensors", ".json"):
        shutil.copyfile(bundled_dir() / f"xray-pneumonia{suffix}", tmp_path / f"m{suffix}")
    card = json.loads((tmp_path / "m.json").read_text())
    card["extra"]["triage"]["temperature"] = float(np.exp(LOG_TEMPERATURE_BOUNDS[1]))
    (tmp_path / "m.json").write_text(json.dumps(card))
    samples = Path(__file__).parents[2] / "samples"
    said = "warning: model xray-pneumonia: the calibration temperature hit its upper limit"
    flat = CliRunner().invoke(app, ["triage", str(samples), "-m", str(tmp_path / "m.safetensors"),
                                    "-o", str(tmp_path / "w.csv")])
    assert flat.exit_code == 0 and said in " ".join(flat.output.split())
    usual = CliRunner().invoke(app, ["triage", str(samples), "-m", "xray-pneumonia", "-o",
                                     str(tmp_path / "w2.csv")])
    assert usual.exit_code == 0 and "calibration temperature" not in usual.output


def test_train_triage_says_a_missing_data_folder_before_it_starts(tmp_path: Path) -> None:
    config = Path(__file__).parents[2] / "configs" / "xray-triage.yaml"
    result = CliRunner().invoke(app, ["train-triage", "-c", str(config), "--set",
                                      f"data={tmp_path / 'nowhere'}", "--set",
                                      f"output_dir={tmp_path / 'run'}", "--set", "register=false"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"data {tmp_path / 'nowhere'}: no such folder or file" in said
    assert "training" not in said and not (tmp_path / "run").exists()
    fraction = CliRunner().invoke(app, ["train-triage", "-c", str(config), "--set",
                                        "val_fraction=1.5"])
    assert fraction.exit_code == 1 and "val_fraction must be in (0, 1), got 1.5" in " ".join(
        fraction.output.split())


def test_scores_that_round_to_one_are_ranked_by_their_logits(tmp_path: Path,
                                                             monkeypatch) -> None:
    """A steep calibration rounded many scores to exactly 1.0: the worklist then sorted them by
    file name, and the AUROC counted them as ties."""
    from medenhance.triage.score import TriageScorer, worklist

    def steep(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Every score expit(40 + ...) = 1.0 in float64; the logit still tells them apart.
        return 40.0 + 10 * frames.mean(axis=(1, 2)), np.ones(len(frames))

    monkeypatch.setattr(TriageScorer, "score_logits", steep)
    data = tmp_path / "data"
    for label, side in (("NORMAL", 8), ("PNEUMONIA", 30)):
        (data / label).mkdir(parents=True)
        for i in range(5):
            pixels = np.zeros((64, 64), np.uint16)
            pixels[: side + 2 * i, : side + 2 * i] = 65535     # the larger, the higher
            write_image(from_array(pixels),
                        data / label / f"{'z' if label == 'PNEUMONIA' else 'a'}{i}.png")
    scorer = TriageScorer("xray-triage")
    results = worklist(scorer.score_files(sorted(data.rglob("*.png"))))
    assert {r.score for r in results} == {1.0}
    assert [Path(r.path).name for r in results[:5]] == [f"z{i}.png" for i in (4, 3, 2, 1, 0)]
    from medenhance.triage.evaluate import evaluate_triage_folder

    summary = evaluate_triage_folder(data, "xray-triage", tmp_path / "ev", n_bootstrap=100)
    assert summary["auroc"] == 1.0 and summary["auprc"] == 1.0
    assert summary["waits"]["triage_mean"] == pytest.approx(np.mean(np.arange(5)) * 5)
    with open(tmp_path / "ev" / "scores.csv", newline="") as fh:
        logits = {Path(row["path"]).name: float(row["logit"]) for row in csv.DictReader(fh)}
    assert logits["z4.png"] > logits["z0.png"] > logits["a4.png"] > 40
    # The threshold too: as a score it was 1.0, and every study at 1.0 was flagged (as it still
    # is for cards without threshold_logit).
    assert all(r.flag for r in results)
    import shutil

    from medenhance.models.card import bundled_dir

    for suffix in (".safetensors", ".json"):
        shutil.copyfile(bundled_dir() / f"xray-triage{suffix}", tmp_path / f"m{suffix}")
    card = json.loads((tmp_path / "m.json").read_text())
    card["extra"]["triage"].update(threshold=1.0,
                                   threshold_logit=(logits["z0.png"] + logits["a4.png"]) / 2)
    (tmp_path / "m.json").write_text(json.dumps(card))
    model = tmp_path / "m.safetensors"
    flags = {Path(r.path).name: r.flag for r in TriageScorer(model).score_files(
        sorted(data.rglob("*.png")))}
    assert flags == {name: int(name.startswith("z")) for name in flags}
    summary = evaluate_triage_folder(data, model, tmp_path / "ev2", n_bootstrap=100)
    assert summary["sensitivity"] == summary["specificity"] == 1.0
    said = CliRunner().invoke(app, ["triage", str(data), "-m", str(model), "-o",
                                    str(tmp_path / "w.csv")]).output
    assert "5 at or above the threshold 1.000 (logit " in " ".join(said.split())
    with open(tmp_path / "ev2" / "scores.csv", newline="") as fh:
        assert {Path(r["path"]).name: int(r["above_threshold"]) for r in csv.DictReader(fh)} \
            == flags


def test_byte_copies_of_training_images_count_pictures_only(tmp_path: Path) -> None:
    from medenhance.triage.evaluate import HEAD_BYTES, _byte_copies

    train, given = tmp_path / "train", tmp_path / "given"
    train.mkdir()
    given.mkdir()
    rng = np.random.default_rng(0)
    picture = rng.random((32, 32)).astype(np.float32)
    np.save(train / "picture.npy", picture)
    np.save(train / "blank.npy", np.zeros((32, 32), np.float32))
    # Same size and the same first HEAD_BYTES as a training file, different after them.
    long = rng.random((HEAD_BYTES // 4 + 64,)).astype(np.float32).reshape(1, -1)
    np.save(train / "long.npy", long)
    changed = long.copy()
    changed[0, -1] += 1
    for name in ("picture.npy", "blank.npy"):
        (given / name).write_bytes((train / name).read_bytes())
    np.save(given / "long.npy", changed)
    (given / "gone.npy").symlink_to(tmp_path / "nowhere.npy")      # a broken link: no match
    evaluated = {p.absolute() for p in given.iterdir()}
    assert _byte_copies(evaluated, train.resolve()) == 1          # the picture, not the blank
