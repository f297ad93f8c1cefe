"""Train triage models: a supervised normal-vs-abnormal classifier, or a one-class model.

* ``supervised``: :class:`~medenhance.models.classifier.SmallResNet` with weighted binary
  cross-entropy (abnormal cases weigh ``n_normal / n_abnormal``) and geometric/intensity
  augmentation; the epoch with the best validation AUROC is kept; temperature scaling on
  validation logits.
* ``oneclass``: trained on **normal images only**, in one of three ways (``oneclass_method``):

  - ``synthetic``: normal images against the same kind of images with a synthetic local
    anomaly (:mod:`.synthetic`); every last-stage location learns whether it saw altered tissue,
    and the image score is the highest location logit.
  - ``transforms`` (default; measured better on the Kermany X-rays, see the README): the
    network learns which of 8 rotations/flips was applied (Golan &
    El-Yaniv, NeurIPS 2018); the score is the Mahalanobis distance of its pooled features to a
    Gaussian fitted on the normal training images (Rippel et al., ICPR 2020), averaged over the
    8 views of the image (``view_average``, as in GOAD, Bergman & Hoshen, ICLR 2020).
  - ``contrastive``: as ``transforms``, plus SimCLR's loss (Chen et al., ICML 2020) on a
    projection: two augmentations of an image, in the same view, should match each other and no
    other image (close to CSI, Tack et al., NeurIPS 2020); scored the same way.

  With ``model: wavelet_features`` (:mod:`..models.wavelet`) nothing is trained and
  ``oneclass_method`` is not used: fixed Gabor wavelet features, scored by the Mahalanobis distance
  to a Gaussian of the normal training images (bundled ``xray-triage`` and ``mri-triage``).

  Abnormal images are never used for training or model selection; a labelled validation split is
  used only to calibrate the score into a probability (Platt scaling) and to choose the operating
  point.

Both store, in the model card, the calibration, the threshold that reaches the target sensitivity
on validation, and an out-of-distribution distance limit (Mahalanobis distance of the density
features, the pooled features of the last two stages or the wavelet features, above the 99th
percentile of the validation images, so 1 % of in-distribution studies are flagged by
construction): images beyond it get a warning instead of a score one should trust. Where the
one-class score is that same distance, the limit also marks the most abnormal-looking studies,
which are flagged anyway.
"""

from __future__ import annotations

import hashlib
import math
import signal
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit
import torch.nn.functional as F
import yaml
from scipy.optimize import minimize

from ..errors import ConfigError, DatasetError
from ..models.card import (ModelCard, check_model_name, check_registration, load_model,
                          resolve_model, save_checkpoint, user_dir)
from ..models.classifier import all_views, transform8
from ..models.ensemble import TriageEnsemble
from ..models.registry import create_model
from ..train.config import _build, _coerce
from ..train.loop import pick_device
from .data import (FRAME_RANGES, VAL_SPLITS, LabelledImages, load_labelled, model_inputs,
                   train_val_split)
from .domain import FIT_CHANGES as DOMAIN_FIT_CHANGES, FIT_ZOOM as DOMAIN_FIT_ZOOM, DomainCheck
from .patch_memory import candidate_patches, greedy_coreset
from .synthetic import add_anomalies
from .metrics import (LOG_TEMPERATURE_BOUNDS, auprc, auroc, fit_temperature, sens_spec,
                      threshold_for_sensitivity)

KINDS = ("supervised", "oneclass")
AUGMENTS = ("standard", "strong")
#: How a one-class model learns from normal images: ``synthetic`` (normal vs synthetically
#: altered normal, scored by the logit), ``transforms`` (which rotation/flip, scored by the
#: Mahalanobis distance of its features) or ``contrastive`` (``transforms`` plus SimCLR).
ONECLASS_METHODS = ("synthetic", "transforms", "contrastive")
#: Size of the projection that the ``contrastive`` method compares.
PROJECTION_DIM = 64
#: What a one-class model scores: the ``gaussian`` distance of the image's pooled features, or
#: ``patch-nn``, its least familiar patch against a memory of normal patches (:mod:`.patch_memory`).
ONECLASS_SCORES = ("gaussian", "patch-nn")
#: Zoomed copies of each training image in the feature Gaussian's fit (``fit_zoom``).
FIT_ZOOM_COPIES = 2
#: How the feature Gaussian's covariance is regularised (``covariance``): see :func:`fit_gaussian`.
COVARIANCES = ("shrunk", "ledoit-wolf")


#: Networks a triage model can be built on (the others restore images).
TRIAGE_NETWORKS = ("small_resnet", "wavelet_features")
#: Of those, the ones with fixed features (:mod:`..models.wavelet`): nothing is trained, only the
#: normal images' Gaussian is fitted (one-class, ``epochs: 0``).
FIXED_FEATURE_NETWORKS = ("wavelet_features",)


@dataclass
class TriageConfig:
    name: str = "my-triage"
    kind: str = "supervised"
    oneclass_method: str = "transforms"
    modality: str = "any"
    description: str = ""
    #: Training folder with one sub-folder per label, or a prepared dataset (``medenhance
    #: prepare``: its folder or manifest.csv), whose train/val split replaces the options below.
    data: str = ""
    normal_labels: list[str] = field(default_factory=lambda: ["NORMAL"])
    patient_regex: str | None = None
    size: int = 128
    val_fraction: float = 0.15
    #: ``random`` patients, or ``lowest-ids``: the lowest-numbered patients of each id series
    #: (a split in time where ids are given in order; see :func:`.data.split_by_patient`).
    val_split: str = "random"
    model: str = "small_resnet"
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    target_sensitivity: float = 0.95
    seed: int = 0
    #: Seed of the train/validation split by patient; ``null``: ``seed``. Fixing it while
    #: varying ``seed`` trains differently initialised models on the same split.
    split_seed: int | None = None
    threads: int | None = None
    device: str = "auto"
    output_dir: str = ""
    register: bool = True
    #: One-class ``transforms`` and ``contrastive``: score the Mahalanobis distance averaged
    #: over the 8 rotated/flipped views, with one Gaussian fitted to all views of the normal
    #: images
    #: (``false``: the upright view only, as models trained before it was added).
    view_average: bool = True
    #: ``standard`` or ``strong`` (wider ranges, blur and noise): see :func:`augment`.
    augment: str = "standard"
    #: Histogram-equalise every frame before the network sees it (training and scoring).
    equalize: bool = False
    #: Crop every frame to the square around its content (the head, the body) before the network
    #: sees it, training and scoring (:func:`.data.crop_to_content`): the anatomy's share of the
    #: frame, which follows the scanner's field of view, stops being a feature.
    crop: bool = False
    #: How each frame is spread over [0, 1] before anything else: ``own`` (its lowest to its
    #: highest value) or ``percentiles`` (its 1st to 99th percentile, clipped, so that a burnt-in
    #: marker does not set the scale; :func:`.data.percentile_range`).
    frame_range: str = "own"
    #: Start from another triage model's convolutions (name or path; same architecture and
    #: widths), e.g. a one-class network's self-supervised features; its head is not copied.
    #: Of an ensemble (:attr:`ensemble`), its first member's.
    init_from: str = ""
    #: Trained triage models (names or paths) of this config's recipe, trained with other seeds
    #: on the same patient split, to score as one (their mean; :mod:`..models.ensemble`). Needs
    #: ``epochs: 0``: only the calibration, threshold and out-of-distribution limit are fitted.
    ensemble: list[str] = field(default_factory=list)
    #: Fit the feature Gaussian also to ``FIT_ZOOM_COPIES`` copies of every training image
    #: enlarged by a random factor in [1, ``fit_zoom``] (1: off), so that a tighter field of view
    #: (another site's collimation or positioning) is not by itself abnormal. The copies are of
    #: the prepared frames: with ``crop``, a tighter crop of the head or body (cutting its edge),
    #: not a study framed tighter and then cropped to its content, as scoring would see one.
    fit_zoom: float = 1.0
    #: Fit the feature Gaussian also to this many copies of every training image acquired
    #: differently (:func:`acquisition_copies`: gamma, blur, lower resolution, noise; 0: off),
    #: so that a study from a softer, noisier or differently exposed scanner is not by itself
    #: abnormal (one-class feature scores) or out of distribution (every model). The copies are
    #: changed as read, then prepared (cropped, equalised) as scoring prepares a study.
    fit_changes: int = 0
    #: Training augmentation's largest zoom (``null``: 1.1, or 1.2 when ``augment: strong``).
    max_zoom: float | None = None
    #: One-class: ``gaussian`` or ``patch-nn`` (see :data:`ONECLASS_SCORES`).
    oneclass_score: str = "gaussian"
    #: ``patch-nn``: patch features kept in the model (a greedy coreset of the normal patches).
    memory_size: int = 4096
    #: The feature Gaussian's covariance: ``shrunk`` or ``ledoit-wolf`` (:func:`fit_gaussian`).
    covariance: str = "shrunk"
    #: After training, measure the validation AUROC under simulated acquisition changes
    #: (:mod:`.robustness`) and record it in the card (``val_robust_auroc``).
    robustness: bool = True

    def validate(self) -> None:
        check_model_name(self.name)
        if self.model not in TRIAGE_NETWORKS:
            raise ConfigError(f"model {self.model!r} is not a triage network (it restores "
                              f"images); triage trains {', '.join(TRIAGE_NETWORKS)}")
        bad_args = [k for k, v in self.model_args.items() if v is None]
        if bad_args:       # "{width:7}" is YAML for a key "width:7" without a value
            raise ConfigError(f"model_args: no value for {', '.join(map(repr, bad_args))} "
                              "(write key: value, with a space after the colon)")
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be supervised or oneclass, got {self.kind!r}")
        if self.oneclass_method not in ONECLASS_METHODS:
            raise ConfigError(f"oneclass_method must be one of {', '.join(ONECLASS_METHODS)}, got "
                              f"{self.oneclass_method!r}")
        if not self.data:
            raise ConfigError("data is not set (a folder with one sub-folder per label)")
        if self.size < 32 or self.size % 16:
            raise ConfigError(f"size must be a multiple of 16 and >= 32, got {self.size}")
        if not 0 < self.target_sensitivity <= 1:
            raise ConfigError(f"target_sensitivity must be in (0, 1], got "
                              f"{self.target_sensitivity}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_split not in VAL_SPLITS:
            raise ConfigError(f"val_split must be random or lowest-ids, got {self.val_split!r}")
        if self.frame_range not in FRAME_RANGES:
            raise ConfigError(f"frame_range must be {' or '.join(FRAME_RANGES)}, got "
                              f"{self.frame_range!r}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be standard or strong, got {self.augment!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not 1 <= self.fit_zoom <= 2:
            raise ConfigError(f"fit_zoom must be in [1, 2], got {self.fit_zoom}")
        if not 0 <= self.fit_changes <= 8:
            raise ConfigError(f"fit_changes must be in 0..8 (copies per image), got "
                              f"{self.fit_changes}")
        if self.max_zoom is not None and not 1 <= self.max_zoom <= 2:
            raise ConfigError(f"max_zoom must be in [1, 2], got {self.max_zoom}")
        if self.oneclass_score not in ONECLASS_SCORES:
            raise ConfigError(f"oneclass_score must be gaussian or patch-nn, got "
                              f"{self.oneclass_score!r}")
        if self.covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be shrunk or ledoit-wolf, got {self.covariance!r}")
        if self.oneclass_score == "patch-nn" and (self.kind != "oneclass"
                                                  or self.memory_size < 1):
            raise ConfigError("oneclass_score: patch-nn needs kind: oneclass and memory_size >= 1")
        if self.model in FIXED_FEATURE_NETWORKS:
            if (self.kind != "oneclass" or self.epochs or self.init_from or self.ensemble
                    or self.oneclass_score != "gaussian"):
                raise ConfigError(f"model {self.model} has fixed features: it needs kind: "
                                  "oneclass and epochs: 0 (only the normal images' Gaussian is "
                                  "fitted), without init_from, ensemble or oneclass_score: "
                                  "patch-nn")
            ignored = [f"{key}: {value}" for key, value, default in (
                ("oneclass_method", self.oneclass_method, "transforms"),
                ("augment", self.augment, "standard"), ("max_zoom", self.max_zoom, None))
                if value != default]
            if ignored:
                raise ConfigError(f"{', '.join(ignored)}: settings of network training, which "
                                  f"model {self.model} does not do (it fits only a Gaussian)")
            try:      # wrong arguments now, not after minutes of reading images
                create_model(self.model, **self.model_args)
            except ValueError as exc:
                raise ConfigError(f"model_args: {exc}") from None
        elif self.ensemble:
            if len(self.ensemble) < 2 or self.epochs or self.init_from:
                raise ConfigError("ensemble: needs two or more trained models, epochs: 0 (the "
                                  "members are trained already) and no init_from")
            refit = [f"{key}: {value}" for key, value, default in (
                ("fit_zoom", self.fit_zoom, 1.0), ("fit_changes", self.fit_changes, 0))
                if value != default]
            if refit:      # recorded in the card, they would claim a fit that did not happen
                raise ConfigError(f"{', '.join(refit)}: an ensemble's members keep the Gaussians "
                                  "they were fitted with; set it when training the members")
        elif self.epochs == 0 and (not self.init_from or self.kind != "oneclass"
                                   or self.oneclass_method == "synthetic"):
            # The head is not copied from init_from: only the feature scores work untrained.
            raise ConfigError("epochs: 0 (fit only the normal model and calibration) needs "
                              "init_from, the network to use, and a one-class feature score "
                              "(kind: oneclass, oneclass_method: transforms or contrastive)")
        if "memory_size" in self.model_args:
            raise ConfigError("memory_size is a setting of its own, not of model_args")
        if self.epochs < 0 or self.batch_size < 2 or self.lr <= 0:
            raise ConfigError("epochs >= 0, batch_size >= 2 and lr > 0 are needed")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    @property
    def patient_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed


def load_triage_config(path: str | Path, overrides: list[str] | None = None) -> TriageConfig:
    """Read a YAML config and apply ``key=value`` overrides. An error names the file, or the
    ``--set`` item it comes from, or both where only the combination is invalid."""
    path = Path(path)
    overrides = overrides or []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a triage config (not text: an image?)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(TriageConfig)
    for item in overrides:       # each value checked alone, so that the item is named
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. epochs=3")
        if key not in hints:
            raise ConfigError(f"--set {item!r}: unknown key {key!r}; known: "
                              f"{', '.join(sorted(hints))}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        try:
            data[key] = _coerce(hints[key], value, key)
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
    try:
        config = _build(TriageConfig, data, "")   # what is wrong now is in the file
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        config.validate()
    except ConfigError as exc:
        where = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
        raise ConfigError(f"{where}: {exc}") from None
    return config


def augment(x: torch.Tensor, generator: torch.Generator, strength: str = "standard",
            max_zoom: float | None = None) -> torch.Tensor:
    """Random rotation, scale, shift, gamma, contrast and brightness.

    ``standard``: +-8 deg, scale 0.9-1.1, shift +-6 %, gamma 0.78-1.28, contrast 0.85-1.15,
    brightness +-0.05. ``strong`` doubles every range and adds what differs between scanners
    and sites: blur (Gaussian, sigma 0-1 px) and noise (sigma 0-0.03), each on half the images.
    ``max_zoom``: the scale is drawn from [``1 - 0.1 k``, ``max_zoom``] instead (k = 1, or 2
    when strong), for fields of view tighter than the training images'.
    """
    n = x.shape[0]
    k = 2.0 if strength == "strong" else 1.0
    rnd = torch.rand(n, 7, generator=generator)
    angle = (rnd[:, 0] - 0.5) * math.radians(16) * k
    if max_zoom is None:
        scale = (1 - 0.1 * k) + 0.2 * k * rnd[:, 1]
    else:
        scale = (1 - 0.1 * k) + (max_zoom - (1 - 0.1 * k)) * rnd[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = (rnd[:, 2:4] - 0.5) * 0.12 * k
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    gamma = torch.exp((rnd[:, 4] - 0.5) * 0.5 * k).view(n, 1, 1, 1)
    contrast = ((1 - 0.15 * k) + 0.3 * k * rnd[:, 5]).view(n, 1, 1, 1)
    brightness = ((rnd[:, 6] - 0.5) * 0.1 * k).view(n, 1, 1, 1)
    out = out.clamp(0, 1) ** gamma
    out = (out - 0.5) * contrast + 0.5 + brightness
    if strength == "strong":
        extra = torch.rand(n, 4, generator=generator)
        blurred = _gaussian_blur(out, 1e-3 + extra[:, 0])
        out = torch.where((extra[:, 1] < 0.5).view(n, 1, 1, 1), blurred, out)
        sigma = (0.03 * extra[:, 2] * (extra[:, 3] < 0.5)).view(n, 1, 1, 1)
        out = out + sigma * torch.randn(out.shape, generator=generator)
    return out.clamp(0, 1)


def random_zoom(x: torch.Tensor, max_zoom: float, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``(N, 1, H, W)`` enlarged by a random factor in [1, ``max_zoom``] about a
    random point that keeps the view inside the image; same size, bilinear."""
    n = x.shape[0]
    rnd = torch.rand(n, 3, generator=generator)
    half = 1 / (1 + (max_zoom - 1) * rnd[:, 0])          # half-width of the view, in [-1, 1] units
    centre = (rnd[:, 1:] * 2 - 1) * (1 - half).unsqueeze(1)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([half, zero, centre[:, 0]], 1),
                         torch.stack([zero, half, centre[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_fit_images(images: np.ndarray, fit_zoom: float, seed: int) -> np.ndarray:
    """The ``(N, H, W)`` training images, followed by ``FIT_ZOOM_COPIES`` zoomed copies of them
    when ``fit_zoom > 1``: what the feature Gaussian is fitted to."""
    if fit_zoom <= 1:
        return images
    generator = torch.Generator().manual_seed(seed + 2)
    originals = torch.from_numpy(images)[:, None]
    return np.concatenate([images] + [random_zoom(originals, fit_zoom, generator)[:, 0].numpy()
                                      for _ in range(FIT_ZOOM_COPIES)])


def fit_inputs(inputs: np.ndarray, frames: np.ndarray, fit_zoom: float, fit_changes: int,
               seed: int, preprocessing: dict) -> np.ndarray:
    """The training images as network ``inputs``, their zoomed copies (up to ``fit_zoom``) and
    ``fit_changes`` acquisition-changed copies of each (``frames`` as read, changed, then
    prepared as scoring will prepare them): what a feature Gaussian is fitted to, the model's
    (with its config's ``fit_zoom`` and ``fit_changes``) and its :class:`.domain.DomainCheck`'s
    (with the check's own)."""
    fit = gaussian_fit_images(inputs, fit_zoom, seed)
    if fit_changes:
        changed = acquisition_copies(frames, fit_changes, seed)
        fit = np.concatenate([fit, model_inputs(changed, preprocessing)])
    return fit


def acquisition_copies(frames: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """``copies`` copies of each ``(N, H, W)`` frame as read (in [0, 1]), each as another scanner
    might have acquired it: a gamma in [0.6, 1.6] (exposure, processing curve), and each with
    probability 1/2 a blur (sigma 0.3-1.2 px), a resolution lower by a factor 1.2-2 and noise
    (sigma up to 0.04). Copy k of every frame follows the frames, ``(copies * N, H, W)``.

    The ranges span the changes :mod:`.robustness` measures (gamma 0.6 and 1.6, blur 1 px, half
    resolution, noise 0.03), so that measure cannot judge a model fitted with these copies
    without bias; its unchanged validation AUROC can."""
    from scipy.ndimage import gaussian_filter, zoom as nd_zoom

    rng = np.random.default_rng(seed + 3)
    out = []
    for _ in range(copies):
        for frame in frames.astype(np.float64):
            h, w = frame.shape
            draw = rng.random(7)
            f = np.clip(frame, 0, 1) ** math.exp(math.log(0.6) + draw[0] * math.log(1.6 / 0.6))
            if draw[1] < 0.5:
                f = gaussian_filter(f, 0.3 + 0.9 * draw[2], mode="nearest")
            if draw[3] < 0.5:
                factor = 1.2 + 0.8 * draw[4]
                small = nd_zoom(f, 1 / factor, order=1, mode="nearest", grid_mode=True)
                f = nd_zoom(small, (h / small.shape[0], w / small.shape[1]), order=1,
                            mode="nearest", grid_mode=True)
            if draw[5] < 0.5:
                f = f + 0.04 * draw[6] * rng.standard_normal(f.shape)
            out.append(np.clip(f, 0, 1).astype(np.float32))   # float64 only while changing
    return np.asarray(out, dtype=np.float32).reshape(copies * len(frames), *frames.shape[1:])


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``(N, 1, H, W)`` with its own ``sigma`` (px, at most 1)."""
    t = torch.arange(-3, 4, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-t ** 2 / (2 * sigma.view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)                      # (N, 7)
    n = x.shape[0]
    rows = F.conv2d(F.pad(x.transpose(0, 1), (3, 3, 0, 0), mode="replicate"),
                    kernel.view(n, 1, 1, 7), groups=n)
    return F.conv2d(F.pad(rows, (0, 0, 3, 3), mode="replicate"), kernel.view(n, 1, 7, 1),
                    groups=n).transpose(0, 1)


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, device: torch.device,
            batch: int = 64) -> np.ndarray:
    outs = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i: i + batch])[:, None].to(device)
        outs.append(fn(x).float().cpu().numpy())
    return np.concatenate(outs)


def _initialise_backbone(model: torch.nn.Module, config: TriageConfig
                         ) -> tuple[str, dict[str, str]]:
    """Copy ``config.init_from``'s weights except its head, Gaussian and patch memory.

    Returns a line for the log and what the card records: the source's name, file and sha256,
    so that a model stays traceable after its source is retrained.
    """
    source = load_model(config.init_from)
    src = source.card
    network = source.network
    if src.task == "triage" and src.architecture == "triage_ensemble":
        network = network.members[0]      # its networks are alike; the first is the source
    elif src.task != "triage" or src.architecture != config.model:
        raise ConfigError(f"init_from {config.init_from!r} is a {src.task} {src.architecture} "
                          f"model, not a triage {config.model}")
    skip = ("head.", "feature_mean", "feature_precision", "patch_memory")
    state = {k: v for k, v in network.state_dict().items() if not k.startswith(skip)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"init_from {config.init_from!r} does not fit {config.model} "
                          f"{config.model_args or ''}: {str(exc).strip().splitlines()[-1].strip()}"
                          ) from None
    if unexpected or any(not k.startswith(skip) for k in missing):
        raise ConfigError(f"init_from {config.init_from!r} does not fit {config.model} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    # Features learnt on other data are fine; on the same data, only with the same patient split.
    src_config = _config_of(src)
    other_split = (_same_folder(src_config.data, config.data)
                   and _split_of(src_config) != _split_of(config))
    first = " (its first member)" if network is not source.network else ""
    line = (f"initialised from {src.name}{first} ({source.path})" +
            ("; WARNING: it was trained on another split of the same data, so some validation "
             "images may have been among its training images" if other_split else ""))
    digest = hashlib.sha256(Path(source.path).read_bytes()).hexdigest()
    return line, {"model": src.name, "path": str(source.path), "sha256": digest,
                  **({"member": 0} if first else {})}


def _config_of(card: ModelCard) -> TriageConfig:
    """The training config a triage model's card records."""
    return TriageConfig(**{k: v for k, v in card.config.items()
                           if k in TriageConfig.__dataclass_fields__})


def _split_of(c: TriageConfig) -> tuple:
    """What decides a config's train/validation split of its data folder."""
    seed = c.patient_split_seed if c.val_split == "random" else None  # lowest-ids: no seed
    return c.val_fraction, seed, c.patient_regex, c.val_split


#: What the members of an ensemble must share with its config: the same task, inputs, score and
#: patient split, or the mean of their outputs means nothing (or the calibration would see a
#: member's training images).
ENSEMBLE_SHARED = ("kind", "oneclass_method", "oneclass_score", "view_average", "size", "crop",
                   "frame_range",
                   "equalize", "model", "normal_labels", "modality")


def _assemble_ensemble(config: TriageConfig) -> tuple[TriageEnsemble, dict, list[dict]]:
    """The trained models of ``config.ensemble`` as one :class:`TriageEnsemble`, with the
    members' (common) arguments and, for the card, each member's name, file, seed and sha256.

    :class:`ConfigError` names the first member that was trained otherwise than the config
    says (another recipe, other arguments, another data folder or patient split) or that is not
    a triage model."""
    members, records, arguments = [], [], None
    for name in config.ensemble:
        loaded = load_model(name, task="triage")
        card = loaded.card
        if card.task != "triage" or card.architecture != config.model:
            raise ConfigError(f"ensemble member {name!r} is a {card.task} {card.architecture} "
                              f"model, not a triage {config.model}")
        if (card.extra.get("triage") or {}).get("frame_range") not in FRAME_RANGES:
            raise ConfigError(f"ensemble member {name!r} was trained before frames were spread "
                              "over their own range; retrain it")
        member = _config_of(card)
        for key in ENSEMBLE_SHARED:
            if getattr(member, key) != getattr(config, key):
                raise ConfigError(f"ensemble member {name!r} was trained with {key} "
                                  f"{getattr(member, key)!r}, this config has "
                                  f"{getattr(config, key)!r}")
        if (not _same_folder(member.data, config.data)
                or _split_of(member) != _split_of(config)):
            raise ConfigError(f"ensemble member {name!r} was trained on another folder or "
                              "patient split than this config's (its validation images could be "
                              "another member's training images); train every member with this "
                              "config's data, val_fraction, split_seed and patient_regex")
        if arguments is None:
            arguments = dict(card.arguments)
        elif card.arguments != arguments:
            raise ConfigError(f"ensemble member {name!r} has other arguments "
                              f"({card.arguments}) than the first ({arguments})")
        members.append(loaded.network)
        records.append({"model": card.name, "path": str(loaded.path), "seed": member.seed,
                        "sha256": hashlib.sha256(Path(loaded.path).read_bytes()).hexdigest()})
    assert arguments is not None
    ensemble = create_model("triage_ensemble", members=len(members), **arguments)
    for target, source in zip(ensemble.members, members, strict=True):
        target.load_state_dict(source.state_dict())
    return ensemble, arguments, records


def _same_folder(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def nt_xent(z: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss for ``(2 B, D)`` projections whose rows ``i`` and ``i + B`` are a pair."""
    z = F.normalize(z, dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), -math.inf)
    half = len(z) // 2
    partner = torch.cat([torch.arange(half, len(z)), torch.arange(half)]).to(z.device)
    return F.cross_entropy(sim, partner)


def fit_gaussian(features: np.ndarray, covariance: str = "shrunk") -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of ``(N, D)`` features.

    Few samples in many dimensions give a noisy, near-singular covariance, so it is shrunk
    towards its mean variance: ``shrunk`` by ``D / (N + D)`` (at least 0.05), a rule of thumb;
    ``ledoit-wolf`` by the amount that minimises the expected squared error of the estimate,
    computed from the data (Ledoit & Wolf, J. Multivariate Anal. 2004; scikit-learn's estimator).
    """
    mean = features.mean(0)
    n, d = features.shape
    if covariance == "ledoit-wolf":
        from sklearn.covariance import ledoit_wolf

        cov, _ = ledoit_wolf(features.astype(np.float64))
        return mean, np.linalg.inv(cov)
    cov = np.cov(features, rowvar=False)
    shrinkage = max(0.05, d / (n + d))
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
    return mean, np.linalg.inv(cov)


def temperature_warning(temperature: float) -> str | None:
    """The training log's warning when calibration hit the search limit of
    :func:`.metrics.fit_temperature`, which means the classifier's logits barely separate the
    validation classes."""
    low, high = LOG_TEMPERATURE_BOUNDS
    if low + 0.01 < np.log(temperature) < high - 0.01:
        return None
    if np.log(temperature) >= high - 0.01:
        return (f"warning: the calibration temperature hit its upper limit ({temperature:.3g}): "
                "the classifier is confidently wrong on enough validation studies that the best "
                "calibration flattens its outputs, so its scores all lie close to one value "
                "(their order, which AUROC measures, is kept); train longer or on more data")
    return (f"warning: the calibration temperature hit its lower limit ({temperature:.3g}): the "
            "classifier's outputs hardly vary (too few training steps?), so its scores are "
            "pushed to 0 and 1; train longer or with a smaller batch")


#: Fewest validation images of each class behind an operating point worth the name.
MIN_VALIDATION_PER_CLASS = 10


def validation_warnings(labels: np.ndarray, prob: np.ndarray, val_auroc: float) -> list[str]:
    """Warnings for the training log about a model that is saved but should not be used as it
    is: it ranks abnormal no higher than normal, its calibrated scores hardly vary (the threshold
    then separates nothing), or its operating point rests on a handful of images."""
    lines = []
    if val_auroc <= 0.5:
        lines.append(f"warning: validation AUROC {val_auroc:.3f}: the model ranks the abnormal "
                     "validation images no higher than the normal ones; it is saved, but its "
                     "scores mean nothing for these data")
    if float(np.ptp(prob)) < 0.01:
        lines.append(f"warning: every validation score lies between {prob.min():.4f} and "
                     f"{prob.max():.4f}: the calibration is flat, so the threshold separates "
                     "nothing")
    counts = {"normal": int((labels == 0).sum()), "abnormal": int((labels == 1).sum())}
    few = [f"{n} {kind}" for kind, n in counts.items() if n < MIN_VALIDATION_PER_CLASS]
    if few:
        lines.append(f"warning: the operating point rests on {' and '.join(few)} validation "
                     f"image(s) (fewer than {MIN_VALIDATION_PER_CLASS}): its sensitivity and "
                     "specificity are guesses; add images or raise val_fraction")
    return lines


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``a, b`` of ``p = sigmoid(a * (s - b))`` minimising the log loss (Platt 1999)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    scale = s.std() or 1.0

    def nll(v: np.ndarray) -> float:
        z = v[0] / scale * (s - v[1])
        return float(np.mean(np.logaddexp(0, z) - y * z))

    res = minimize(nll, x0=[1.0, float(np.median(s))], method="Nelder-Mead")
    return float(res.x[0] / scale), float(res.x[1])


def train_triage(config: TriageConfig, *, log: Callable[[str], None] = print,
                 progress: Callable[[list[Path]], Any] | None = None,
                 overwrite: bool = False) -> tuple[Path, dict]:
    """Train, calibrate and save; returns the checkpoint path and the validation metrics.

    A trained model already in the run folder, or registered under the same name, is kept
    (:class:`ConfigError` before any work) unless ``overwrite``."""
    config.validate()
    if not Path(config.data).exists():      # before "training ...", not after
        raise DatasetError(f"data {config.data}: no such folder or file")
    run = config.run_dir
    registered = user_dir() / f"{config.name}.safetensors"
    if (run / "best.safetensors").exists() and not overwrite:
        raise ConfigError(f"{run}: already holds a trained model (pass --overwrite to "
                          "replace it, or --set output_dir=...)")
    if config.register:
        check_registration(config.name, run / "best.safetensors", overwrite=overwrite, log=log)
    pick_device(config.device)          # no CUDA: said now, not after reading the images
    # Made now so that an unwritable folder fails before minutes of work; removed again if
    # training fails before a model is saved in it.
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    log(f"training {config.kind} triage model {config.name!r} -> {run}/")
    try:
        return _train_and_save(config, run, registered, log=log, progress=progress)
    except BaseException:
        if created and not (run / "best.safetensors").exists():
            (run / "skipped.csv").unlink(missing_ok=True)
            if not any(run.iterdir()):
                run.rmdir()
        raise


def _note_left_out(data: LabelledImages, run: Path, log: Callable[[str], None]) -> None:
    """Say what was not learnt from, and list every such file in ``run/skipped.csv``."""
    import csv

    rows = [(f.split(": ", 1)[0], "unreadable: " + f.split(": ", 1)[-1]) for f in data.failures]
    rows += data.skipped
    if data.failures:
        log(f"{len(data.failures)} unreadable file(s) skipped, e.g. {data.failures[0]}")
    if data.skipped:
        path, reason = data.skipped[0]
        log(f"{len(data.skipped)} image(s) left out (empty, too small, another modality, "
            f"copies, or outside the label sub-folders), e.g. {path}: {reason}")
    target = run / "skipped.csv"
    if rows:
        with open(target, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["path", "reason"])
            writer.writerows(rows)
        log(f"all {len(rows)} listed in {target}")
    else:
        target.unlink(missing_ok=True)      # an earlier run's list


class _StopRequest:
    """The first Ctrl-C during training asks to stop after the current batch and finish with
    the best epoch so far (it used to lose every epoch, silently); the second stops at once.
    Only in the main thread, where Python delivers signals, and not where Ctrl-C is ignored (a
    shell's background job): it should stay ignored there."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
            self._previous = signal.signal(signal.SIGINT, self._ask)

    def _ask(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def oneclass_split(data: LabelledImages, train_idx: np.ndarray, val_idx: np.ndarray,
                    log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """A one-class model trains on the training split's normal images only. Its abnormal ones
    would be thrown away: those of patients without a normal training image join validation
    (more cases behind the threshold; 33 of 42 abnormal images were unused in a user's run),
    unless a prepared dataset's manifest fixed the splits."""
    labels = data.labels
    normal = train_idx[labels[train_idx] == 0]
    abnormal = train_idx[labels[train_idx] == 1]
    if not abnormal.size:
        return normal, val_idx
    seen = {data.patients[i] for i in normal}
    movable = np.array([i for i in abnormal if data.patients[i] not in seen], dtype=int)
    if data.splits is not None or not movable.size:
        log(f"one-class: {abnormal.size} abnormal image(s) of the training split are not used "
            "(the model learns from normal images only)")
        return normal, val_idx
    kept_out = abnormal.size - movable.size
    log(f"one-class: {movable.size} abnormal image(s) of the training split join validation "
        "(the model learns from normal images only)"
        + (f"; {kept_out} not used (their patients have normal training images)"
           if kept_out else ""))
    return normal, np.sort(np.r_[val_idx, movable])


def _train_and_save(config: TriageConfig, run: Path, registered: Path, *,
                    log: Callable[[str], None], progress: Callable[[list[Path]], Any] | None
                    ) -> tuple[Path, dict]:
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    for name in [config.init_from, *config.ensemble]:
        if name:  # a misspelt name fails now, not after minutes of reading images
            resolve_model(name, "triage")
    data = load_labelled(config.data, config.normal_labels, config.size,
                         patient_regex=config.patient_regex, progress=progress,
                         modality=config.modality, keep_aspect=config.crop)
    raw_frames = data.images          # as read: the robustness check changes these
    # Stored in the card, so that scoring prepares frames as training did.
    preprocessing = {"frame_range": config.frame_range, "crop": config.crop,
                     "equalize": config.equalize}
    data.images = model_inputs(data.images, preprocessing)
    _note_left_out(data, run, log)
    if len(set(data.labels.tolist())) < 2:       # before the split says anything about it
        found = ", ".join(sorted(set(data.classes)))
        which = "normal" if data.labels.max() == 0 else "abnormal"
        raise ConfigError(f"{config.data}: only {which} images (label folder(s) {found}; "
                          f"normal: {', '.join(config.normal_labels)}); triage needs normal and "
                          "abnormal images, also a one-class model, to choose its operating "
                          "point")
    train_idx, val_idx = train_val_split(data, config.val_fraction, config.patient_split_seed,
                                         config.val_split)
    if config.kind == "oneclass":
        train_idx, val_idx = oneclass_split(data, train_idx, val_idx, log)
    train, val = data.subset(train_idx), data.subset(val_idx)
    if len(set(val.labels.tolist())) < 2:
        n_abnormal = int(val.labels.sum())
        raise ConfigError(f"the validation split needs normal and abnormal images to choose the "
                          f"operating point; it has {len(val.labels) - n_abnormal} normal and "
                          f"{n_abnormal} abnormal, from {len(set(data.patients))} patients "
                          "(more images of the missing kind, or a larger val_fraction)")
    log(f"{config.kind}: {len(train.labels)} training images "
        f"({int(train.labels.sum())} abnormal), {len(val.labels)} validation images "
        f"({int(val.labels.sum())} abnormal), {len(set(data.patients))} patients"
        + ("; train/val split of the manifest" if data.splits is not None else ""))

    # Fixed features learn nothing: of the methods, only the default transforms reach here with
    # them (validate() refuses the others), and it does not apply.
    fixed = config.model in FIXED_FEATURE_NETWORKS
    contrastive = config.kind == "oneclass" and config.oneclass_method == "contrastive"
    # The contrastive method also recognises the views: its first 8 outputs, then a projection.
    transforms = config.kind == "oneclass" and config.oneclass_method in (
        "transforms", "contrastive") and not fixed
    synthetic = config.kind == "oneclass" and config.oneclass_method == "synthetic"
    outputs = 8 + PROJECTION_DIM if contrastive else 8 if transforms else 1
    patch_nn = config.kind == "oneclass" and config.oneclass_score == "patch-nn"
    extra_args = {"memory_size": config.memory_size} if patch_nn else {}
    init_info, members, member_args = None, None, {}
    if config.ensemble:
        model, member_args, members = _assemble_ensemble(config)
        log(f"ensemble of {len(members)} trained models ({', '.join(m['model'] for m in members)}"
            "): only the calibration, threshold and out-of-distribution limit are fitted")
    elif fixed:
        model = create_model(config.model, **config.model_args)
        log(f"{config.model}: fixed features, nothing to train; fitting the normal images' "
            "Gaussian")
    else:
        model = create_model(config.model, num_outputs=outputs, **extra_args,
                             **config.model_args)
    if config.init_from:
        line, init_info = _initialise_backbone(model, config)
        log(line)
    model = model.to(device)
    # A dummy parameter where the network has none (fixed features): there are no steps then.
    opt = torch.optim.AdamW(list(model.parameters()) or [torch.nn.Parameter(torch.zeros(1))],
                            lr=config.lr, weight_decay=config.weight_decay)
    # Batches are whole (batch norm); with fewer images than a batch there would be no step.
    batch_size = min(config.batch_size, len(train.labels))
    if config.epochs and batch_size < 2:
        raise ConfigError(f"{len(train.labels)} training image(s): too few to train on")
    if batch_size < config.batch_size and config.epochs:
        log(f"note: batch size {batch_size} (only {len(train.labels)} training images)")
    steps = config.epochs * max(1, len(train.labels) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(steps, 1))
    gen = torch.Generator().manual_seed(config.seed)
    n_pos, n_neg = int(train.labels.sum()), int((1 - train.labels).sum())
    pos_weight = torch.tensor(n_neg / max(n_pos, 1), device=device)
    images = torch.from_numpy(train.images)[:, None]
    labels = torch.from_numpy(train.labels).float()
    best_state, best_val, history = None, -math.inf, []
    if synthetic:
        # Model selection must not look at real abnormal images: validation normals against
        # the same normals with a synthetic anomaly (drawn once, so every epoch sees the same).
        normal = torch.from_numpy(val.images[val.labels == 0])[:, None]
        altered, _ = add_anomalies(normal, torch.Generator().manual_seed(config.seed + 1))
        synth_images = torch.cat([normal, altered])[:, 0].numpy()
        synth_labels = np.r_[np.zeros(len(normal)), np.ones(len(altered))]
    start = time.perf_counter()
    stop = _StopRequest()
    try:
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(labels), generator=gen)
            losses = []
            for i in range(0, len(order) - batch_size + 1, batch_size):
                if stop.requested:
                    break
                idx = order[i: i + batch_size]
                x = augment(images[idx], gen, config.augment, config.max_zoom).to(device)
                if contrastive:
                    # Two augmentations of each image, in the same view: they should match each
                    # other and no other image (SimCLR), and the view should be recognised.
                    x2 = augment(images[idx], gen, config.augment, config.max_zoom).to(device)
                    k = torch.randint(0, 8, (len(idx),), generator=gen)
                    out = model(torch.cat([transform8(x, k), transform8(x2, k)]))
                    loss = (F.cross_entropy(out[:, :8], k.repeat(2).to(device))
                            + nt_xent(out[:, 8:]))
                elif transforms:
                    k = torch.randint(0, 8, (len(idx),), generator=gen)
                    loss = F.cross_entropy(model(transform8(x, k)), k.to(device))
                elif synthetic:
                    # Dense targets: each last-stage location learns whether it saw altered
                    # tissue, a far stronger signal than one label per image.
                    chosen = torch.rand(len(idx), generator=gen) < 0.5
                    if chosen.any():
                        altered, mask = add_anomalies(x[chosen].cpu(), gen)
                        x[chosen] = altered.to(device)
                    logits = model.location_logits(x)
                    target = torch.zeros_like(logits)
                    if chosen.any():
                        cells = F.adaptive_avg_pool2d(mask, logits.shape[-2:])[:, 0]
                        target[chosen.to(device)] = (cells > 0.1).float().to(device)
                    loss = F.binary_cross_entropy_with_logits(logits, target)
                else:
                    loss = F.binary_cross_entropy_with_logits(model(x), labels[idx].to(device),
                                                              pos_weight=pos_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
            model.eval()
            if stop.requested:
                if best_state is None:
                    raise KeyboardInterrupt
                log(f"interrupted in epoch {epoch + 1}: finishing with the best of the "
                    f"{len(history)} epoch(s) done (calibration and saving take a moment; "
                    "interrupt again to stop without saving)")
                break
            if config.kind == "supervised":
                val_score = auroc(val.labels, batched(model, val.images, device))
                note = f"val AUROC {val_score:.4f}"
            elif synthetic:
                val_score = auroc(synth_labels, batched(model.anomaly_logit, synth_images, device))
                note = f"val AUROC normal vs synthetic anomalies {val_score:.4f}"
            else:
                # Model selection must not look at abnormal images: use the normal images' loss.
                normal = torch.from_numpy(val.images[val.labels == 0])[:, None]
                k = torch.arange(len(normal)) % 8
                logits = batched(model, transform8(normal, k)[:, 0].numpy(), device)[:, :8]
                val_score = -float(F.cross_entropy(torch.from_numpy(logits), k))
                note = f"val (normal) transformation loss {-val_score:.4f}"
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                            "val": val_score})
            log(f"epoch {epoch + 1}/{config.epochs}  loss {np.mean(losses):.4f}  {note}"
                + ("  *best" if val_score > best_val else ""))
            if val_score > best_val:
                best_val = val_score
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        stop.restore()
    if best_state is not None:  # None: epochs 0, the init_from network as it is
        model.load_state_dict(best_state)
    model.eval()

    # One-class: the training images are all normal. Supervised: the Gaussian describes
    # everything the classifier was trained on, for the out-of-distribution check.
    view_average = transforms and config.view_average
    # With views, each view counts as a sample in the covariance's shrinkage (n = 8 x images):
    # the views of one image are not independent, but this is the variant measured and chosen
    # on validation (0.966 against 0.960 with a Gaussian per view, X-ray one-class model).
    embed = (lambda x: model.density_features(all_views(x))) if view_average else \
        model.density_features
    if len(train.labels) < 2:       # (with epochs, the batch check has said so already)
        raise ConfigError(f"{len(train.labels)} training image(s): too few to fit the "
                          "feature Gaussian (at least 2 are needed, many more to be useful)")
    # An ensemble refuses fit_zoom and fit_changes: then these are its training images.
    fit_images = fit_inputs(train.images, raw_frames[train_idx], config.fit_zoom,
                            config.fit_changes, config.seed, preprocessing)
    if not members:         # an ensemble's members keep the Gaussians they were fitted with
        if len(fit_images) > len(train.labels):
            log(f"feature Gaussian: {len(train.labels)} training images and "
                f"{len(fit_images) - len(train.labels)} changed or zoomed copies")
        mean, precision = fit_gaussian(batched(embed, fit_images, device, batch=16),
                                       config.covariance)
        model.feature_mean.copy_(torch.from_numpy(mean).float())
        model.feature_precision.copy_(torch.from_numpy(precision).float())
    if patch_nn and not members:
        patches = candidate_patches(lambda x: model.patch_features(x.to(device)), train.images,
                                    config.seed)
        log(f"choosing up to {config.memory_size} of {len(patches)} normal patch features "
            "(greedy coreset; minutes on a CPU)")
        kept = greedy_coreset(patches.to(device), config.memory_size, config.seed).cpu()
        model.patch_memory = patches[kept].to(device)
        extra_args["memory_size"] = len(kept)   # fewer than asked when there are fewer patches
        log(f"patch memory: {len(kept)} of {len(patches)} normal patch features")
    distance = model.view_distance if view_average else \
        (lambda x: model.mahalanobis(model.density_features(x)))
    val_dist = batched(distance, val.images, device)
    if (config.fit_zoom, config.fit_changes) != (DOMAIN_FIT_ZOOM, DOMAIN_FIT_CHANGES):
        del fit_images      # the model's own copies (an ensemble's: none), not the check's
        fit_images = fit_inputs(train.images, raw_frames[train_idx], DOMAIN_FIT_ZOOM,
                                DOMAIN_FIT_CHANGES, config.seed, preprocessing)
    domain = DomainCheck.fit(fit_images, val.images)     # (else the same copies, made already)
    del fit_images
    triage: dict[str, Any] = {"kind": config.kind, "size": config.size,
                              **preprocessing,
                              "normal_labels": list(config.normal_labels),
                              "target_sensitivity": config.target_sensitivity,
                              "ood_distance": float(np.percentile(val_dist, 99)),
                              "distance_p90": float(np.percentile(val_dist, 90)),
                              "distance": "views" if view_average else "upright",
                              "domain_check": domain.card_entry(),
                              "smallest_side": data.smallest_side}
    if config.kind == "supervised":
        # float64: with a large temperature, float32 rounds neighbouring scores into ties (the
        # card's AUROC was 0.8917 where the logits rank at 0.9000).
        logits = np.asarray(batched(model, val.images, device), dtype=np.float64)
        temperature = fit_temperature(logits, val.labels)
        if warning := temperature_warning(temperature):
            log(warning)
        triage["temperature"] = temperature
        calibrated = logits / temperature
    else:
        raw = np.asarray(batched(model.patch_distance, val.images, device) if patch_nn else
                         batched(model.anomaly_logit, val.images, device) if synthetic else
                         val_dist, dtype=np.float64)
        a, b = fit_platt(raw, val.labels)
        triage["platt"] = [a, b]
        triage["score"] = ("patch-nn" if patch_nn else "logit" if synthetic else
                           "mahalanobis-views" if view_average else "mahalanobis")
        calibrated = a * (raw - b)
    prob = expit(calibrated)
    # Chosen on the logits, which a steep calibration does not round to 1.0 (the threshold as a
    # score was then 1.0, and every study at 1.0 was flagged); the score is what people read.
    threshold_logit = threshold_for_sensitivity(val.labels, calibrated,
                                                config.target_sensitivity)
    threshold = float(expit(threshold_logit))
    triage["threshold"] = threshold
    triage["threshold_logit"] = float(threshold_logit)
    sens, spec = sens_spec(val.labels, calibrated, threshold_logit)
    # Ranked by the logit, as evaluate-triage ranks (a steep calibration rounds scores to 1.0);
    # the class counts let evaluate-triage tell a worse operating point from chance.
    metrics = {"val_auroc": auroc(val.labels, calibrated),
               "val_auprc": auprc(val.labels, calibrated),
               "val_sensitivity": sens, "val_specificity": spec,
               "val_images": int(len(val.labels)),
               "val_abnormal": int(val.labels.sum()),
               "val_normal": int(len(val.labels) - val.labels.sum()), "train_minutes":
               round((time.perf_counter() - start) / 60, 1)}
    for line in validation_warnings(val.labels, prob, metrics["val_auroc"]):
        log(line)
    card = ModelCard(
        name=config.name, architecture="triage_ensemble" if members else config.model,
        arguments=({"members": len(members), **member_args} if members else
                   model.card_arguments if fixed else
                   {**config.model_args, **extra_args, "num_outputs": outputs}), task="triage",
        modality=config.modality, description=config.description,
        intensity="float32 in [0, 1] by the image's intensity window; middle frame resized to "
                  f"{config.size}x{config.size}"
                  + (", cropped to its content" if config.crop else "")
                  + (", histogram-equalised" if config.equalize else ""),
        # root as given (bundled cards name ../shared/... from the repository) and resolved,
        # so that evaluate-triage knows it from any folder.
        training_data={"root": str(config.data), "sources": [str(config.data)],
                       "root_resolved": str(Path(config.data).resolve()),
                       "images": {"train": int(len(train.labels)), "val": int(len(val.labels))},
                       "abnormal_in_training": int(train.labels.sum()),
                       "left_out": len(data.skipped), "unreadable": len(data.failures),
                       "classes": sorted(set(data.classes)),
                       **({"init_from": init_info} if init_info else {}),
                       **({"ensemble": members} if members else {})},
        config=asdict(config), metrics=metrics, extra={"triage": triage, "history": history})
    if config.robustness:
        from ..models.card import LoadedModel
        from .robustness import frame_scores, shifted_aurocs
        from .score import TriageScorer

        scorer = TriageScorer(LoadedModel(model.cpu(), card, run / "best.safetensors",
                                          domain.tensors()))
        robust = shifted_aurocs(frame_scores(scorer), raw_frames[val_idx], val.labels)
        metrics["val_robust_auroc"] = robust["robust_auroc"]
        card.extra["robustness"] = robust
        worst = min(((v, f"{name}, {mode.replace('_', ' ')}")
                     for name, row in robust["shifts"].items() for mode, v in row.items()))
        log(f"validation AUROC under simulated acquisition changes: mean "
            f"{robust['robust_auroc']:.4f}, lowest {worst[0]:.4f} ({worst[1]})")
    path = save_checkpoint(model, card, run / "best.safetensors", aux=domain.tensors())
    if config.register:
        save_checkpoint(model, card, registered, aux=domain.tensors())
    log(f"validation: AUROC {metrics['val_auroc']:.4f}, sensitivity {sens:.3f}, specificity "
        f"{spec:.3f} at threshold {threshold:.4f} (logit {threshold_logit:.3f}); saved {path}")
    return path, metrics
