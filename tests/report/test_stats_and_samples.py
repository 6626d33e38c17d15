"""Streaming summary statistics and the bounded report sample."""

from __future__ import annotations

import numpy as np
import pytest

from raeflow.report.samples import SampleKeeper, gallery_rank, key_hash, worst_rank
from raeflow.report.stats import MetricStats


def test_stats_match_numpy_within_one_bin() -> None:
    rng = np.random.default_rng(0)
    psnr = rng.normal(24.0, 3.0, 5000)
    stats = MetricStats.for_metric("psnr")
    for chunk in np.array_split(psnr, 7):
        stats.add(chunk)
    summary = stats.summary()
    assert summary["count"] == 5000
    assert summary["mean"] == pytest.approx(psnr.mean(), rel=1e-12)
    assert summary["std"] == pytest.approx(psnr.std(), rel=1e-9)
    assert (summary["min"], summary["max"]) == (psnr.min(), psnr.max())
    for q in (5, 50, 95):
        assert summary[f"p{q}"] == pytest.approx(np.percentile(psnr, q), abs=0.02)  # bins are 0.01 dB


def test_stats_merge_equals_one_pass_and_ignores_nan() -> None:
    rng = np.random.default_rng(1)
    ssim = rng.uniform(0.2, 0.99, 1000)
    whole, left, right = (MetricStats.for_metric("ssim") for _ in range(3))
    whole.add(ssim)
    left.add(ssim[:300])
    right.add(np.append(ssim[300:], np.nan))
    left.merge(right)
    assert left.summary() == whole.summary()
    counts, edges = whole.coarse_histogram(40)
    assert counts.sum() == 1000 and len(edges) == len(counts) + 1 and len(counts) <= 40
    assert edges[0] <= ssim.min() and edges[-1] >= ssim.max()


def test_mse_percentiles_on_a_log_scale() -> None:
    mse = np.geomspace(1e-5, 1e-1, 999)
    stats = MetricStats.for_metric("mse")
    stats.add(mse)
    assert stats.percentile(50) == pytest.approx(np.percentile(mse, 50), rel=0.002)


def test_split_selection_equals_global_selection() -> None:
    """Actors each keep a running sample; the driver's pick over what they pass on is the global one."""
    rng = np.random.default_rng(2)
    keys = [f"shard{i // 100}/{i}" for i in range(1000)]
    psnr = dict(zip(keys, rng.normal(20, 4, len(keys)), strict=True))
    actors = [SampleKeeper(gallery_size=8, worst_k=5, map_size=50) for _ in range(3)]
    driver = SampleKeeper(gallery_size=8, worst_k=5, map_size=50)
    for n, key in enumerate(keys):
        actor = actors[int(rng.integers(0, 3))] if n % 17 else actors[0]
        if actor.gallery.offer(gallery_rank(key), key):
            driver.gallery.offer(gallery_rank(key), key)
        if actor.worst.offer(worst_rank(key, psnr[key]), key):
            driver.worst.offer(worst_rank(key, psnr[key]), key)
        if actor.map.offer(gallery_rank(key), key):
            driver.map.offer(gallery_rank(key), key)
    assert driver.gallery.rows == sorted(keys, key=lambda k: (key_hash(k), k))[:8]
    assert driver.worst.rows == sorted(keys, key=lambda k: psnr[k])[:5]
    assert driver.map.rows == sorted(keys, key=lambda k: (key_hash(k), k))[:50]


def test_key_hash_is_stable() -> None:
    # A fixed value: the sample (and the noise seed) must not change between runs or machines.
    assert key_hash("digits/0") == key_hash("digits/0") == 2348084897437250748
    assert key_hash("digits/1") != key_hash("digits/0")
