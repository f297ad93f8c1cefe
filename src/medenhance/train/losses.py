"""Training losses on ``(N, 1, H, W)`` tensors in [0, 1]: MSE, L1, 1 - SSIM, PSNR and weighted
sums."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from ..errors import ConfigError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 7
         ) -> torch.Tensor:
    """Mean SSIM over the valid region, differentiable; the definition of
    :func:`medenhance.metrics.ssim` and ``skimage.metrics.structural_similarity`` (uniform
    ``win_size`` window, sample covariance, Wang et al. 2004 constants)."""
    npix = win_size**2
    window = torch.full((1, 1, win_size, win_size), 1.0 / npix, dtype=x.dtype, device=x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cov = npix / (npix - 1)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    sxx = cov * (F.conv2d(x * x, window) - mu_x**2)
    syy = cov * (F.conv2d(y * y, window) - mu_y**2)
    sxy = cov * (F.conv2d(x * y, window) - mu_x * mu_y)
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def neg_psnr(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Minus the mean per-sample PSNR (dB, data range 1).

    MSE averaged over a batch is dominated by its noisiest samples; the mean of per-sample log
    errors weighs a patch at sigma 10 as much as one at sigma 50, which is what a benchmark
    averaging PSNR over images rewards.
    """
    mse = (out - target).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(mse + 1e-10).mean()


LOSSES: dict[str, Loss] = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "ssim": lambda out, target: 1.0 - ssim(out, target),
    "psnr": neg_psnr,
}


def build_loss(weights: Mapping[str, float]) -> Loss:
    """``sum(w * LOSSES[name](out, target))`` over the non-zero weights."""
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown:
        raise ConfigError(f"loss: unknown term(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(LOSSES)}")
    terms = [(LOSSES[name], float(w)) for name, w in weights.items() if float(w) != 0.0]
    if not terms:
        raise ConfigError("loss: all weights are zero")

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * fn(out, target) for fn, w in terms)  # type: ignore[return-value]

    return loss
