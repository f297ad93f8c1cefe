"""Tiled inference with overlap and blending, separate from any model (after MONAI's inferers).

:func:`tiled_apply` runs any callable ``predictor(batch) -> batch`` over overlapping windows of an
image and blends the window outputs into one result of the same shape (times ``scale`` for
super-resolution). Peak memory depends on the window size and batch, not on the image.

Windows are *balanced*: an axis of length L that needs n windows of at most ``tile`` pixels gets n
equal windows just large enough to overlap by ``overlap`` pixels, so a 1024-pixel side with
512-pixel tiles and 64 pixels of overlap costs 3 windows of 384, not 3 of 512. Window starts are
multiples of ``size_multiple``, so a pixel-unshuffle network sees the same pixel phase as on the
whole image.

Blend modes: ``"ramp"`` gives each window zero weight in the outer quarter of the overlap along an
inner edge (where the network saw padding instead of the neighbouring image), then a raised-cosine
ramp over the middle half; neighbouring ramps sum to one. ``"constant"`` weights all pixels equally.
Image borders are never ramped: there the whole-image result sees the same border.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

Predictor = Callable[[torch.Tensor], torch.Tensor]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def axis_windows(length: int, tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """Window size and starts covering ``length`` (a multiple of ``multiple``) on one axis."""
    if length <= tile:
        return length, [0]
    # Starts are rounded down to the multiple, which can cost up to multiple - 1 pixels of overlap.
    needed = overlap + multiple - 1
    count = math.ceil((length - needed) / (tile - needed))
    window = min(length, _round_up(math.ceil((length + (count - 1) * needed) / count), multiple))
    span = length - window
    starts = [int(i * span / (count - 1)) // multiple * multiple for i in range(count - 1)]
    return window, starts + [span]


def _ramp(window: int, starts: list[int], length: int, overlap: int, mode: str,
          device: torch.device) -> list[torch.Tensor]:
    """One 1-D weight profile per window start (in output pixels)."""
    profiles = []
    d = torch.arange(window, device=device, dtype=torch.float32)
    for start in starts:
        weight = torch.ones(window, device=device)
        if mode == "ramp" and overlap > 0:
            for distance, inner in ((d, start > 0), (d.flip(0), start + window < length)):
                if inner:
                    t = ((distance + 0.5 - overlap / 4) / (overlap / 2)).clamp(0, 1)
                    weight = weight * (0.5 - 0.5 * torch.cos(math.pi * t))
        profiles.append(weight)
    return profiles


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    ph, pw = height - x.shape[-2], width - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def tiled_apply(x: torch.Tensor, predictor: Predictor, *, tile: int = 512, overlap: int = 64,
                blend: str = "ramp", batch_size: int = 2, size_multiple: int = 1, scale: int = 1,
                output_device: torch.device | str | None = None) -> torch.Tensor:
    """Apply ``predictor`` to ``x`` of shape ``(N, C, H, W)`` window by window.

    Parameters
    ----------
    x : Tensor
        Input batch ``(N, C, H, W)``.
    predictor : callable
        Maps ``(B, C, h, w)`` to ``(B, C_out, h * scale, w * scale)``.
    tile : int
        Largest window side in input pixels; 0 runs the whole (padded) image at once.
    overlap : int
        Pixels shared by neighbouring windows (at least; balancing can add a few).
    blend : {"ramp", "constant"}
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
    if blend not in ("ramp", "constant"):
        raise ConfigError(f"blend must be 'ramp' or 'constant', got {blend!r}")
    if tile < 0 or batch_size < 1 or size_multiple < 1 or scale < 1:
        raise ConfigError("tile must be >= 0 and batch_size, size_multiple, scale >= 1")
    n, _, h, w = x.shape
    out_device = torch.device(output_device) if output_device is not None else x.device
    ph, pw = _round_up(h, size_multiple), _round_up(w, size_multiple)
    if tile == 0:
        return predictor(_pad_to(x, ph, pw))[..., : h * scale, : w * scale].to(out_device)
    tile = _round_up(tile, size_multiple)
    if not 0 <= overlap <= tile // 2 - size_multiple:
        raise ConfigError(f"overlap must be between 0 and {tile // 2 - size_multiple} pixels "
                          f"for {tile}-pixel tiles, got {overlap}")
    padded = _pad_to(x, ph, pw)
    wh, tops = axis_windows(ph, tile, overlap, size_multiple)
    ww, lefts = axis_windows(pw, tile, overlap, size_multiple)
    rows = _ramp(wh * scale, [t * scale for t in tops], ph * scale, overlap * scale, blend,
                 out_device)
    cols = _ramp(ww * scale, [left * scale for left in lefts], pw * scale, overlap * scale, blend,
                 out_device)
    windows = [(i, j) for i in range(len(tops)) for j in range(len(lefts))]
    out: torch.Tensor | None = None
    norm = torch.zeros(1, 1, ph * scale, pw * scale, device=out_device)
    for item in range(n):
        image = padded[item: item + 1]
        for first in range(0, len(windows), batch_size):
            chunk = windows[first: first + batch_size]
            batch = torch.cat([image[..., tops[i]: tops[i] + wh, lefts[j]: lefts[j] + ww]
                               for i, j in chunk])
            result = predictor(batch).to(out_device, torch.float32)
            if out is None:
                out = torch.zeros(n, result.shape[1], ph * scale, pw * scale, device=out_device)
            for k, (i, j) in enumerate(chunk):
                ts, ls = tops[i] * scale, lefts[j] * scale
                weight = torch.outer(rows[i], cols[j])
                out[item, :, ts: ts + wh * scale, ls: ls + ww * scale] += result[k] * weight
                if item == 0:
                    norm[0, 0, ts: ts + wh * scale, ls: ls + ww * scale] += weight
    assert out is not None
    return (out / norm)[..., : h * scale, : w * scale]


@dataclass
class TiledInferer:
    """Settings for :func:`tiled_apply`; call it with an input and any predictor."""

    tile: int = 512
    overlap: int = 64
    blend: str = "ramp"
    batch_size: int = 2

    def __call__(self, x: torch.Tensor, predictor: Predictor, *, size_multiple: int = 1,
                 scale: int = 1) -> torch.Tensor:
        return tiled_apply(x, predictor, tile=self.tile, overlap=self.overlap, blend=self.blend,
                           batch_size=self.batch_size, size_multiple=size_multiple, scale=scale)
