"""The training loop on a tiny synthetic dataset: outputs, learning, resume, refusal to clobber."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medenhance.data.prepare import PrepareOptions, prepare_dataset
from medenhance.errors import ConfigError
from medenhance.io import write_image
from medenhance.image import from_array
from medenhance.models.card import load_model
from medenhance.train.config import apply_overrides, TrainConfig
from medenhance.train.loop import fit


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight smooth 64x64 'anatomies' (blurred blobs) as 8-bit PNGs, prepared 6/2/0."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    for i in range(8):
        img = 0.3 + 0.1 * np.sin(6 * xx + i) + 0.1 * np.cos(5 * yy * (1 + i / 8))
        for _ in range(4):
            cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.2)]
            img += 0.25 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
        write_image(from_array((np.clip(img, 0, 1) * 255).astype(np.uint8)),
                    root / "src" / f"im{i}.png")
    result = prepare_dataset([root / "src"], root / "prepared",
                             PrepareOptions(min_foreground=0.0, split=(0.75, 0.25, 0.0)))
    return result.manifest


def _config(manifest: Path, out: Path, **changes: object) -> TrainConfig:
    sets = [f"data.manifest={manifest}", f"output_dir={out}", "name=tiny", "register=false",
            "model.name=fastunet_small", "model.args.widths=[8, 8, 16]",
            "data.patch_size=32", "data.patches_per_epoch=32", "data.val_crop=64",
            "optim.batch_size=8", "optim.epochs=3", "optim.schedule=constant",
            "data.degradations=[{preset: gaussian-25}]", "threads=1", "weights_dtype=float32"]
    sets += [f"{k}={v}" for k, v in changes.items()]
    return apply_overrides(TrainConfig(), sets)


def test_fit_writes_a_usable_run_and_learns(manifest: Path, tmp_path: Path) -> None:
    config = _config(manifest, tmp_path / "run", **{"optim.epochs": 6, "optim.lr": 3e-3,
                                                  "data.patches_per_epoch": 256})
    result = fit(config, log=lambda _: None)
    run = tmp_path / "run"
    for name in ("config.yaml", "log.csv", "loss.png", "last.pt", "best.safetensors", "best.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    best = max(rows, key=lambda r: float(r["val_psnr"]))
    # Learned something real: better than the noisy input on held-out validation images.
    assert float(best["val_psnr"]) > float(best["val_psnr_input"]) + 1.0
    loaded = load_model(run / "best.safetensors")
    assert loaded.card.metrics["val_psnr"] == pytest.approx(float(best["val_psnr"]), abs=1e-4)
    assert loaded.card.training_data["images"] == {"train": 6, "val": 2, "test": 0}
    assert len(loaded.card.extra["history"]) == int(best["epoch"])
    assert result.best_epoch == int(best["epoch"])


def test_extra_training_set_is_used_and_recorded(manifest: Path, tmp_path: Path) -> None:
    config = _config(manifest, tmp_path / "run", **{
        "data.extra_train": f"[{{manifest: {manifest}, split: val, weight: 0.25}}]"})
    fit(config, log=lambda _: None)
    card = load_model(tmp_path / "run" / "best.safetensors").card
    (extra,) = card.training_data["extra_train"]
    assert (extra["split"], extra["share"], extra["images"]) == ("val", 0.25, 2)
    # Validation stays on the main manifest's validation split.
    assert card.training_data["images"] == {"train": 6, "val": 2, "test": 0}


def test_resume_continues_exactly(manifest: Path, tmp_path: Path) -> None:
    straight = fit(_config(manifest, tmp_path / "a"), log=lambda _: None)
    # Interrupt in epoch 3 (as a crash would), then resume.
    with pytest.raises(_Interrupt):
        fit(_config(manifest, tmp_path / "b"), log=lambda _: None, progress=_stop_after(2 * 4))
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(_config(manifest, tmp_path / "b"), log=lambda _: None)
    resumed = fit(_config(manifest, tmp_path / "b"), resume=True, log=lambda _: None)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert straight.history[-1]["val_psnr"] == pytest.approx(resumed.history[-1]["val_psnr"],
                                                             abs=1e-4)


class _Interrupt(Exception):
    pass


def _stop_after(steps: int):
    def progress(done: int, total: int, info: dict) -> None:
        if done > steps:
            raise _Interrupt
    return progress


def test_a_registered_model_and_a_run_are_replaced_only_when_asked(
        manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    fit(_config(manifest, tmp_path / "a", register="true", **{"optim.epochs": 1}),
        log=lambda _: None)
    registered = tmp_path / "models" / "tiny.safetensors"
    before = registered.read_bytes()
    # Another run under the same name would silently take over `-m tiny`.
    with pytest.raises(ConfigError, match="already registered"):
        fit(_config(manifest, tmp_path / "b", register="true"), log=lambda _: None)
    assert registered.read_bytes() == before and not (tmp_path / "b").exists()
    # The data a run was validated on cannot change under --resume.
    with pytest.raises(ConfigError, match=r"other data settings \(data.val_images\)"):
        fit(_config(manifest, tmp_path / "a", register="true", **{"data.val_images": 1}),
            resume=True, log=lambda _: None)
    # --overwrite starts the run again: nothing of the earlier run is left to mix with it,
    # even when the new run stops before its first epoch ends.
    with pytest.raises(_Interrupt):
        fit(_config(manifest, tmp_path / "a", register="true"), overwrite=True,
            log=lambda _: None, progress=_stop_after(1))
    left = {p.name for p in (tmp_path / "a").iterdir()}
    assert not left & {"last.pt", "best.safetensors", "best.json", "log.csv", "loss.png"}, left


def test_stages_of_a_bundled_recipe_may_each_register_under_its_name(
        manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a bundled model's name the registered copy is hidden by the bundled model anyway,
    so the configs/xray-denoise*.yaml stages run one after another without --overwrite."""
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    notes: list[str] = []
    for stage in ("s1", "s2"):
        fit(_config(manifest, tmp_path / stage, register="true", name="xray-denoise",
                    **{"optim.epochs": 1}), log=notes.append)
    assert (tmp_path / "models" / "xray-denoise.safetensors").exists()
    assert any("a bundled model is also called 'xray-denoise'" in n for n in notes)


def test_nothing_to_resume(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(_config(manifest, tmp_path / "c"), resume=True, log=lambda _: None)


def test_fine_tuning_starts_from_the_given_model(manifest: Path, tmp_path: Path) -> None:
    base = fit(_config(manifest, tmp_path / "base", **{"optim.epochs": 2}), log=lambda _: None)
    # With a zero learning rate nothing moves: the fine-tuned weights are the starting model's.
    tuned = fit(_config(manifest, tmp_path / "tuned", **{
        "model.init_from": str(tmp_path / "base"), "optim.lr": 1e-12, "optim.epochs": 1}),
        log=lambda _: None)
    start, end = load_model(base.best), load_model(tuned.best)
    for (key, a), b in zip(start.network.state_dict().items(), end.network.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=key)
    assert end.card.training_data["initialised_from"]["path"] == str(base.best)
    assert tuned.history[0]["val_psnr"] == pytest.approx(
        max(h["val_psnr"] for h in base.history), abs=1e-3)
    with pytest.raises(ConfigError, match="init_from .* is fastunet_small"):
        fit(_config(manifest, tmp_path / "bad", **{"model.init_from": str(tmp_path / "base"),
                                                 "model.args.widths": "[8, 16, 16]"}),
            log=lambda _: None)
    # The starting model is scored first, and an epoch must beat it: a run that only made it
    # worse registered its "best" epoch all the same.
    assert tuned.start["val_psnr"] == pytest.approx(tuned.history[0]["val_psnr"], abs=1e-3)
    said: list[str] = []
    worse = fit(_config(manifest, tmp_path / "worse", **{
        "model.init_from": str(tmp_path / "base"), "optim.lr": 0.5, "optim.epochs": 2}),
        log=said.append)
    assert max(h["val_psnr"] for h in worse.history) < worse.start["val_psnr"]
    assert worse.best_epoch == 0 and any("an epoch must beat it" in line for line in said)
    kept = load_model(worse.best)
    for (key, a), b in zip(start.network.state_dict().items(),
                           kept.network.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=key)
    assert kept.card.metrics["val_psnr"] == pytest.approx(worse.start["val_psnr"])


def test_init_from_a_shallower_model_grows_it(manifest: Path, tmp_path: Path) -> None:
    base = fit(_config(manifest, tmp_path / "base", **{"optim.epochs": 1}), log=lambda _: None)
    grown = fit(_config(manifest, tmp_path / "grown", **{
        "model.init_from": str(tmp_path / "base"), "model.args.blocks": "[2, 2, 6]",
        "optim.lr": 1e-12, "optim.epochs": 1}), log=lambda _: None)
    # The grown network starts as the base one, so it scores the same on the validation images.
    assert grown.history[0]["val_psnr"] == pytest.approx(base.history[0]["val_psnr"], abs=1e-3)
    card = load_model(grown.best).card
    assert card.arguments["blocks"] == [2, 2, 6]
    assert card.training_data["initialised_from"]["grown_from"] == {"widths": [8, 8, 16]}
    # A config that names no arguments fine-tunes the grown model as it is (the bundled
    # denoisers have 8 middle convolutions, the configs' default 4: the README's example).
    again = fit(_config(manifest, tmp_path / "again", **{
        "model.args": "{}", "model.init_from": str(tmp_path / "grown"), "optim.lr": 1e-12,
        "optim.epochs": 1}), log=lambda _: None)
    assert load_model(again.best).card.arguments == card.arguments
    assert again.history[0]["val_psnr"] == pytest.approx(grown.history[0]["val_psnr"], abs=1e-3)
    # Resumed, it keeps the arguments it started with, though the model it came from is gone.
    shutil.rmtree(tmp_path / "grown")
    resumed = fit(_config(manifest, tmp_path / "again", **{
        "model.args": "{}", "model.init_from": str(tmp_path / "grown"), "optim.lr": 1e-12,
        "optim.epochs": 2}), resume=True, log=lambda _: None)
    assert len(resumed.history) == 2
    assert load_model(resumed.best).card.arguments == card.arguments


def test_a_config_of_ones_own_in_the_run_folder_is_never_replaced(manifest: Path,
                                                                  tmp_path: Path) -> None:
    """With output_dir the config's own folder, train replaced the user's config.yaml by its
    normalised copy (comments lost), and a log.csv of theirs, without --overwrite."""
    run = tmp_path / "exp1"
    run.mkdir()
    (run / "config.yaml").write_text("# my notes\nname: tiny\n")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is not a config a run wrote"):
            fit(_config(manifest, run), log=lambda _: None, overwrite=overwrite)
    assert (run / "config.yaml").read_text() == "# my notes\nname: tiny\n"
    (run / "config.yaml").unlink()
    (run / "log.csv").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds a run \(log.csv\)"):
        fit(_config(manifest, run), log=lambda _: None)
    assert (run / "log.csv").read_text() == "mine"


@pytest.mark.parametrize("change,said", [
    ({"optim.min_lr": 1.0, "optim.schedule": "cosine"}, "optim.min_lr must be from 0 to"),
    ({"patience": -2}, "patience must be >= 0, got -2"),        # stopped after one epoch
    ({"max_minutes": -1}, "max_minutes must be > 0"),             # failed after setup
    ({"optim.epochs": -1}, "optim.epochs must be >= 1, got -1"),
    ({"data.val_images": 0}, "data.val_images must be >= 1, got 0"),
])
def test_config_values_that_ran_without_a_word_are_refused(manifest: Path, tmp_path: Path,
                                                           change: dict, said: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)):
        fit(_config(manifest, tmp_path / "run", **change), log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_data_errors_name_their_key(manifest: Path, tmp_path: Path) -> None:
    from medenhance.errors import DatasetError, DegradationError

    with pytest.raises(DatasetError, match="data.patch_size 4096: no training image"):
        fit(_config(manifest, tmp_path / "a", **{"data.patch_size": 4096}), log=lambda _: None)
    with pytest.raises(DegradationError, match=r"data.degradations\[1\]: unknown preset"):
        fit(_config(manifest, tmp_path / "b", **{
            "data.degradations": "[{preset: gaussian-25}, {preset: xray-lowdos}]"}),
            log=lambda _: None)


def test_resuming_a_finished_run_says_what_to_raise(manifest: Path, tmp_path: Path) -> None:
    """--resume on a finished run said "resuming at epoch 4" (of 3) and registered it again;
    on a run out of time it trained nothing and exited as if it had."""
    fit(_config(manifest, tmp_path / "done"), log=lambda _: None)
    with pytest.raises(ConfigError, match="finished its 3 epochs .*raise optim.epochs"):
        fit(_config(manifest, tmp_path / "done"), resume=True, log=lambda _: None)
    timed = fit(_config(manifest, tmp_path / "timed", max_minutes=1e-6), log=lambda _: None)
    assert len(timed.history) == 1 and "raise max_minutes and --resume" in timed.stopped
    with pytest.raises(ConfigError, match="used its max_minutes .*resumes included"):
        fit(_config(manifest, tmp_path / "timed", max_minutes=1e-6), resume=True,
            log=lambda _: None)
    more = fit(_config(manifest, tmp_path / "timed"), resume=True, log=lambda _: None)
    assert [h["epoch"] for h in more.history] == [1, 2, 3]
