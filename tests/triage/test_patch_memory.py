"""The patch memory behind the one-class ``patch-nn`` score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medenhance.models.classifier import SmallResNet
from medenhance.triage.patch_memory import MAX_CANDIDATES, candidate_patches, greedy_coreset


def test_greedy_coreset_covers_rare_clusters() -> None:
    """Three points from three clusters of 1000, 10 and 1 points: one from each, where a random
    pick would almost always take three from the large one."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([centres[c] + 0.1 * torch.randn(n, 2, generator=gen)
                        for c, n in ((0, 1000), (1, 10), (2, 1))])
    kept = greedy_coreset(points, 3, seed=1)
    assert len(set(kept.tolist())) == 3
    cluster = torch.cdist(points[kept], centres).argmin(1)
    assert sorted(cluster.tolist()) == [0, 1, 2]
    # Every point lies within the clusters' spread of a kept one (k-centre's covering radius).
    assert torch.cdist(points, points[kept]).amin(1).max() < 1.0
    np.testing.assert_array_equal(greedy_coreset(points, 5000, seed=1), torch.arange(1011))
    # Only two distinct features: the coreset stops at two instead of repeating them.
    assert len(greedy_coreset(torch.tensor([[0.0], [1.0], [0.0], [1.0]]), 3, seed=0)) == 2


def test_patch_distance_is_the_least_familiar_patch() -> None:
    torch.manual_seed(0)
    net = SmallResNet(widths=(8, 16, 16, 32), num_outputs=8, memory_size=1).eval()
    gen = torch.Generator().manual_seed(0)
    normal = 0.4 + 0.05 * torch.rand(3, 1, 32, 32, generator=gen)
    with torch.no_grad():
        features = net.patch_features(normal)                  # (3, 8*8, 16+16+32)
        assert features.shape == (3, 64, 64)
        net.patch_memory = features.reshape(-1, 64)
        # Every patch of a training image is in the memory: distance 0 (to cdist's precision).
        assert net.patch_distance(normal).abs().max() < 1e-3
        odd = normal[:1].clone()
        odd[..., 10:18, 10:18] = 1.0                           # a bright spot
        assert net.patch_distance(odd)[0] > 0.1
        # The least familiar patch is at the spot (8x8 patch grid: pixels 10-17 are cells 2-4).
        nearest = torch.cdist(net.patch_features(odd)[0], net.patch_memory).amin(1)
        row, col = divmod(int(nearest.argmax()), 8)
        assert 1 <= row <= 5 and 1 <= col <= 5
        assert net.patch_distance(odd)[0] == pytest.approx(float(nearest.max()), rel=1e-5)
    with pytest.raises(RuntimeError, match="no patch memory"):
        SmallResNet(widths=(8, 16)).patch_distance(normal)


def test_candidate_patches_stop_at_the_limit() -> None:
    net = SmallResNet(widths=(8, 16, 16, 32)).eval()
    images = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    assert candidate_patches(net.patch_features, images, seed=0).shape == (3 * 64, 64)
    many = np.zeros((MAX_CANDIDATES // 32 + 1, 32, 32), np.float32)  # 64 patches each
    assert len(candidate_patches(net.patch_features, many, seed=0, batch=512)) <= MAX_CANDIDATES


def test_bundled_precision_halves_the_patch_memory_only(tmp_path) -> None:
    """float16 checkpoints store parameters and the bulky patch memory in half precision; the
    Gaussian and batch-norm statistics stay float32. Loading gives float32 back."""
    from safetensors.torch import load_file

    from medenhance.models.card import ModelCard, load_model, save_checkpoint

    net = SmallResNet(widths=(8, 16), num_outputs=8, memory_size=5)
    net.patch_memory = torch.randn(5, 16)
    card = ModelCard(name="p", architecture="small_resnet",
                     arguments={"widths": [8, 16], "num_outputs": 8, "memory_size": 5},
                     task="triage")
    path = save_checkpoint(net, card, tmp_path / "p.safetensors", dtype=torch.float16)
    stored = load_file(str(path))
    assert stored["patch_memory"].dtype == torch.float16
    assert stored["stem.0.weight"].dtype == torch.float16
    assert stored["feature_mean"].dtype == torch.float32
    assert stored["stem.1.running_var"].dtype == torch.float32
    loaded = load_model(path).network
    assert loaded.patch_memory.dtype == torch.float32
    torch.testing.assert_close(loaded.patch_memory, net.patch_memory, atol=2e-3, rtol=1e-3)


def test_heatmap_overlay_colours_only_where_the_evidence_is_high() -> None:
    from medenhance.triage.heatmap import overlay

    frame = np.full((16, 16), 0.5, np.float32)
    evidence = np.zeros((16, 16), np.float32)
    evidence[4:6, 10:12] = 3.0
    picture = overlay(frame, evidence)
    assert picture.shape == (16, 32, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[:, :16], 128)                  # the frame, grey
    np.testing.assert_array_equal(picture[:, 16:][evidence == 0], 128)   # untouched elsewhere
    hot = picture[4, 26].astype(int)
    assert hot.max() - hot.min() > 40                                     # coloured at the peak
    np.testing.assert_array_equal(overlay(frame, np.ones_like(frame))[:, 16:], 128)  # flat map


def test_population_shift_needs_half_a_batch_beyond_the_90th_percentile() -> None:
    from medenhance.triage.score import SHIFT_MIN_STUDIES, TriageResult, population_shift

    def batch(far: int, n: int = SHIFT_MIN_STUDIES) -> list[TriageResult]:
        return [TriageResult(f"s{i}", 0.5, 0, 0, 5.0 if i < far else 1.0) for i in range(n)]

    info = {"distance_p90": 3.0}
    assert population_shift(batch(11), info) == pytest.approx(11 / 20)
    assert population_shift(batch(10), info) is None            # half is not more than half
    assert population_shift(batch(19, n=19), info) is None      # too few studies to judge
    assert population_shift(batch(20), {}) is None              # card without the percentile
