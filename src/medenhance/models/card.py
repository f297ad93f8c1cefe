"""Checkpoints (safetensors weights + JSON model card) and finding models by name.

A checkpoint is two files side by side: ``NAME.safetensors`` (the state dict, nothing executable)
and ``NAME.json``, the model card: architecture and arguments (enough to rebuild the network),
task, modality, scale, the intensity contract, training data, the training config, validation
metrics and library versions. :func:`load_model` accepts a bundled model name (package data in
``medenhance/weights``), a user model name (``$MEDENHANCE_MODELS``, default
``~/.medenhance/models``) or a path to either file of a checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._version import __version__
from ..errors import ConfigError
from ..io._files import atomic_write
from .registry import create_model

#: How pixels reach every model (see ``image.py``): one number per image, no other normalisation.
INTENSITY_CONTRACT = ("float32 in [0, 1]: stored values mapped by the image's intensity window "
                      "(bit-depth range for <= 8-bit data, min..max otherwise); sigma on that scale")


def foreign_modality(trained_on: str, modality: str | None) -> str | None:
    """``modality`` (a DICOM Modality) when it is not among ``trained_on`` (``"CR/DX"``, or
    ``"any"``); ``None`` when it is, or unknown (absent, or OT: "other")."""
    trained = {m for m in trained_on.upper().split("/") if m not in ("", "ANY")}
    given = (modality or "").strip().upper()
    return given if trained and given not in ("", "OT") and given not in trained else None


@dataclass
class ModelCard:
    """Everything needed to rebuild, trust and reproduce a trained model."""

    name: str
    architecture: str
    arguments: dict[str, Any] = field(default_factory=dict)
    task: str = "denoise"
    modality: str = "any"
    scale: int = 1
    description: str = ""
    intensity: str = INTENSITY_CONTRACT
    training_data: dict[str, Any] = field(default_factory=dict)
    degradations: list[Any] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_jsonable)

    def foreign_modality(self, modality: str | None) -> str | None:
        """``modality`` (a DICOM Modality, upper case) when the model was trained on others;
        ``None`` when it is one of them, unknown (absent, or OT: "other"), or the model takes
        any."""
        return foreign_modality(self.modality, modality)

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict) or "architecture" not in data or "name" not in data:
            raise ConfigError(f"{source}: not a model card (needs 'name' and 'architecture')")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def build(self) -> nn.Module:
        """A freshly initialised network of this card's architecture and arguments."""
        return create_model(self.architecture, **self.arguments)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a model card")


def library_versions() -> dict[str, str]:
    return {"medenhance": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


@dataclass
class LoadedModel:
    """A network in eval mode with its card; ``path`` is the weights file it came from."""

    network: nn.Module
    card: ModelCard
    path: Path
    #: Tensors stored beside the network's (see :func:`save_checkpoint`), by name.
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


#: Suffix of a symmetric buffer stored as its upper triangle (see :func:`save_checkpoint`).
UPPER_TRIANGLE = ".upper_triangle"
#: Prefix of the tensors a checkpoint holds beside the network's (``aux`` of
#: :func:`save_checkpoint`), e.g. a triage model's check of what it was trained on.
AUX_PREFIX = "aux/"


def _unpack_symmetric(network: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Rebuild in ``state`` the symmetric buffers stored as upper triangles (checkpoints written
    before that hold them whole, and load as they are)."""
    for name in getattr(network, "symmetric_buffers", ()):
        packed = state.pop(name + UPPER_TRIANGLE, None)
        if packed is None:
            continue
        if name in state:
            raise RuntimeError(f"{name} is stored both whole and as {name}{UPPER_TRIANGLE}")
        n = network.get_buffer(name).shape[0]
        if packed.shape != (n * (n + 1) // 2,):
            raise RuntimeError(f"{name}{UPPER_TRIANGLE}: {tuple(packed.shape)} values, "
                               f"not the upper triangle of a {n} x {n} matrix")
        rows, cols = torch.triu_indices(n, n)
        matrix = torch.zeros(n, n, dtype=packed.dtype)
        matrix[rows, cols] = packed
        matrix[cols, rows] = packed
        state[name] = matrix


def save_checkpoint(model: nn.Module, card: ModelCard, path: str | Path,
                    dtype: torch.dtype = torch.float32,
                    aux: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``path`` (``.safetensors``) and the card beside it, each atomically.

    Parameters are stored in ``dtype`` (float16 halves the file); buffers (batch-norm statistics,
    fitted feature Gaussians) stay float32, where half precision would cost accuracy for few bytes,
    except those a network names in ``bulky_buffers`` (e.g. a memory of feature vectors). Square
    buffers a network names in ``symmetric_buffers`` (a Gaussian's precision matrix) are stored
    as their upper triangle, under the name with :data:`UPPER_TRIANGLE` appended: half the bytes.
    ``aux``: tensors that belong to the model but not to its network (stored in their own
    dtype under :data:`AUX_PREFIX` + name; :func:`load_model` returns them, as float32 like
    everything it loads, in ``LoadedModel.aux``).
    """
    path = Path(path).with_suffix(".safetensors")
    card.created = card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    card.versions = card.versions or library_versions()
    bulky = set(getattr(model, "bulky_buffers", ()))
    params = {name for name, _ in model.named_parameters()} | bulky
    state = {k: v.detach().to("cpu", dtype if k in params and v.is_floating_point()
                               else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    for name in getattr(model, "symmetric_buffers", ()):
        matrix = state.pop(name)
        scale = float(matrix.abs().max()) if matrix.numel() else 0.0
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or \
                float((matrix - matrix.T).abs().max()) > 1e-5 * scale:
            # Only the upper triangle is kept: a matrix that is not symmetric would not come back.
            raise ValueError(f"{name} is not a symmetric matrix; it cannot be stored as one")
        rows, cols = torch.triu_indices(*matrix.shape)
        state[name + UPPER_TRIANGLE] = matrix[rows, cols].contiguous()
    for name, tensor in (aux or {}).items():
        state[AUX_PREFIX + name] = tensor.detach().to("cpu").contiguous()
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"name": card.name}),
                 overwrite=True)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(card.to_json()),
                 overwrite=True)
    return path


def bundled_dir() -> Path:
    return Path(str(resources.files("medenhance") / "weights"))


def user_dir() -> Path:
    return Path(os.environ.get("MEDENHANCE_MODELS", Path.home() / ".medenhance" / "models"))


#: A model name is a file name in the user model folder, found again by ``--model NAME``.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_registration(name: str, checkpoint: Path, *, overwrite: bool,
                       log: Callable[[str], None]) -> None:
    """Before training a model to be registered as ``name`` (its run's ``checkpoint``): refuse to
    replace a registered model of that name unless ``overwrite``, and note a bundled one.

    Under a bundled model's name the registered copy is hidden anyway (``-m NAME`` finds the
    bundled model first), so the stages of a bundled recipe may each register theirs."""
    registered = user_dir() / f"{name}.safetensors"
    bundled = (bundled_dir() / f"{name}.safetensors").exists()
    if registered.exists() and not bundled and not overwrite:
        raise ConfigError(f"a model named {name!r} is already registered ({registered}); "
                          "choose another name (--set name=...) or pass --overwrite to "
                          "replace it")
    if bundled:
        log(f"note: a bundled model is also called {name!r} and is the one that name finds; "
            f"use this one by its path ({checkpoint}) or train it under another name "
            "(--set name=...)")


def check_model_name(name: str) -> None:
    """:class:`ConfigError` unless ``name`` can be registered and found again by name."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or ".." in name or \
            name.lower().endswith((".safetensors", ".json")):   # `-m` would take it for a file
        raise ConfigError(f"name: {name!r} cannot name a model; use letters, digits, '.', '_' "
                          "and '-', starting with a letter or digit (e.g. my-site-xray)")


def _cards_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if p.with_suffix(".safetensors").is_file())


def available_models(problems: list[str] | None = None) -> list[tuple[str, ModelCard, Path]]:
    """``(origin, card, weights path)`` for every bundled and user model. A folder or card that
    cannot be read is skipped, and its reason added to ``problems`` when given."""
    found = []
    for origin, folder in (("bundled", bundled_dir()), ("user", user_dir())):
        try:
            cards = _cards_in(folder)
        except OSError as exc:        # e.g. another user's ~/.medenhance/models
            if problems is not None:
                problems.append(f"{folder}: cannot be read ({exc.strerror or exc})")
            continue
        for card_path in cards:
            try:
                card = ModelCard.from_json(card_path.read_text(), str(card_path))
            except (ConfigError, OSError) as exc:
                if problems is not None:
                    problems.append(str(exc) if isinstance(exc, ConfigError) else
                                    f"{card_path}: cannot be read ({exc.strerror or exc})")
                continue
            found.append((origin, card, card_path.with_suffix(".safetensors")))
    return found


def resolve_model(name_or_path: str | Path, task: str | None = None) -> Path:
    """The ``.safetensors`` file for a model name or a checkpoint path. ``task``: where the name
    is unknown, list only the models of this task as the ones to choose from."""
    text = str(name_or_path)
    if not text.strip():     # Path("") is the current folder
        raise ConfigError("no model given: name one (`medenhance models` lists them) or give "
                          "the path of a .safetensors checkpoint")
    path = Path(text)
    if path.suffix in (".safetensors", ".json") or os.sep in text or path.is_dir():
        if path.is_dir():
            path = path / "best.safetensors"
        weights = path.with_suffix(".safetensors")
        if not path.exists() and not weights.exists() and path.suffix == "":
            raise ConfigError(f"{text}: no such run folder or checkpoint (a folder holding "
                              "best.safetensors and best.json, or a .safetensors file beside "
                              "its .json)")
        if not weights.is_file() or not weights.with_suffix(".json").is_file():
            raise ConfigError(f"{text}: no checkpoint there (need {weights.name} and "
                              f"{weights.with_suffix('.json').name} side by side)")
        return weights
    for folder in (bundled_dir(), user_dir()):
        weights = folder / f"{text}.safetensors"
        try:
            if weights.is_file() and weights.with_suffix(".json").is_file():
                return weights
        except OSError:     # an unreadable user folder: the name is unknown there
            continue
    names = sorted({card.name for _, card, _ in available_models()
                    if task is None or card.task == task})
    kind = f"{task} models" if task else "models"
    raise ConfigError(f"unknown model {text!r}; available {kind}: {', '.join(names) or 'none'} "
                      "(or give the path of a .safetensors checkpoint)")


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu",
               task: str | None = None) -> LoadedModel:
    """Rebuild a trained network from its card and weights, in eval mode, as float32 (``task``:
    see :func:`resolve_model`)."""
    weights = resolve_model(name_or_path, task)
    card_path = weights.with_suffix(".json")
    card = ModelCard.from_json(card_path.read_text(), str(card_path))
    try:
        network = card.build()
    except (TypeError, ValueError) as exc:    # a hand-edited card, or one of a newer version
        raise ConfigError(f"{card_path}: arguments {card.arguments} do not build "
                          f"{card.architecture}: {exc}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{weights}: unreadable weights ({exc})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    aux = {k[len(AUX_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(AUX_PREFIX)}
    try:
        _unpack_symmetric(network, state)
        network.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{weights}: weights do not fit {card.architecture} "
                          f"{card.arguments} ({first})") from None
    return LoadedModel(network.to(device).eval(), card, weights, aux)
