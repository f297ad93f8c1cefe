"""Classical baselines: the Anscombe pair, the Rician correction, and that they denoise."""

from __future__ import annotations

import numpy as np
import pytest

from medenhance.baselines.denoise import (NoiseModel, anscombe, classical_denoise,
                                          inverse_anscombe)
from medenhance.degrade import noise
from medenhance.degrade.pipeline import Pipeline
from medenhance.errors import ConfigError
from medenhance.io import read_image
from medenhance.methods import noise_model_from_record
from medenhance.metrics import psnr


@pytest.mark.parametrize("lam", [2.0, 10.0, 100.0])
def test_anscombe_stabilises_and_inverts_without_bias(lam: float) -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(lam, 400_000) + rng.normal(0, 2.0, 400_000)
    d = anscombe(counts, 2.0)
    assert d.std() == pytest.approx(1.0, abs=0.06)
    # The exact unbiased inverse maps E[f(z)] back to the mean count.
    assert inverse_anscombe(np.array([d.mean()]), 2.0)[0] == pytest.approx(lam, rel=0.03)


def test_rician_bias_is_removed() -> None:
    rng = np.random.default_rng(1)
    flat = np.full((96, 96), 0.3)
    noisy = noise.rician(flat, sigma=0.08, rng=rng)
    plain = classical_denoise(noisy, "nlm", NoiseModel("gaussian", sigma=0.08))
    fixed = classical_denoise(noisy, "nlm", NoiseModel("rician", sigma=0.08))
    assert abs(fixed.mean() - 0.3) < abs(plain.mean() - 0.3)
    assert fixed.mean() == pytest.approx(0.3, abs=0.01)


@pytest.fixture(scope="module")
def crop(samples) -> np.ndarray:
    return read_image(samples / "xray_chest_nih_00009128_000.png").pixels[300:428, 300:428]


@pytest.mark.parametrize("method", ["nlm", "bm3d"])
def test_methods_denoise(method: str, crop: np.ndarray) -> None:
    if method == "bm3d":
        pytest.importorskip("bm3d")
    rng = np.random.default_rng(2)
    noisy = np.clip(noise.gaussian(crop, sigma=25 / 255, rng=rng), 0, 1)
    out = classical_denoise(noisy, method, NoiseModel("gaussian", sigma=25 / 255))
    assert out.dtype == np.float32 and out.shape == crop.shape
    assert psnr(crop, out) > psnr(crop, noisy) + 8
    quantum = np.clip(noise.poisson_gaussian(crop, photons=500, electronic_sigma=2, rng=rng), 0, 1)
    out = classical_denoise(quantum, method,
                            NoiseModel("poisson_gaussian", photons=500, electronic_sigma=2))
    assert psnr(crop, out) > psnr(crop, quantum) + 4


def test_noise_model_from_record() -> None:
    record = Pipeline.from_preset("xray-lowdose").sample(0)
    model = noise_model_from_record(record)
    assert model is not None and model.kind == "poisson_gaussian"
    assert model.photons == record.steps[0].params["photons"]
    assert noise_model_from_record(Pipeline.from_preset("gaussian-25").sample(0)).sigma == \
        pytest.approx(25 / 255)
    assert noise_model_from_record(Pipeline.from_preset("sr-x2").sample(0)) is None


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown classical method"):
        classical_denoise(np.zeros((8, 8)), "wiener")
    with pytest.raises(ConfigError, match="photon count"):
        NoiseModel("poisson_gaussian")
