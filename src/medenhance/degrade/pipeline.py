"""Composable, seeded, replayable degradation pipelines.

A *pipeline* is a list of steps ``{"op": NAME, "params": {...}, "p": probability}``. A parameter is
a number, a string, or a range to draw from: ``{"uniform": [a, b]}``, ``{"loguniform": [a, b]}``,
``{"int": [a, b]}`` (inclusive) or ``{"choice": [v1, v2, ...]}``.

:meth:`Pipeline.sample` draws concrete parameters and one noise seed per step from an explicit seed
and returns a :class:`DegradationRecord`; :func:`apply_record` applies a record. The record is JSON,
and replaying it gives the same bytes, so every training pair can be reproduced exactly.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DegradationError
from ..image import MedicalImage, check_unit_range
from . import compression, motion, noise, resolution, scatter

#: Every degradation by name. Each takes an array on the [0, 1] scale and keyword parameters.
OPS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian": noise.gaussian,
    "poisson_gaussian": noise.poisson_gaussian,
    "rician": noise.rician,
    "low_field": noise.low_field,
    "blur": resolution.blur,
    "downsample": resolution.downsample,
    "blur_downsample": resolution.blur_downsample,
    "mri_motion": motion.mri_motion,
    "xray_motion_blur": motion.xray_motion_blur,
    "scatter": scatter.scatter,
    "jpeg": compression.jpeg,
}


def _sr(scale: int, method: str = "bicubic") -> dict[str, Any]:
    return {"description": f"blur (sigma 0-{0.4 * scale:.1f} px) and {method} down-sampling x{scale}",
            "modality": "any",
            "steps": [{"op": "blur_downsample", "params": {
                "scale": scale, "sigma": {"uniform": [0.0, 0.4 * scale]}, "method": method}}]}


#: Named pipelines for the common cases. ``medenhance degrade --list-presets`` shows them.
PRESETS: dict[str, dict[str, Any]] = {
    "gaussian-15": {"description": "Gaussian noise, sigma 15/255", "modality": "any",
                    "steps": [{"op": "gaussian", "params": {"sigma": 15 / 255}}]},
    "gaussian-25": {"description": "Gaussian noise, sigma 25/255", "modality": "any",
                    "steps": [{"op": "gaussian", "params": {"sigma": 25 / 255}}]},
    "gaussian-50": {"description": "Gaussian noise, sigma 50/255", "modality": "any",
                    "steps": [{"op": "gaussian", "params": {"sigma": 50 / 255}}]},
    "gaussian-blind": {"description": "Gaussian noise, sigma drawn from 2-55 (of 255)",
                       "modality": "any",
                       "steps": [{"op": "gaussian",
                                  "params": {"sigma": {"uniform": [2 / 255, 55 / 255]}}}]},
    "xray-lowdose": {"description": "X-ray quantum noise: 300-3000 photons/pixel (log domain) "
                                    "+ electronic noise 0-3 quanta", "modality": "CR/DX",
                     "steps": [{"op": "poisson_gaussian", "params": {
                         "photons": {"loguniform": [300, 3000]},
                         "electronic_sigma": {"uniform": [0.0, 3.0]}}}]},
    "xray-scatter": {"description": "scatter haze, fraction 0.1-0.4, kernel 30-60 px",
                     "modality": "CR/DX",
                     "steps": [{"op": "scatter", "params": {"fraction": {"uniform": [0.1, 0.4]},
                                                            "sigma": {"uniform": [30, 60]}}}]},
    "xray-motion": {"description": "linear motion blur, 3-12 px at any angle", "modality": "CR/DX",
                    "steps": [{"op": "xray_motion_blur", "params": {
                        "length": {"uniform": [3, 12]}, "angle": {"uniform": [0, 180]}}}]},
    "mri-rician": {"description": "Rician noise, sigma 0.02-0.10", "modality": "MR",
                   "steps": [{"op": "rician", "params": {"sigma": {"uniform": [0.02, 0.10]}}}]},
    "mri-lowfield": {"description": "3 T -> 1.5 T SNR loss (noise x2, Rician); source noise "
                                    "estimated from the image", "modality": "MR",
                     "steps": [{"op": "low_field", "params": {"field_from": 3.0,
                                                              "field_to": 1.5}}]},
    "mri-motion": {"description": "k-space motion ghosting: 1-4 movements of up to 2-8 px",
                   "modality": "MR",
                   "steps": [{"op": "mri_motion", "params": {
                       "max_shift": {"uniform": [2, 8]}, "n_movements": {"int": [1, 4]}}}]},
    "jpeg": {"description": "JPEG compression, quality 20-60", "modality": "any",
             "steps": [{"op": "jpeg", "params": {"quality": {"int": [20, 60]}}}]},
    "sr-x2": _sr(2), "sr-x3": _sr(3), "sr-x4": _sr(4),
    "sr-x2-area": _sr(2, "area"), "sr-x4-area": _sr(4, "area"),
}


def _draw(name: str, spec: Any, rng: np.random.Generator) -> Any:
    if not isinstance(spec, Mapping):
        return spec
    if len(spec) != 1:
        raise DegradationError(f"parameter {name}: a range is one of uniform/loguniform/int/choice, "
                               f"got {dict(spec)}")
    kind, args = next(iter(spec.items()))
    if kind not in ("uniform", "loguniform", "int", "choice"):    # before its values are judged
        raise DegradationError(f"parameter {name}: unknown range kind {kind!r} (known: uniform, "
                               "loguniform, int, choice)")
    if kind == "choice":
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence) or not args:
            raise DegradationError(f"parameter {name}: choice needs a list of values, got {args}")
        return args[int(rng.integers(len(args)))]
    if not (isinstance(args, Sequence) and len(args) == 2):
        raise DegradationError(f"parameter {name}: {kind} needs [low, high], got {args}")
    try:
        low, high = float(args[0]), float(args[1])
    except (TypeError, ValueError):
        raise DegradationError(f"parameter {name}: {kind} needs two numbers, got {args}") from None
    if high < low:
        raise DegradationError(f"parameter {name}: {kind} range [{low}, {high}] is empty")
    if kind == "uniform":
        return float(rng.uniform(low, high))
    if kind == "loguniform":
        if low <= 0:
            raise DegradationError(f"parameter {name}: loguniform needs low > 0")
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return int(rng.integers(int(low), int(high) + 1))       # int


@dataclass
class Step:
    """One applied degradation: operation, concrete parameters and its own noise seed."""

    op: str
    params: dict[str, Any]
    seed: int


@dataclass
class DegradationRecord:
    """Everything needed to replay a degradation to the same bytes."""

    steps: list[Step]
    pipeline: str | None = None
    seed: int | None = None
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One-line human description, e.g. for a DICOM Derivation Description."""
        parts = []
        for s in self.steps:
            args = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in s.params.items())
            parts.append(f"{s.op}({args})")
        return "simulated degradation: " + (" -> ".join(parts) if parts else "none")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DegradationRecord:
        try:
            data = json.loads(text)
            steps = [Step(**s) for s in data.pop("steps")]
            return cls(steps=steps, **data)
        except (ValueError, TypeError, KeyError) as exc:
            raise DegradationError(f"not a degradation record: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> DegradationRecord:
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as exc:
            raise DegradationError(f"{path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise DegradationError(f"{path}: not a degradation record (not text)") from None
        except DegradationError as exc:
            raise DegradationError(f"{path}: {exc}") from None


def _check_step(index: int, step: Mapping[str, Any]) -> None:
    if not isinstance(step, Mapping) or "op" not in step:
        raise DegradationError(f"step {index}: expected {{'op': NAME, 'params': {{...}}}}, "
                               f"got {step!r}")
    op = step["op"]
    if not isinstance(step.get("params", {}), Mapping):
        raise DegradationError(f"step {index} ({op}): params must be a mapping, "
                               f"got {step.get('params')!r}")
    if op not in OPS:
        raise DegradationError(f"step {index}: unknown degradation {op!r}; "
                               f"choose from {', '.join(sorted(OPS))}")
    signature = inspect.signature(OPS[op]).parameters
    allowed = set(signature) - {"x", "rng"}
    stray = sorted(set(step) - {"op", "params", "p"})
    if stray:
        raise DegradationError(f"step {index} ({op}): unknown key(s) {stray}; a step has op, "
                               f"params and p, and {op}'s parameters go under params")
    params = step.get("params", {})
    unknown = set(params) - allowed
    if unknown:
        raise DegradationError(f"step {index} ({op}): unknown parameter(s) {sorted(unknown)}; "
                               f"{op} takes {sorted(allowed)}")
    missing = sorted(n for n in allowed - set(params)
                     if signature[n].default is inspect.Parameter.empty)
    if missing:
        raise DegradationError(f"step {index} ({op}): missing parameter(s) {missing} under "
                               "params")
    for name, spec in params.items():   # a bad range fails here, not on every image later
        try:
            _draw(name, spec, np.random.default_rng(0))
        except DegradationError as exc:
            raise DegradationError(f"step {index} ({op}): {exc}") from None
    p = step.get("p", 1.0)
    if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise DegradationError(f"step {index} ({op}): probability p must be in [0, 1], got {p}")


class Pipeline:
    """A composable degradation; see the module docstring for the step format.

    Examples
    --------
    >>> import numpy as np
    >>> pipe = Pipeline.from_preset("gaussian-25")
    >>> noisy, record = pipe(np.full((64, 64), 0.5), seed=1)
    >>> np.array_equal(apply_record(np.full((64, 64), 0.5), record), noisy)
    True
    """

    def __init__(self, steps: Sequence[Mapping[str, Any]], name: str | None = None) -> None:
        if not steps:
            raise DegradationError("a pipeline needs at least one step")
        for i, step in enumerate(steps):
            _check_step(i, step)
        self.steps = [dict(s) for s in steps]
        self.name = name
        self._try_once()

    def _try_once(self) -> None:
        """Apply every step once, with values drawn from its ranges, to a small grey image: a
        value no step can take (sigma -5, quality 500) is then one error naming the step, not
        one error per image of a batch. (One draw: a range only partly valid still fails per
        image.)"""
        rng = np.random.default_rng(0)
        grey = np.full((64, 64), 0.5)
        for i, step in enumerate(self.steps):
            params = {k: _draw(k, v, rng) for k, v in step.get("params", {}).items()}
            try:
                apply_record(grey, DegradationRecord([Step(step["op"], params, 0)]))
            except DegradationError as exc:
                text = str(exc)       # said of step 0, the only one of the trial record
                if "too small" in text:     # of the trial image, not of the images to come
                    continue
                text = text.split(": ", 1)[1] if text.startswith("step 0 (") else text
                raise DegradationError(f"step {i} ({step['op']}): {text}") from None

    @classmethod
    def from_preset(cls, name: str) -> Pipeline:
        if name not in PRESETS:
            raise DegradationError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(PRESETS[name]["steps"], name=name)

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        """Load ``{"steps": [...]}`` or a bare list of steps from JSON or YAML."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise DegradationError(f"{path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise DegradationError(f"{path}: not valid JSON/YAML ({exc})") from None
        except UnicodeDecodeError:
            raise DegradationError(f"{path}: not a pipeline file (not text: an image?)") from None
        steps = data.get("steps") if isinstance(data, Mapping) else data
        if not isinstance(steps, list):
            raise DegradationError(f"{path}: expected a list of steps or {{'steps': [...]}}")
        try:
            return cls(steps, name=Path(path).stem)
        except DegradationError as exc:
            raise DegradationError(f"{path}: {exc}") from None

    def sample(self, seed: int | np.random.Generator) -> DegradationRecord:
        """Draw concrete parameters (and per-step noise seeds) from ``seed``."""
        if not isinstance(seed, np.random.Generator) and (
                isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise DegradationError(f"seed must be a whole number >= 0 (or a numpy Generator), "
                                   f"got {seed!r}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        steps = []
        for step in self.steps:
            apply = rng.uniform() < float(step.get("p", 1.0))
            params = {k: _draw(k, v, rng) for k, v in step.get("params", {}).items()}
            step_seed = int(rng.integers(2**63 - 1))
            if apply:
                steps.append(Step(step["op"], params, step_seed))
        return DegradationRecord(steps=steps, pipeline=self.name,
                                 seed=None if isinstance(seed, np.random.Generator) else int(seed))

    def __call__(self, x: np.ndarray, seed: int | np.random.Generator
                 ) -> tuple[np.ndarray, DegradationRecord]:
        record = self.sample(seed)
        return apply_record(x, record), record


def apply_record(x: np.ndarray, record: DegradationRecord) -> np.ndarray:
    """Apply a record's steps in order to pixels in [0, 1]; the result is float32, clipped to
    [0, 1]."""
    out = np.asarray(x, dtype=np.float64)
    check_unit_range(out, "degradation input")
    for i, step in enumerate(record.steps):
        _check_step(i, {"op": step.op, "params": step.params})
        try:
            out = OPS[step.op](out, **step.params, rng=np.random.default_rng(step.seed))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DegradationError):
                raise
            raise DegradationError(f"step {i} ({step.op}): {exc}") from None
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def degrade_image(image: MedicalImage, pipeline: Pipeline | DegradationRecord,
                  seed: int | None = None) -> tuple[MedicalImage, DegradationRecord]:
    """Degrade a :class:`MedicalImage`; the record is also added to the image's history."""
    if not isinstance(image, MedicalImage):
        raise DegradationError(f"degrade_image takes a MedicalImage (from read_image or "
                               f"from_array), got {type(image).__name__}; for bare pixels in "
                               "[0, 1] call the pipeline itself: pipeline(pixels, seed)")
    if not isinstance(pipeline, (Pipeline, DegradationRecord)):
        raise DegradationError(f"degrade_image takes a Pipeline (Pipeline.from_preset(name), "
                               f"Pipeline.from_file(path)) or a DegradationRecord, got "
                               f"{pipeline!r}")
    if isinstance(pipeline, DegradationRecord):
        record = pipeline
        derivation = f"degrade replay {record.pipeline or [s.op for s in record.steps]}"
    else:
        if seed is None:
            raise DegradationError("degrade_image needs an explicit seed (or a record to replay)")
        record = pipeline.sample(seed)
        derivation = f"degrade {pipeline.name} {json.dumps(pipeline.steps, sort_keys=True)}"
    from ..io.padding import (fill_from_nearest, from_picture, keep_padding, padding_mask,
                              picture_span, to_picture)

    # Padding outside a CT's field of view is not acquired: no noise or blur reaches it, and
    # blurring or resampling does not spread its -2000 HU into the tissue. Padding far beyond
    # the picture does not widen the scale that noise levels are given on.
    mask = padding_mask(image)
    span = picture_span(image, mask)
    source = to_picture(image.pixels if mask is None else fill_from_nearest(image.pixels, mask),
                        span)
    pixels = keep_padding(image, from_picture(apply_record(source, record), span), mask)
    return image.with_pixels(pixels, record.describe(), derivation,
                             record_pixel_map(record, image.pixels.shape)), record


def record_pixel_map(record: DegradationRecord, shape: tuple[int, ...]
                     ) -> tuple[float, float, float, float] | None:
    """Where a record's down-sampling puts the new pixels among the old (see
    ``MedicalImage.with_pixels``): bicubic covers the old extent (scale ``H / h``); area
    averages whole ``scale x scale`` blocks and drops the rows and columns left over (scale
    exactly ``scale``)."""
    from ..image import compose_pixel_maps, covering_map

    h, w = shape[-2:]
    total = None
    for step in record.steps:
        if step.op not in ("downsample", "blur_downsample") or int(step.params["scale"]) == 1:
            continue
        scale = int(step.params["scale"])
        new_h, new_w = h // scale, w // scale
        if step.params.get("method", "bicubic") == "area":
            s_r = s_c = float(scale)
        else:
            s_r, s_c = h / new_h, w / new_w
        total = compose_pixel_maps(total, covering_map(s_r, s_c))
        h, w = new_h, new_w
    return total
