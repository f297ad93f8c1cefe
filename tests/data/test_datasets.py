"""Training patches: reproducible per (seed, epoch, index), and mixed from extra image sets."""

from __future__ import annotations

import numpy as np
import pytest

from medenhance.data.datasets import DegradationMixture, PatchDataset
from medenhance.errors import DatasetError


def _dataset(**kwargs: object) -> PatchDataset:
    main = [np.full((40, 40), 0.2, np.float32), np.full((64, 48), 0.25, np.float32)]
    return PatchDataset(main, DegradationMixture([{"preset": "gaussian-15"}]), patch_size=32,
                        patches_per_epoch=2000, seed=3, **kwargs)


def test_patches_are_a_function_of_seed_epoch_and_index() -> None:
    a, b = _dataset(), _dataset()
    b.set_epoch(0)
    for i in (0, 7, 1999):
        assert all(np.array_equal(x, y) for x, y in zip(a[i], b[i]))
    b.set_epoch(1)
    assert not np.array_equal(a[7][0], b[7][0])


def test_extra_sets_supply_their_share_of_patches() -> None:
    extra = [np.full((128, 128), 0.8, np.float32)]
    data = _dataset(extra=[(extra, 0.3)])
    # Clean patches tell the sources apart: 0.2/0.25 from the main set, 0.8 from the extra one.
    from_extra = np.mean([float(data[i][1].mean()) > 0.5 for i in range(len(data))])
    # 2000 draws: binomial standard error 0.01.
    assert from_extra == pytest.approx(0.3, abs=0.04)
    # Noise is applied to extra patches as to the others.
    noisy, clean = data[int(np.argmax([float(data[i][1].mean()) for i in range(50)]))]
    assert float((noisy - clean).std()) == pytest.approx(15 / 255, rel=0.15)


def test_an_extra_set_without_usable_images_is_an_error() -> None:
    with pytest.raises(DatasetError, match="extra_train"):
        _dataset(extra=[([np.zeros((16, 16), np.float32)], 0.5)])
