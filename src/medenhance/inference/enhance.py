"""Image -> enhanced image with a trained model: the API behind ``medenhance enhance``.

Each frame (a radiograph, an MR slice) is processed on its own, on the [0, 1] scale of the image's
intensity window, and written back in the input's units by ``write_image``. The noise level of a
blind model is estimated once per frame from the whole frame, not per tile, so that every tile of a
large image is denoised with the same strength and tiled output matches whole-image output.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InvalidImageError, ModalityWarning
from ..image import MedicalImage, check_unit_range
from ..io.padding import fill_from_nearest
from ..models.card import LoadedModel, load_model
from ..models.common import estimate_sigma
from .tiling import tiled_apply


@dataclass
class EnhanceOptions:
    """How to run a network over an image.

    ``noise_level`` (on [0, 1]) overrides the estimate; ``tile=0`` runs each frame whole;
    ``overlap`` (pixels shared by neighbouring tiles) defaults to 64, or the most that ``tile``
    allows when that is less; ``device`` is ``"cpu"`` or ``"cuda"``.
    """

    noise_level: float | None = None
    tile: int = 512
    #: With the bundled denoisers, 64 keeps tiled output within 6e-5 of whole-image output on a
    #: 1024x1024 radiograph (32 gave 1.7e-3 with the earlier, shallower weights).
    overlap: int | None = None
    batch_size: int = 2
    device: str = "cpu"

    @property
    def tile_overlap(self) -> int:
        """The overlap used: as given, or the default for this tile size."""
        if self.overlap is not None:
            return self.overlap
        return min(DEFAULT_OVERLAP, max(self.tile // 2 - 8, 0))

    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings that cannot run (before any work)."""
        for name, kinds, what in (("noise_level", (numbers.Real, type(None)), "a number"),
                                  ("tile", (numbers.Integral,), "a whole number"),
                                  ("overlap", (numbers.Integral, type(None)), "a whole number"),
                                  ("batch_size", (numbers.Integral,), "a whole number"),
                                  ("device", (str,), "'cpu' or 'cuda'")):
            value = getattr(self, name)
            if not isinstance(value, kinds) or isinstance(value, (bool, np.bool_)):
                raise ConfigError(f"EnhanceOptions.{name} must be {what}, got {value!r} "
                                  f"({type(value).__name__})")
        if self.noise_level is not None and not 0.0 <= self.noise_level < 1.0:
            raise ConfigError(f"noise level must be in [0, 1) (of the image range), got "
                              f"{self.noise_level}")
        if self.tile < 0 or (0 < self.tile < 32):
            raise ConfigError(f"tile must be 0 (off) or at least 32 pixels, got {self.tile}")
        if self.tile and not 0 <= self.tile_overlap <= self.tile // 2 - 8:
            raise ConfigError(f"overlap must be 0 to {self.tile // 2 - 8} pixels for "
                              f"{self.tile}-pixel tiles, got {self.tile_overlap}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda': this torch has no CUDA device (use 'cpu')")


DEFAULT_OVERLAP = 64


#: The smallest frame side a denoiser is given: its noise estimate and its 3x3 filters need
#: neighbours; a smaller "image" is a mistake, not a picture to enhance.
MIN_SIDE = 8


def check_enhancement_model(model: LoadedModel) -> LoadedModel:
    """``model``, unless it is a triage model (it scores images; it cannot enhance them)."""
    if model.card.task == "triage":
        raise ConfigError(f"model {model.card.name!r} is a triage model, not an enhancement one "
                          "(see `medenhance models`; use it with `medenhance triage`)")
    return model


def _loaded(model: LoadedModel | str | os.PathLike[str]) -> LoadedModel:
    return check_enhancement_model(model if isinstance(model, LoadedModel) else load_model(model))


@torch.inference_mode()
def enhance_array(frames: np.ndarray, model: LoadedModel | str | os.PathLike[str],
                  options: EnhanceOptions | None = None,
                  keep: np.ndarray | None = None) -> tuple[np.ndarray, list[float | None]]:
    """Enhance ``(H, W)`` or ``(N, H, W)`` pixels in [0, 1] with a model (loaded, or a name or
    path as for :func:`load_model`); returns pixels and sigma per frame.

    ``keep`` (the shape of ``frames``): pixels that are not part of the picture, such as DICOM
    padding outside a CT's field of view. For networks that keep the size (all bundled ones; a
    super-resolving one sees the pixels as they are), they are returned unchanged, and the
    network sees them filled from the nearest picture pixels, so that the edge of the field of
    view is not a step (a -2000 HU border made the denoised ring inside it twice as far from the
    truth as the noisy input was)."""
    opts = EnhanceOptions() if options is None else options
    if not isinstance(opts, EnhanceOptions):
        raise ConfigError(f"options must be EnhanceOptions(...), got {type(opts).__name__}")
    opts.validate()
    model = _loaded(model)
    frames = np.asarray(frames)
    if frames.dtype.kind not in "buif":
        raise InvalidImageError(f"expected numeric pixels, got dtype {frames.dtype}")
    net = model.network
    device = torch.device(opts.device)
    # oneDNN's CPU convolutions run faster on channels-last (NHWC) tensors: measured 1.3x for the
    # bundled denoisers (1.43 against 1.07 megapixels/s on a 1024x1024 radiograph); same
    # arithmetic, so results agree to rounding (4e-7).
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    net.to(memory_format=memory_format)
    single = frames.ndim == 2
    stack = frames[None] if single else frames
    if stack.ndim != 3:
        raise InvalidImageError(f"expected (H, W) or (N, H, W) pixels, got shape {frames.shape}")
    if min(stack.shape[1:]) < MIN_SIDE:
        raise InvalidImageError(f"frames of {stack.shape[1]}x{stack.shape[2]} pixels are too "
                                f"small to enhance (at least {MIN_SIDE}x{MIN_SIDE})")
    if not np.isfinite(stack).all():
        raise InvalidImageError("pixels hold NaN or infinite values")
    check_unit_range(stack, "enhance_array")
    same_size = int(net.scale) == 1     # what is kept as it is needs the output's size
    masks = None if keep is None or not same_size else (keep[None] if single else keep)
    if masks is not None and masks.shape != stack.shape:
        raise InvalidImageError(f"keep mask of shape {keep.shape} for pixels of shape "
                                f"{frames.shape}")
    outputs, sigmas = [], []
    for i, frame in enumerate(stack):
        x = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32))[None, None].to(device)
        sigma: float | None = None
        if getattr(net, "uses_sigma", False):
            # From the frame as it is: padding is flat and clipped, so the estimate leaves it out.
            sigma = (opts.noise_level if opts.noise_level is not None
                     else float(estimate_sigma(x)[0]))
        mask = None if masks is None or not masks[i].any() else masks[i]
        # Nothing to remove: a flat frame (an empty slice) or a declared noise level of 0 comes
        # back as it is. The networks were trained on noise of at least 2/255 and would still
        # change it (a flat frame by up to 0.02, a clean MR slice by 1.4/255 on average at 0).
        # An estimated 0 is not enough: quantised dark backgrounds give it to real MR slices.
        if same_size and (frame.min() == frame.max() or opts.noise_level == 0):
            outputs.append(np.array(frame, dtype=np.float32))
            sigmas.append(None if frame.min() == frame.max() else 0.0)
            continue
        if mask is not None:
            filled = fill_from_nearest(np.asarray(frame, dtype=np.float32), mask)
            x = torch.from_numpy(np.ascontiguousarray(filled))[None, None].to(device)

        def predict(batch: torch.Tensor, sigma: float | None = sigma) -> torch.Tensor:
            batch = batch.contiguous(memory_format=memory_format)
            return (net(batch) if sigma is None else net(batch, sigma)).contiguous()

        # A frame that fits in one tile runs whole (padding it up to the tile would cost more).
        tile = 0 if max(frame.shape) <= opts.tile else opts.tile
        y = tiled_apply(x, predict, tile=tile, overlap=opts.tile_overlap,
                        batch_size=opts.batch_size, size_multiple=int(net.size_multiple),
                        scale=int(net.scale), output_device="cpu")
        out = y[0, 0].clamp(0, 1).numpy()
        outputs.append(out if mask is None else np.where(mask, frame, out).astype(np.float32))
        sigmas.append(sigma)
    out = np.stack(outputs)
    return (out[0] if single else out), sigmas


def enhance_image(image: MedicalImage, model: LoadedModel | str | os.PathLike[str],
                  options: EnhanceOptions | None = None) -> MedicalImage:
    """Enhance a :class:`MedicalImage` with a model (a loaded one, a name or a checkpoint path).

    The result keeps the input's metadata (so it is written in the same format and units) and
    records the model and the noise level used in its history. An image of a DICOM modality
    the model was not trained on draws a :class:`~medenhance.errors.ModalityWarning`.
    """
    from ..io.padding import from_picture, keep_padding, padding_mask, picture_span, to_picture

    if not isinstance(image, MedicalImage):
        raise InvalidImageError(f"enhance_image takes a MedicalImage (from read_image or "
                                f"from_array), got {type(image).__name__}; for bare pixels in "
                                "[0, 1] use enhance_array")
    if options is not None and not isinstance(options, EnhanceOptions):
        raise ConfigError(f"options must be EnhanceOptions(...), got {type(options).__name__}")
    loaded = _loaded(model)
    opts = options or EnhanceOptions()
    foreign = loaded.card.foreign_modality(image.meta.modality)
    if foreign:
        warnings.warn(f"{image.meta.source_path or 'image'}: modality {foreign}, but "
                      f"{loaded.card.name} was trained on {loaded.card.modality} images",
                      ModalityWarning, stacklevel=2)
    mask = padding_mask(image)
    # Padding far beyond the picture (an unsigned CT padded with 63536): the network sees the
    # picture over [0, 1], and noise levels are on that scale.
    span = picture_span(image, mask)
    pixels, sigmas = enhance_array(to_picture(image.pixels, span), loaded, opts, keep=mask)
    pixels = from_picture(pixels, span)
    known = [s for s in sigmas if s is not None]          # flat frames had no level
    level = f", noise level {np.mean(known) * 255:.1f}/255" if known else ""
    # Identifies the derivation for the derived DICOM series: the weights and the settings.
    derivation = (f"{loaded.card.task} {Path(loaded.path).resolve()} "
                  f"noise_level={opts.noise_level}")
    return image.with_pixels(keep_padding(image, pixels, mask),
                             f"{loaded.card.task} with model {loaded.card.name}{level}",
                             derivation)


def enhance_images(images: Sequence[MedicalImage], model: LoadedModel | str | os.PathLike[str],
                   options: EnhanceOptions | None = None) -> list[MedicalImage]:
    """:func:`enhance_image` for each image of a sequence, loading the model once."""
    if isinstance(images, MedicalImage):
        images = [images]
    loaded = _loaded(model)
    return [enhance_image(im, loaded, options) for im in images]
