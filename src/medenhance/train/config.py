"""Training configuration: nested dataclasses that round-trip to YAML, with ``--set`` overrides.

A config file holds only what differs from the defaults below; unknown keys are errors (a typo
must not silently train something else). ``apply_overrides(config, ["optim.lr=1e-3"])`` parses each
value as YAML, so numbers, booleans and lists work on the command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class ModelSection:
    name: str = "fastunet"
    args: dict[str, Any] = field(default_factory=dict)
    #: Start from the weights of a trained model (a name from ``medenhance models``, a checkpoint
    #: or a run folder) instead of a random initialisation: fine-tuning. The architecture must
    #: match; ``args`` left empty take the given model's, and larger ones grow it where the
    #: architecture can (``fastunet`` with more ``blocks``).
    init_from: str = ""


@dataclass
class DataSection:
    #: ``manifest.csv`` written by ``medenhance prepare`` (paths in it are relative to its folder).
    manifest: str = ""
    train_split: str = "train"
    val_split: str = "val"
    patch_size: int = 96
    patches_per_epoch: int = 4096
    #: Validation uses up to this many images of the validation split, centre-cropped.
    val_images: int = 16
    val_crop: int = 256
    augment: bool = True
    #: More training images from other prepared datasets, each ``{manifest, split, weight}``
    #: (split defaults to ``train``). ``weight`` is the share of patches drawn from that source,
    #: the main manifest's training split taking the rest: extra content for a small data set.
    #: Validation stays on the main manifest.
    extra_train: list[dict[str, Any]] = field(default_factory=list)
    #: A mixture: each patch gets one pipeline, drawn by weight. ``preset`` or ``file``.
    degradations: list[dict[str, Any]] = field(
        default_factory=lambda: [{"preset": "gaussian-blind", "weight": 1.0}])


@dataclass
class OptimSection:
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 16
    epochs: int = 30
    #: ``cosine`` (to ``min_lr`` over all epochs) or ``constant``.
    schedule: str = "cosine"
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    name: str = "my-denoiser"
    task: str = "denoise"
    modality: str = "any"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    #: Weighted sum of losses: ``mse``, ``l1``, ``ssim`` (1 - SSIM).
    loss: dict[str, float] = field(default_factory=lambda: {"l1": 1.0})
    #: Stop when validation PSNR has not improved for this many epochs (0: never).
    patience: int = 8
    #: Stop (cleanly, with checkpoints) after this many minutes of training; ``null``: no limit.
    max_minutes: float | None = None
    seed: int = 0
    output_dir: str = ""
    #: ``auto`` (CUDA when present), ``cpu`` or ``cuda``; mixed precision only on CUDA.
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    #: Weights of the best checkpoint are stored in this precision (float16 halves the size).
    weights_dtype: str = "float16"
    #: Copy the best checkpoint into the user model folder under ``name`` when training ends.
    register: bool = True

    def validate(self) -> None:
        from ..models.card import check_model_name

        check_model_name(self.name)
        d, o = self.data, self.optim
        if not d.manifest:
            raise ConfigError("data.manifest is not set (a manifest.csv from `medenhance prepare`)")
        # Each key named with its own bound (one message covered three keys), and values that
        # ran without a word: min_lr above lr (the rate climbed to 1, the loss to inf),
        # patience -2 (stopped after one epoch), max_minutes -1 (failed after setup).
        bounds = [("data.patch_size", d.patch_size, 16), ("data.val_crop", d.val_crop, 16),
                  ("data.patches_per_epoch", d.patches_per_epoch, 1),
                  ("data.val_images", d.val_images, 1), ("optim.batch_size", o.batch_size, 1),
                  ("optim.epochs", o.epochs, 1), ("patience", self.patience, 0)]
        for key, value, least in bounds:
            if value < least:
                raise ConfigError(f"{key} must be >= {least}, got {value!r}"
                                  + (" (0: no early stop)" if key == "patience" else ""))
        if not o.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr!r}")
        if o.min_lr < 0 or (o.schedule == "cosine" and o.min_lr > o.lr):
            raise ConfigError(f"optim.min_lr must be from 0 to optim.lr ({o.lr:g}), got "
                              f"{o.min_lr!r}: the cosine schedule goes from lr down to it")
        if o.weight_decay < 0 or o.grad_clip < 0:
            raise ConfigError(f"optim.weight_decay and optim.grad_clip must be >= 0 (0: off), "
                              f"got {o.weight_decay!r} and {o.grad_clip!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0 (or null: no limit), got "
                              f"{self.max_minutes!r}")
        if o.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule must be 'cosine' or 'constant', got {o.schedule!r}")
        if self.weights_dtype not in ("float16", "float32"):
            raise ConfigError(f"weights_dtype must be float16 or float32, got {self.weights_dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not d.degradations:
            raise ConfigError("data.degradations is empty")
        for i, entry in enumerate(d.extra_train):
            if not isinstance(entry, dict) or not entry.get("manifest"):
                raise ConfigError(f"data.extra_train[{i}]: needs a 'manifest'")
            unknown = sorted(set(entry) - {"manifest", "split", "weight"})
            if unknown:
                raise ConfigError(f"data.extra_train[{i}]: unknown key(s) {', '.join(unknown)}; "
                                  "known: manifest, split, weight")
            weight = entry.get("weight", 0)
            if not _is_number(weight):
                raise ConfigError(f"data.extra_train[{i}]: weight must be a number, got {weight!r}")
        share = sum(float(e.get("weight", 0)) for e in d.extra_train if isinstance(e, dict))
        if d.extra_train and not 0 < share < 1:
            raise ConfigError("data.extra_train: weights are shares of the patches and must "
                              f"add up to more than 0 and less than 1, got {share:g}")
        for i, entry in enumerate(d.degradations):
            if not isinstance(entry, dict) or ("preset" in entry) == ("file" in entry):
                raise ConfigError(f"data.degradations[{i}]: give exactly one of 'preset' or 'file'")
            unknown = sorted(set(entry) - {"preset", "file", "weight"})
            if unknown:
                raise ConfigError(f"data.degradations[{i}]: unknown key(s) {', '.join(unknown)}; "
                                  "known: preset, file, weight")
            if not _is_number(entry.get("weight", 1.0)) or entry.get("weight", 1.0) < 0:
                raise ConfigError(f"data.degradations[{i}]: weight must be a number >= 0, got "
                                  f"{entry['weight']!r}")
        if not isinstance(self.loss, dict) or not self.loss:
            raise ConfigError(f"loss: expected a mapping of term to weight, got {self.loss!r}")
        for term, weight in self.loss.items():
            if not _is_number(weight):
                raise ConfigError(f"loss: the weight of {term} must be a number, got {weight!r}")
        from .losses import build_loss

        build_loss(self.loss)               # unknown terms, all weights zero

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    values = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, path)
        else:
            values[key] = _coerce(hint, value, path)
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check a scalar against its annotation; ints are accepted where floats are expected."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is float and isinstance(value, str):
            # PyYAML reads "1e-3" (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (str, bool, dict, list) and isinstance(value, base):
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    # How to write one on the command line (`--set key=[a, b]`): "expected list" alone left
    # users guessing.
    example = {"list": " such as [a, b]", "dict": " such as {key: value}"}.get(expected, "")
    raise ConfigError(f"{where}: expected {expected}{example}, got {value!r}")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data, "")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides and validate."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a training config (not text: an image?)") from None
    try:
        config = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    config = apply_overrides(config, overrides or [])
    try:
        config.validate()
    except ConfigError as exc:
        where = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
        raise ConfigError(f"{where}: {exc}") from None
    return config


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    data = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-3")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = node[part]
        if parts[-1] not in node and not (len(parts) >= 2 and parts[-2] in ("args", "loss")):
            raise ConfigError(f"--set {item!r}: unknown key {key.strip()!r}")
        node[parts[-1]] = value
        try:    # now, so that a wrong value is blamed on its own item
            config = config_from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
    return config
