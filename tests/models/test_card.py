"""Checkpoints: safetensors + model card round trip, name resolution, user model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medenhance.errors import ConfigError
from medenhance.models import create_model
from medenhance.models.card import (ModelCard, available_models, load_model, resolve_model,
                                    save_checkpoint)


@pytest.fixture()
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("MEDENHANCE_MODELS", str(folder))
    return folder


def _save(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("fastunet_small", widths=[8, 8, 16])
    card = ModelCard(name=path.stem, architecture="fastunet_small",
                     arguments={"widths": [8, 8, 16]}, modality="MR",
                     metrics={"val_psnr": 30.0})
    save_checkpoint(net, card, path, dtype=dtype)
    return net.eval()


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 0.0), (torch.float16, 2e-3)])
def test_round_trip_gives_the_same_outputs(tmp_path: Path, dtype: torch.dtype, tol: float) -> None:
    net = _save(tmp_path / "m.safetensors", dtype)
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.card.modality == "MR" and loaded.card.versions["torch"] == torch.__version__
    assert not loaded.network.training
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert (loaded.network(x) - net(x)).abs().max() <= tol
    size = (tmp_path / "m.safetensors").stat().st_size
    params = sum(p.numel() for p in net.parameters())
    assert size < params * (2 if dtype == torch.float16 else 4) + 20_000


def test_user_models_are_found_by_name(user_models: Path) -> None:
    _save(user_models / "my-model.safetensors")
    assert resolve_model("my-model") == user_models / "my-model.safetensors"
    assert ("user", "my-model") in {(o, c.name) for o, c, _ in available_models()}
    with pytest.raises(ConfigError, match="unknown model 'nope'; available models: .*my-model"):
        resolve_model("nope")


def test_bad_checkpoints_give_one_line_errors(tmp_path: Path, user_models: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint there"):
        load_model(tmp_path / "missing.safetensors")
    # A run folder that is not there (it said "need nope.safetensors and nope.json").
    with pytest.raises(ConfigError, match="nope: no such run folder or checkpoint"):
        load_model(tmp_path / "runs" / "nope")
    _save(tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(tmp_path / "m.safetensors")
    card = ModelCard(name="m", architecture="fastunet_small", arguments={"widths": [8, 8, 8]})
    (tmp_path / "m.json").write_text(card.to_json())
    with pytest.raises(ConfigError, match="weights do not fit"):
        load_model(tmp_path / "m.safetensors")
    _save(tmp_path / "m.safetensors")
    (tmp_path / "m.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="unreadable weights"):
        load_model(tmp_path / "m.safetensors")
    # Arguments the network refuses (a hand-edited card, or a newer version's argument).
    _save(tmp_path / "m.safetensors")
    for arguments in ({"widths": [8, 8, 16], "colour": 3}, {"widths": "wide"}):
        card = ModelCard(name="m", architecture="fastunet_small", arguments=arguments)
        (tmp_path / "m.json").write_text(card.to_json())
        with pytest.raises(ConfigError, match=r"m.json: arguments .* do not build fastunet_small"):
            load_model(tmp_path / "m.safetensors")


def test_a_symmetric_buffer_is_stored_as_its_upper_triangle(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from medenhance.models.card import UPPER_TRIANGLE

    net = create_model("wavelet_features", wavelengths=[4, 8], orientations=2, grid=2)
    n = net.density_dim
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    net.feature_precision.copy_(a @ a.T + torch.eye(n))
    net.feature_mean.copy_(torch.randn(n, generator=torch.Generator().manual_seed(1)))
    card = ModelCard(name="w", architecture="wavelet_features",
                     arguments={"wavelengths": [4, 8], "orientations": 2, "grid": 2})
    path = save_checkpoint(net, card, tmp_path / "w.safetensors")
    stored = load_file(str(path))
    assert "feature_precision" not in stored
    assert stored["feature_precision" + UPPER_TRIANGLE].shape == (n * (n + 1) // 2,)
    loaded = load_model(path).network
    assert torch.equal(loaded.feature_precision, net.feature_precision)
    x = torch.rand(3, 1, 32, 32)
    assert torch.equal(loaded(x), net.eval()(x))
    # A checkpoint written before, with the whole matrix, loads as it was.
    stored["feature_precision"] = net.feature_precision.clone()
    del stored["feature_precision" + UPPER_TRIANGLE]
    save_file(stored, str(path))
    assert torch.equal(load_model(path).network.feature_precision, net.feature_precision)
    # A triangle of the wrong length is a one-line error naming the file.
    stored["feature_precision" + UPPER_TRIANGLE] = torch.zeros(n)
    del stored["feature_precision"]
    save_file(stored, str(path))
    with pytest.raises(ConfigError, match=r"w.safetensors: weights do not fit .*upper_triangle"):
        load_model(path)
    stored["feature_precision"] = net.feature_precision.clone()
    save_file(stored, str(path))
    with pytest.raises(ConfigError, match="stored both whole and as feature_precision.upper"):
        load_model(path)
    # A matrix that is not symmetric is refused, not stored as a different one.
    net.feature_precision[0, 1] += 1.0
    with pytest.raises(ValueError, match="feature_precision is not a symmetric matrix"):
        save_checkpoint(net, card, tmp_path / "asymmetric.safetensors")
    assert not (tmp_path / "asymmetric.safetensors").exists()
