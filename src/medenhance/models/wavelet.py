"""Fixed Gabor-wavelet features for one-class triage: nothing to learn but a Gaussian.

A one-class model needs features that describe normal anatomy well, and no pretrained network
can be downloaded here. A network trained on a few dozen normal slices (57 in the training split
of the Nickparvar brain MRI folder) learns little; a fixed wavelet filter bank needs no training
at all and is what the scattering transform builds on (Bruna & Mallat, IEEE TPAMI 2013: the
modulus of complex wavelet responses, averaged locally, is stable to small deformations and
informative about texture and edges). Here, its first order and, on request, a reduced second:

* a bank of complex Gabor filters, ``wavelengths`` (px, at the model's input size) times
  ``orientations`` over 180 degrees, each zero-mean with a bandwidth of about one octave;
* the modulus of each response, averaged over the cells of a ``grid`` x ``grid`` partition of the
  frame, and its logarithm (so that a change of contrast shifts the features instead of scaling
  them): ``len(wavelengths) * orientations * grid**2`` features; with ``relative``, each
  wavelength's features less their mean over the frame's cells and orientations, so that what
  acts on the whole frame at one scale (quantum noise at the finest, a detector's sharpness, an
  exposure's contrast) moves no feature, and only how the energy is spread over the frame counts;
* with ``second_order``, the scattering transform's second order as well, reduced: each
  wavelength's first-order moduli averaged over the orientations, filtered again by every longer
  wavelength's filters, and the log of that modulus's mean in each cell relative to the
  first-order map's mean there (so it does not move with contrast either, where that mean stands
  well above :data:`LEVEL_FLOOR`; in a dark cell beside a bright one, the longer filters'
  reach into the bright one is compared with the floor and does move): how the texture of
  one scale is modulated at a coarser one, which the first order cannot tell (Bruna & Mallat);
  ``orientations`` features per pair of wavelengths and cell (576 for the defaults, on top of 384);
* a Gaussian fitted to the normal training images' features; the anomaly score is the
  Mahalanobis distance to it, as for the learnt features of :mod:`.classifier` (Rippel et al.,
  ICPR 2020), and each cell's share of its square is a map of where the image looks unlike
  normal.

The filters are computed, not stored: the checkpoint holds only the Gaussian.
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

#: Floor under the averaged modulus before the logarithm: flat (background) cells of a frame in
#: [0, 1] otherwise give -inf.
MODULUS_FLOOR = 1e-3
#: Floor under a cell's first-order mean modulus when the second order is taken relative to it:
#: smaller than :data:`MODULUS_FLOOR`, which is a fifth of the finest scale's mean on the Kermany
#: radiographs and would make the ratio move with contrast.
LEVEL_FLOOR = 1e-4
#: Half-width cap of a filter in px (the longest wavelength's envelope is cut at about 2.2 sigma).
MAX_HALF_WIDTH = 40
#: Frame shapes whose filter spectra are kept (about 10 MB each at 128 px, 240 MB at 1024 px).
MAX_CACHED_SHAPES = 4
#: Border added around a frame before the FFT convolution, more than any filter's half-width, so
#: that the circular convolution does not wrap one edge onto the other.
BORDER = MAX_HALF_WIDTH + 8


def gabor_kernel(wavelength: float, angle: float) -> torch.Tensor:
    """A complex Gabor filter, ``(2 h + 1, 2 h + 1)`` complex128: a plane wave of ``wavelength``
    px along ``angle`` (radians) under a Gaussian envelope of sigma ``0.56 wavelength`` (about one
    octave of bandwidth), made zero-mean (a flat image gives no response) and L1-normalised."""
    sigma = 0.56 * wavelength
    half = int(min(3 * sigma, MAX_HALF_WIDTH))
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    envelope = torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    along = x * math.cos(angle) + y * math.sin(angle)
    kernel = envelope * torch.exp(1j * 2 * math.pi * along / wavelength)
    kernel = kernel - envelope * (kernel.sum() / envelope.sum())
    return kernel / kernel.abs().sum()


class WaveletFeatures(nn.Module):
    """Input ``(N, 1, H, W)`` in [0, 1]; :meth:`density_features` ``(N, density_dim)``;
    ``forward`` the Mahalanobis distance to the fitted Gaussian, ``(N,)``."""

    scale = 1
    size_multiple = 16
    uses_sigma = False
    task = "classify"
    #: Stored as its upper triangle (:func:`.card.save_checkpoint`): with the second order, 960 x
    #: 960 values, most of a checkpoint's bytes.
    symmetric_buffers = ("feature_precision",)

    def __init__(self, wavelengths: tuple[float, ...] = (4, 8, 16, 32), orientations: int = 6,
                 grid: int = 4, relative: bool = False, second_order: bool = False) -> None:
        super().__init__()
        try:
            wavelengths = tuple(float(w) for w in wavelengths)
        except (TypeError, ValueError):
            raise ValueError(f"wavelengths: a list of numbers (px), e.g. [4, 8, 16, 32], got "
                             f"{wavelengths!r}") from None
        if not 1 <= len(wavelengths) <= 8 or not all(2 <= w <= 128 for w in wavelengths):
            raise ValueError("wavelengths >= 2 px and <= 128 px, one to eight of them, got "
                             f"{list(wavelengths)}")
        for name, value, top in (("orientations", orientations, 16), ("grid", grid, 16)):
            if isinstance(value, bool) or not isinstance(value, Integral) or not 1 <= value <= top:
                raise ValueError(f"{name}: a whole number from 1 to {top}, got {value!r}")
        for name, flag in (("relative", relative), ("second_order", second_order)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}: true or false, got {flag!r}")
        self.relative = relative
        self.second_order = second_order
        self.wavelengths = wavelengths
        self.orientations = int(orientations)  # type: ignore[arg-type]
        self.grid = int(grid)
        self.kernels = [gabor_kernel(w, math.pi * k / orientations)
                        for w in self.wavelengths for k in range(orientations)]
        #: Second order: (shorter, longer) wavelength indices.
        self.pairs = [(i, j) for i, short in enumerate(wavelengths)
                      for j, long in enumerate(wavelengths) if long > short] \
            if second_order else []
        if second_order and not self.pairs:
            raise ValueError("second_order: needs two different wavelengths or more")
        self.channels = len(self.kernels) + len(self.pairs) * self.orientations
        self.density_dim = self.channels * grid * grid
        self.register_buffer("feature_mean", torch.zeros(self.density_dim))
        self.register_buffer("feature_precision", torch.zeros(self.density_dim, self.density_dim))
        self._spectra: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def card_arguments(self) -> dict[str, object]:
        """The filter bank as built, for the model card: a card names its features whatever the
        defaults of a later version."""
        # ``relative`` and ``second_order`` only when set: cards written before they existed
        # name the same features.
        return {"wavelengths": list(self.wavelengths), "orientations": self.orientations,
                "grid": self.grid, **({"relative": True} if self.relative else {}),
                **({"second_order": True} if self.second_order else {})}

    def _filter_spectra(self, height: int, width: int) -> torch.Tensor:
        """The filters' spectra on a ``height`` x ``width`` grid, ``(C, height, width)``."""
        if (height, width) not in self._spectra:
            if len(self._spectra) >= MAX_CACHED_SHAPES:      # frames of many sizes (the API)
                self._spectra.pop(next(iter(self._spectra)))
            spectra = []
            for kernel in self.kernels:
                half = kernel.shape[0] // 2
                placed = torch.zeros(height, width, dtype=torch.complex128)
                placed[: kernel.shape[0], : kernel.shape[1]] = kernel
                spectra.append(torch.fft.fft2(torch.roll(placed, (-half, -half), (0, 1))))
            self._spectra[(height, width)] = torch.stack(spectra).to(torch.complex64)
        return self._spectra[(height, width)]

    @staticmethod
    def _bordered(x: torch.Tensor) -> torch.Tensor:
        """``x`` with :data:`BORDER` pixels around it: mirrored at its edges, so that the
        frame's border is not an edge, as far as reflection can go (less than the side), and the
        rest repeating the outermost pixels."""
        h, w = x.shape[-2:]
        mirrored = min(BORDER, h - 1, w - 1)
        out = F.pad(x.float(), (mirrored,) * 4, mode="reflect") if mirrored > 0 else x.float()
        if mirrored < BORDER:
            out = F.pad(out, (BORDER - mirrored,) * 4, mode="replicate")
        return out

    def response_moduli(self, x: torch.Tensor) -> torch.Tensor:
        """``|x * filter|`` for every filter at every pixel, ``(N, C, H, W)`` (see
        :meth:`_bordered` for the frame's edges)."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected frames of shape (N, 1, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        padded = self._bordered(x)
        spectra = self._filter_spectra(*padded.shape[-2:]).to(padded.device)
        out = torch.fft.ifft2(torch.fft.fft2(padded) * spectra).abs()
        return out[..., BORDER: BORDER + h, BORDER: BORDER + w]

    def _cell_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, grid, grid)``: log of each response's mean modulus in each cell (then, with
        ``second_order``, the second order's, :meth:`_second_order_features`)."""
        # Every response at full resolution: computing the longer wavelengths' on coarser grids
        # (cropped spectra) was 3x faster but moved their features by up to 0.25 (log units) on
        # smoothed noise, whose features spread by 0.37.
        moduli = self.response_moduli(x)
        features = torch.log(F.adaptive_avg_pool2d(moduli, self.grid) + MODULUS_FLOOR)
        if self.relative:
            per_scale = features.view(len(x), len(self.wavelengths), -1)
            features = (per_scale - per_scale.mean(2, keepdim=True)).view_as(features)
        if self.second_order:
            features = torch.cat([features, self._second_order_features(moduli)], 1)
        return features

    def _second_order_features(self, moduli: torch.Tensor) -> torch.Tensor:
        """``(N, pairs * orientations, grid, grid)`` from the first-order ``moduli``."""
        n, h, w = len(moduli), *moduli.shape[-2:]
        o = self.orientations
        per_scale = moduli.view(n, len(self.wavelengths), o, h, w).mean(2)
        # Second-order moduli are 10-100 times smaller than the first order's (about 1e-4 on
        # the Kermany radiographs, under MODULUS_FLOOR): relative to the cell's first-order mean
        # they are 0.01-0.1 and do not move with contrast, except in cells whose own mean is
        # near LEVEL_FLOOR (dark background): on the bundled samples at half contrast, up to 0.15.
        level = F.adaptive_avg_pool2d(per_scale, self.grid) + LEVEL_FLOOR
        spectrum = torch.fft.fft2(self._bordered(per_scale))
        spectra = self._filter_spectra(*spectrum.shape[-2:]).to(spectrum.device)
        out = []
        for i, j in self.pairs:
            response = torch.fft.ifft2(spectrum[:, i, None] * spectra[j * o: (j + 1) * o]).abs()
            pooled = F.adaptive_avg_pool2d(
                response[..., BORDER: BORDER + h, BORDER: BORDER + w], self.grid)
            out.append(torch.log(pooled / level[:, i, None] + MODULUS_FLOOR))
        return torch.cat(out, 1)

    def density_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._cell_features(x).flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.density_features(x)

    def mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        """Distance of ``(N, D)`` features to the fitted Gaussian, ``(N,)``."""
        d = features - self.feature_mean
        return torch.sqrt(torch.clamp(((d @ self.feature_precision) * d).sum(1), min=0.0))

    def forward(self, x: torch.Tensor, sigma: object = None) -> torch.Tensor:
        return self.mahalanobis(self.density_features(x))

    def distance_map(self, x: torch.Tensor) -> torch.Tensor:
        """Each cell's share of the squared distance, ``(N, grid, grid)``: where the image
        looks unlike the normal ones. The shares add up to the squared distance; a negative
        share (a cell whose deviation, through the correlations between features, offsets
        another's) is shown as 0."""
        d = self.density_features(x) - self.feature_mean
        share = (d @ self.feature_precision) * d
        return share.view(len(x), self.channels, self.grid, self.grid).sum(1).clamp(min=0.0)


@register_model
def wavelet_features(**kwargs: object) -> WaveletFeatures:
    """Fixed Gabor wavelet features (4, 8, 16, 32 px; 6 orientations; 4 x 4 cells) with a fitted
    Gaussian: a one-class triage model that needs no network training."""
    return WaveletFeatures(**kwargs)  # type: ignore[arg-type]
