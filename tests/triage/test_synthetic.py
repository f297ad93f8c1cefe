"""Synthetic local anomalies: where they go, how large they are, and that nothing else changes."""

from __future__ import annotations

import numpy as np
import torch

from medenhance.triage.synthetic import add_anomalies, random_regions


def _bodies(n: int = 64, size: int = 96) -> torch.Tensor:
    """A bright disc ('body') on a dark background, with some texture."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    body = ((yy ** 2 + xx ** 2) < 0.6).float()
    tex = 0.1 * torch.sin(9 * xx) * torch.cos(7 * yy)
    return (body * (0.5 + tex)).expand(n, 1, size, size).clone()


def test_regions_are_soft_blobs_on_the_body() -> None:
    x = _bodies()
    mask = random_regions(x, torch.Generator().manual_seed(0))
    assert mask.shape == x.shape and mask.min() >= 0 and mask.max() <= 1
    area = (mask > 0.5).float().mean(dim=(1, 2, 3))
    assert area.min() > 0.003 and area.max() < 0.2
    # The centre is drawn on the body: most of each region lies on it.
    on_body = ((mask > 0.5) & (x > 0)).float().sum(dim=(1, 2, 3)) / (mask > 0.5).float().sum(
        dim=(1, 2, 3))
    assert on_body.median() > 0.8


def test_anomalies_change_only_their_region_and_are_reproducible() -> None:
    x = _bodies(32)
    out, mask = add_anomalies(x, torch.Generator().manual_seed(1))
    again, _ = add_anomalies(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, again)
    assert out.min() >= 0 and out.max() <= 1
    outside = mask < 1e-6
    torch.testing.assert_close(out[outside], x[outside])
    inside = (out - x).abs()[mask > 0.5]
    assert inside.mean() > 0.02
    changed = ((out - x).abs() * (mask > 0.5)).flatten(1).amax(1)
    assert np.mean(changed.numpy() > 0.01) > 0.9  # nearly every image visibly altered
