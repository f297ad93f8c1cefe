"""Full-reference image quality metrics: MSE, RMSE, MAE, PSNR, SSIM and MS-SSIM.

Every function takes a reference and a test image of the same shape, ``(H, W)`` or a batch
``(N, H, W)`` (arrays, or :class:`~medenhance.MedicalImage` objects, whose pixels are used), a
``data_range`` and an optional boolean foreground ``mask`` of shape ``(H, W)`` or ``(N, H, W)``.
A 2-D input returns a float; a batch returns a float64 array of shape ``(N,)``.

Without ``data_range``, it follows from the reference's type as in scikit-image: for integers,
the span of the type for SSIM and MS-SSIM (255 for uint8, 65535 for uint16 and int16) and for
PSNR the type's maximum unless the reference holds negative values (then the span); 1.0 for
floats, which must then lie on the [0, 1] scale of ``MedicalImage`` pixels. Other floats, and an
integer reference with a test of another type, need an explicit ``data_range``: a guess would
make the numbers meaningless.

PSNR and SSIM agree with :func:`skimage.metrics.peak_signal_noise_ratio` and
:func:`skimage.metrics.structural_similarity` (their defaults: 7x7 uniform window, K1 = 0.01,
K2 = 0.03, sample covariance) to better than 1e-4; ``tests/test_metrics.py`` checks it on real images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from .errors import InvalidImageError
from .image import looks_like_colour

#: Weights of the five MS-SSIM scales (Wang, Simoncelli & Bovik 2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _pixels(image: object) -> np.ndarray:
    pixels = getattr(image, "pixels", image)     # a MedicalImage, or an array
    try:
        arr = np.asarray(pixels)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.dtype.kind not in "buif":
        raise InvalidImageError(f"metrics take numeric arrays or MedicalImage objects, got "
                                f"{type(image).__name__}")
    return arr


def _data_range(ref: np.ndarray, tst: np.ndarray, data_range: float | None,
                rule: str = "span") -> float:
    """``data_range`` as given, or as scikit-image infers it from the reference's type: for
    integers the type's span (``rule="span"``, its SSIM) or, where the reference holds no
    negative value, the type's maximum (``rule="psnr"``)."""
    if data_range is not None:
        try:
            value = float(data_range)
        except (TypeError, ValueError):
            raise InvalidImageError(f"data_range must be a positive number, got "
                                    f"{data_range!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise InvalidImageError(f"data_range must be a positive number, got {data_range}")
        return value
    if ref.dtype.kind in "ui":
        if tst.dtype != ref.dtype:
            raise InvalidImageError(f"the reference is {ref.dtype} and the test {tst.dtype}: "
                                    "pass data_range, or give both on one scale")
        info = np.iinfo(ref.dtype)
        if rule == "psnr" and ref.min() >= 0:
            return float(info.max)
        return float(info.max) - float(info.min)
    if ref.dtype.kind == "b":
        return 1.0
    lo, hi = float(np.min(ref)), float(np.max(ref))
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise InvalidImageError(f"the reference's values span {lo:.6g} to {hi:.6g}, off the "
                                "[0, 1] scale of MedicalImage pixels: pass data_range (the "
                                "span of values the images can take)")
    # The test on another scale (x 255, or integers) gave -43 dB without a word. Noise may
    # carry an unclipped test a little past [0, 1]; a factor of 255 or 65535 cannot.
    if tst.dtype.kind in "ui":
        raise InvalidImageError(f"the reference is {ref.dtype} on the [0, 1] scale and the test "
                                f"{tst.dtype}: give both on one scale (and data_range if it is "
                                "not [0, 1])")
    lo, hi = float(np.min(tst)), float(np.max(tst))
    if lo < -1.0 or hi > 2.0:
        raise InvalidImageError(f"the reference lies on the [0, 1] scale but the test's values "
                                f"span {lo:.6g} to {hi:.6g}: give both on one scale (and "
                                "data_range if it is not [0, 1])")
    return 1.0


def _prepare(reference: np.ndarray, test: np.ndarray, data_range: float | None,
             mask: np.ndarray | None, rule: str = "span"
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool, float]:
    ref, tst = _pixels(reference), _pixels(test)
    if ref.shape != tst.shape:
        raise InvalidImageError(f"reference and test shapes differ: {ref.shape} vs {tst.shape}")
    if ref.ndim not in (2, 3):
        raise InvalidImageError(f"expected (H, W) or (N, H, W) images, got shape {ref.shape}")
    if ref.size == 0:
        raise InvalidImageError(f"the images are empty (shape {ref.shape})")
    # (H, W, 3) would be scored as H images of W x 3 pixels: an array of H numbers.
    if looks_like_colour(ref.shape):
        raise InvalidImageError(f"shape {ref.shape} looks like a colour image (H, W, "
                                f"{ref.shape[2]} channels); metrics take grey images (H, W) or "
                                "a batch (N, H, W): convert to grey, or compare each channel "
                                "as ref[..., c]")
    if not (np.isfinite(ref).all() and np.isfinite(tst).all()):
        raise InvalidImageError("images contain NaN or infinite values")
    data_range = _data_range(ref, tst, data_range, rule)
    ref, tst = ref.astype(np.float64), tst.astype(np.float64)
    single = ref.ndim == 2
    if single:
        ref, tst = ref[None], tst[None]
    m = None
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.ndim == 2 and m.shape == ref.shape[1:]:
            m = np.broadcast_to(m, ref.shape)
        if m.shape != ref.shape:
            raise InvalidImageError(f"mask shape {np.shape(mask)} does not match images {ref.shape}")
        if not m.reshape(len(m), -1).any(axis=1).all():
            raise InvalidImageError("mask selects no pixel in at least one image")
    return ref, tst, m, single, data_range


def _reduce(per_pixel: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return per_pixel.reshape(len(per_pixel), -1).mean(axis=1)
    return np.array([p[m].mean() for p, m in zip(per_pixel, mask, strict=True)])


def _out(values: np.ndarray, single: bool) -> float | np.ndarray:
    return float(values[0]) if single else values


def mse(reference: np.ndarray, test: np.ndarray, *, data_range: float | None = None,
        mask: np.ndarray | None = None) -> float | np.ndarray:
    """Mean squared error, in squared units of the images (``data_range`` is only checked)."""
    ref, tst, m, single, _ = _prepare(reference, test, data_range, mask)
    return _out(_reduce((ref - tst) ** 2, m), single)


def rmse(reference: np.ndarray, test: np.ndarray, *, data_range: float | None = None,
         mask: np.ndarray | None = None) -> float | np.ndarray:
    """Root mean squared error, in units of the images."""
    return np.sqrt(mse(reference, test, data_range=data_range, mask=mask))


def mae(reference: np.ndarray, test: np.ndarray, *, data_range: float | None = None,
        mask: np.ndarray | None = None) -> float | np.ndarray:
    """Mean absolute error, in units of the images."""
    ref, tst, m, single, _ = _prepare(reference, test, data_range, mask)
    return _out(_reduce(np.abs(ref - tst), m), single)


def psnr(reference: np.ndarray, test: np.ndarray, *, data_range: float | None = None,
         mask: np.ndarray | None = None) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``; ``inf`` if identical."""
    ref, tst, m, single, data_range = _prepare(reference, test, data_range, mask, "psnr")
    err = _reduce((ref - tst) ** 2, m)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(data_range**2 / err)
    return _out(values, single)


def _ssim_maps(ref: np.ndarray, tst: np.ndarray, data_range: float,
               blur: Callable[[np.ndarray], np.ndarray], cov_norm: float,
               k1: float = 0.01, k2: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel SSIM and contrast-structure maps for a batch ``(N, H, W)``."""
    ux, uy = blur(ref), blur(tst)
    uxx, uyy, uxy = blur(ref * ref), blur(tst * tst), blur(ref * tst)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cs = (2 * vxy + c2) / (vx + vy + c2)
    lum = (2 * ux * uy + c1) / (ux**2 + uy**2 + c1)
    return lum * cs, cs


def ssim(reference: np.ndarray, test: np.ndarray, *, data_range: float | None = None,
         mask: np.ndarray | None = None, win_size: int = 7) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004), as :func:`skimage.metrics.structural_similarity`.

    Parameters
    ----------
    reference, test : ndarray
        ``(H, W)`` or ``(N, H, W)``; both sides at least ``win_size`` pixels.
    data_range : float, optional
        Dynamic range of the images (by default as the module docstring says: 1.0 on the
        [0, 1] scale, 255 for uint8, ...).
    mask : ndarray of bool, optional
        Foreground; SSIM is averaged over masked pixels of the valid (border-cropped) region.
    win_size : int
        Odd side of the uniform window in pixels.

    Notes
    -----
    As in scikit-image, a border of ``(win_size - 1) // 2`` pixels is excluded from the mean.

    References
    ----------
    Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from error
    visibility to structural similarity", IEEE TIP 13(4), 2004. doi:10.1109/TIP.2003.819861
    """
    ref, tst, m, single, data_range = _prepare(reference, test, data_range, mask)
    if not isinstance(win_size, (int, np.integer)) or isinstance(win_size, bool) \
            or win_size % 2 != 1 or win_size < 3:
        raise InvalidImageError(f"win_size must be an odd integer >= 3, got {win_size!r}")
    if min(ref.shape[-2:]) < win_size:
        raise InvalidImageError(f"images of {ref.shape[-2:]} pixels are smaller than the SSIM "
                                f"window ({win_size}); pass a smaller win_size")
    npix = win_size**2
    maps, _ = _ssim_maps(ref, tst, data_range,
                         lambda a: ndimage.uniform_filter(a, size=(1, win_size, win_size)),
                         npix / (npix - 1.0))
    pad = (win_size - 1) // 2
    crop = (slice(None), slice(pad, -pad), slice(pad, -pad))
    return _out(_reduce(maps[crop], None if m is None else m[crop]), single)


def ms_ssim(reference: np.ndarray, test: np.ndarray, *, data_range: float | None = None,
            mask: np.ndarray | None = None,
            weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> float | np.ndarray:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) with an 11x11 Gaussian window, sigma 1.5.

    Contrast-structure terms of the first ``len(weights) - 1`` scales and the full SSIM of the last
    are combined as a weighted geometric mean; each scale halves the image by 2x2 averaging (and the
    mask by 2x2 "any"). Negative terms are clipped to 0, as in common implementations.

    Raises
    ------
    InvalidImageError
        If the image is too small: the coarsest scale needs at least 11 pixels per side, i.e.
        ``11 * 2**(len(weights) - 1)`` pixels (176 for five scales); pass fewer weights for less.

    References
    ----------
    Z. Wang, E. P. Simoncelli, A. C. Bovik, "Multiscale structural similarity for image quality
    assessment", Asilomar Conference on Signals, Systems and Computers, 2003.
    doi:10.1109/ACSSC.2003.1292216
    """
    ref, tst, m, single, data_range = _prepare(reference, test, data_range, mask)
    levels = len(weights)
    need = 11 * 2 ** (levels - 1)
    if min(ref.shape[-2:]) < need:
        raise InvalidImageError(f"MS-SSIM with {levels} scales needs images of at least {need} "
                                f"pixels per side, got {ref.shape[-2:]}; pass fewer weights")

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=(0, 1.5, 1.5), truncate=5 / 1.5, mode="reflect")

    w = np.asarray(weights, dtype=np.float64)
    terms = []
    for level in range(levels):
        ssim_map, cs_map = _ssim_maps(ref, tst, data_range, blur, 1.0)
        crop = (slice(None), slice(5, -5), slice(5, -5))
        mm = None if m is None else m[crop]
        if not (mm is None or mm.reshape(len(mm), -1).any(axis=1).all()):
            mm = None  # the mask vanished at a coarse scale: use the whole valid region there
        chosen = ssim_map if level == levels - 1 else cs_map
        terms.append(np.maximum(_reduce(chosen[crop], mm), 0.0))
        if level < levels - 1:
            h, wd = (ref.shape[1] // 2) * 2, (ref.shape[2] // 2) * 2
            ref = ref[:, :h, :wd].reshape(len(ref), h // 2, 2, wd // 2, 2).mean(axis=(2, 4))
            tst = tst[:, :h, :wd].reshape(len(tst), h // 2, 2, wd // 2, 2).mean(axis=(2, 4))
            if m is not None:
                m = m[:, :h, :wd].reshape(len(m), h // 2, 2, wd // 2, 2).any(axis=(2, 4))
    values = np.prod(np.stack(terms, axis=1) ** w[None, :], axis=1)
    return _out(values, single)


#: Metric name -> (function, higher is better).
METRICS: dict[str, tuple[Callable[..., float | np.ndarray], bool]] = {
    "psnr": (psnr, True), "ssim": (ssim, True), "ms_ssim": (ms_ssim, True),
    "mse": (mse, False), "rmse": (rmse, False), "mae": (mae, False),
}
