"""Denoising methods by name, behind one interface: trained models and classical baselines.

``get_method("bm3d")``, ``get_method("nlm")`` or ``get_method("xray-denoise")`` (any bundled/user
model or checkpoint path) returns a :class:`Method` whose ``apply(image, noise)`` maps a
:class:`MedicalImage` to a denoised one. ``noise`` is what the classical methods are told; a
degradation record written by ``medenhance degrade`` gives the true noise parameters
(:func:`noise_model_from_record`), so that BM3D and NLM get the right sigma, the Anscombe transform
for X-ray quantum noise and the Rician bias correction for MR magnitude data. Models are blind and
ignore it.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .baselines.denoise import NoiseModel, classical_denoise
from .errors import ConfigError
from .degrade.pipeline import DegradationRecord
from .image import MedicalImage
from .inference.enhance import EnhanceOptions, check_enhancement_model, enhance_image
from .models.card import LoadedModel, load_model

CLASSICAL = ("nlm", "bm3d")


def noise_model_from_record(record: DegradationRecord) -> NoiseModel | None:
    """The noise of a record made of one noise step (``None``: other or several degradations)."""
    noise_steps = [s for s in record.steps if s.op in ("gaussian", "poisson_gaussian", "rician")]
    if len(record.steps) != 1 or len(noise_steps) != 1:
        return None
    step = noise_steps[0]
    p = step.params
    if step.op == "poisson_gaussian":
        if not p.get("log_domain", True):
            return None
        return NoiseModel("poisson_gaussian", photons=float(p["photons"]),
                          electronic_sigma=float(p.get("electronic_sigma", 0.0)),
                          mu_max=float(p.get("mu_max", 4.0)))
    return NoiseModel(step.op, sigma=float(p["sigma"]))


@dataclass
class Method:
    """A named denoiser; ``seconds`` accumulates the time spent in :meth:`apply`."""

    name: str
    model: LoadedModel | None = None
    options: EnhanceOptions = field(default_factory=EnhanceOptions)
    seconds: list[float] = field(default_factory=list)

    def apply(self, image: MedicalImage, noise: NoiseModel | None = None) -> MedicalImage:
        start = time.perf_counter()
        if self.model is not None:
            out = enhance_image(image, self.model, self.options)
        else:
            frames = image.frames()
            pixels = np.stack([classical_denoise(f, self.name, noise) for f in frames])
            pixels = pixels.reshape(image.pixels.shape)
            told = "estimated noise" if noise is None else f"{noise.kind} noise model"
            out = image.with_pixels(pixels, f"denoise with {self.name} ({told})")
        self.seconds.append(time.perf_counter() - start)
        return out


def load_enhancement_model(name: str, device: str = "cpu") -> LoadedModel:
    """:func:`load_model`, refusing a triage model (it scores images; it cannot enhance them)."""
    return check_enhancement_model(load_model(name, device=device))


def get_method(name: str, options: EnhanceOptions | None = None) -> Method:
    """A classical method (``nlm``, ``bm3d``) or a trained model (name or checkpoint path)."""
    if name == "bm3d" and importlib.util.find_spec("bm3d") is None:    # before any work
        raise ConfigError("method bm3d needs the optional `bm3d` package (non-commercial "
                          "licence): pip install 'medenhance[eval]'")
    if name in CLASSICAL:
        return Method(name)
    loaded = load_enhancement_model(name, device=(options or EnhanceOptions()).device)
    path = Path(name)
    # A checkpoint path is labelled by its folder ("runs/x/best.safetensors" -> "x-best").
    label = name if path.suffix == "" and "/" not in name else f"{path.parent.name}-{path.stem}"
    return Method(label, loaded, options or EnhanceOptions())
