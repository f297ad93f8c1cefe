"""Tiled inference with overlap and blending, separate from any model (after MONAI's inferers).

:func:`tiled_apply` runs any callable ``predictor(batch) -> batch`` over overlapping windows of an
image and blends the window outputs into one result of the same shape (times ``scale`` for
super-resolution). Peak memory depends on the window size and batch, not on the image: a
4096 x 4096 radiograph runs in windows of 256 x 256. Inputs smaller than a window, or not a multiple
of the model's ``size_multiple``, are padded (reflection) and cropped back.

Blend modes: ``"constant"`` weights every window equally; ``"gaussian"`` weighs window edges less
(sigma = ``sigma_scale`` x window size), which hides seams where a network's receptive field is cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

Predictor = Callable[[torch.Tensor], torch.Tensor]


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def _weights(window: int, scale: int, mode: str, sigma_scale: float,
             device: torch.device) -> torch.Tensor:
    size = window * scale
    if mode == "constant":
        return torch.ones(size, size, device=device)
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    # Clamped per axis, not after the product: along an image border every window is at its
    # edge in one axis, and the other axis must still decide which window is trusted.
    g = torch.exp(-0.5 * (coords / (sigma_scale * size)) ** 2).clamp_min(1e-3)
    return torch.outer(g, g) / g.max() ** 2


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    ph, pw = height - x.shape[-2], width - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def tiled_apply(x: torch.Tensor, predictor: Predictor, *, tile: int = 256,
                overlap: float = 0.25, blend: str = "gaussian", sigma_scale: float = 0.125,
                batch_size: int = 4, size_multiple: int = 1, scale: int = 1,
                output_device: torch.device | str | None = None) -> torch.Tensor:
    """Apply ``predictor`` to ``x`` of shape ``(N, C, H, W)`` window by window.

    Parameters
    ----------
    x : Tensor
        Input batch ``(N, C, H, W)``.
    predictor : callable
        Maps ``(B, C, h, w)`` to ``(B, C_out, h * scale, w * scale)``.
    tile : int
        Window side in input pixels; 0 runs the whole (padded) image at once.
    overlap : float
        Fraction of the window shared by neighbours, in [0, 1).
    blend : {"gaussian", "constant"}
    sigma_scale : float
        Gaussian sigma as a fraction of the window side.
    batch_size : int
        Windows per predictor call.
    size_multiple : int
        The predictor needs sides that are multiples of this (pixel-unshuffle, pooling levels).
    scale : int
        Output / input size ratio (1 for denoising, 2-4 for super-resolution).
    output_device : device, optional
        Where the result is stitched (default: the input's device), so large images can be
        stitched on the CPU while windows run on a GPU.

    Returns
    -------
    Tensor
        ``(N, C_out, H * scale, W * scale)``, float32.
    """
    if x.ndim != 4:
        raise ConfigError(f"tiled_apply expects (N, C, H, W), got shape {tuple(x.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in ("gaussian", "constant"):
        raise ConfigError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    if tile < 0 or batch_size < 1 or size_multiple < 1 or scale < 1:
        raise ConfigError("tile must be >= 0 and batch_size, size_multiple, scale >= 1")
    n, _, h, w = x.shape
    out_device = torch.device(output_device) if output_device is not None else x.device
    if tile == 0:
        padded = _pad_to(x, _round_up(h, size_multiple), _round_up(w, size_multiple))
        return predictor(padded)[..., : h * scale, : w * scale].to(out_device)
    window = _round_up(tile, size_multiple)
    ph, pw = max(_round_up(h, size_multiple), window), max(_round_up(w, size_multiple), window)
    padded = _pad_to(x, ph, pw)
    stride = max(size_multiple, int(round(window * (1.0 - overlap))) // size_multiple
                 * size_multiple)
    corners = [(top, left) for top in _starts(ph, window, stride)
               for left in _starts(pw, window, stride)]
    weight = _weights(window, scale, blend, sigma_scale, out_device)
    out: torch.Tensor | None = None
    norm = torch.zeros(1, 1, ph * scale, pw * scale, device=out_device)
    for item in range(n):
        image = padded[item: item + 1]
        for first in range(0, len(corners), batch_size):
            chunk = corners[first: first + batch_size]
            batch = torch.cat([image[..., t: t + window, l: l + window] for t, l in chunk])
            result = predictor(batch).to(out_device, torch.float32)
            if out is None:
                out = torch.zeros(n, result.shape[1], ph * scale, pw * scale, device=out_device)
            for k, (t, l) in enumerate(chunk):
                ts, ls, ws = t * scale, l * scale, window * scale
                out[item, :, ts: ts + ws, ls: ls + ws] += result[k] * weight
                if item == 0:
                    norm[0, 0, ts: ts + ws, ls: ls + ws] += weight
    assert out is not None
    return (out / norm)[..., : h * scale, : w * scale]


@dataclass
class TiledInferer:
    """Settings for :func:`tiled_apply`; call it with an input and any predictor."""

    tile: int = 256
    overlap: float = 0.25
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 4

    def __call__(self, x: torch.Tensor, predictor: Predictor, *, size_multiple: int = 1,
                 scale: int = 1) -> torch.Tensor:
        return tiled_apply(x, predictor, tile=self.tile, overlap=self.overlap, blend=self.blend,
                           sigma_scale=self.sigma_scale, batch_size=self.batch_size,
                           size_multiple=size_multiple, scale=scale)
