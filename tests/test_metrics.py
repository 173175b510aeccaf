"""Metrics against the reference implementations they claim to match (clean-fid 0.1.35, torch-fidelity 0.4.0)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; belt and braces

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid_fid
from torch_fidelity import metric_fid, metric_kid, metric_prc

from bench.metrics import clipscore, fid, kid, prdc

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_threaded")


def gaussian_features(rng, n, d, shift=0.0, scale=1.0):
    """Correlated (non-identity covariance) Gaussian features."""
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return (rng.normal(size=(n, d)) @ mixing * scale + shift).astype(np.float32)


def stats(features):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fid.SmallSampleWarning)
        return fid.feature_statistics(features)


# ------------------------------------------------------------------------------------------------------------- FID


@pytest.mark.parametrize("n, d", [(300, 8), (500, 32), (200, 16), (1000, 64), (400, 48), (150, 5)])
def test_frechet_distance_matches_cleanfid_and_torch_fidelity(n, d):
    rng = np.random.default_rng(n * 1000 + d)
    a = gaussian_features(rng, n, d)
    b = gaussian_features(rng, n + 37, d, shift=0.3, scale=1.5)
    (mu1, sigma1), (mu2, sigma2) = stats(a), stats(b)

    ours = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    theirs_fidelity = metric_fid.fid_statistics_to_metric(
        {"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False
    )[metric_fid.KEY_METRIC_FID]
    assert isinstance(ours, float) and ours > 1.0
    assert ours == pytest.approx(theirs_fidelity, rel=1e-6)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes sqrtm(disp=False)
            theirs_cleanfid = cleanfid_fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    except TypeError as error:  # SciPy >= 1.18 removed `disp`; pyproject pins scipy<1.18 for this comparison
        pytest.skip(f"clean-fid 0.1.35 cannot run on this SciPy: {error}")
    assert ours == pytest.approx(theirs_cleanfid, rel=1e-6)


def test_fid_from_features_uses_float64_statistics():
    rng = np.random.default_rng(1)
    a, b = gaussian_features(rng, 400, 16), gaussian_features(rng, 300, 16, shift=0.2)
    ours = fid.fid_from_features(a, b)
    stat_a = metric_fid.fid_features_to_statistics(torch.from_numpy(a.astype(np.float64)))
    stat_b = metric_fid.fid_features_to_statistics(torch.from_numpy(b.astype(np.float64)))
    theirs = metric_fid.fid_statistics_to_metric(stat_a, stat_b, verbose=False)[metric_fid.KEY_METRIC_FID]
    assert ours == pytest.approx(theirs)
    mu, sigma = stats(a)
    assert mu.dtype == sigma.dtype == np.float64


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(2)
    mu, sigma = stats(gaussian_features(rng, 500, 32))
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_rank_deficient_covariance_warns_and_still_returns_the_eigenvalue_trace():
    # N <= dim: rank(sigma) <= N - 1, so sigma1 @ sigma2 has zero eigenvalues that rounding makes slightly
    # negative or complex. Documented: a warning, then a number, because that imaginary mass is negligible.
    rng = np.random.default_rng(3)
    a, b = gaussian_features(rng, 40, 64), gaussian_features(rng, 50, 64, shift=0.5)
    with pytest.warns(fid.SmallSampleWarning, match="rank deficient"):
        value = fid.fid_from_features(a, b)
    mu1, sigma1 = a.astype(np.float64).mean(0), np.cov(a.astype(np.float64), rowvar=False)
    mu2, sigma2 = b.astype(np.float64).mean(0), np.cov(b.astype(np.float64), rowvar=False)
    reference = metric_fid.fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, False)
    assert np.isfinite(value)
    assert value == pytest.approx(reference["frechet_inception_distance"], rel=1e-6)


def test_the_small_sample_warning_fires_only_when_samples_do_not_exceed_dimensions():
    rng = np.random.default_rng(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full rank: compare-at-equal-N is documented, not warned per call
        fid.feature_statistics(gaussian_features(rng, 100, 8))
        fid.feature_statistics(gaussian_features(rng, 1800, 128))  # the demo's size
    with pytest.warns(fid.SmallSampleWarning, match="100 samples of dimension 128"):
        fid.feature_statistics(gaussian_features(rng, 100, 128))


def test_non_negligible_imaginary_component_raises():
    rng = np.random.default_rng(5)
    mu, sigma = stats(gaussian_features(rng, 300, 8))
    not_a_covariance = -np.eye(8)  # sigma1 @ sigma2 has negative eigenvalues: sqrt is genuinely imaginary
    with pytest.raises(ValueError, match="Imaginary component"):
        fid.frechet_distance(mu, sigma, mu, not_a_covariance)


def test_sqrtm_cross_check_failure_raises(monkeypatch):
    rng = np.random.default_rng(6)
    mu, sigma = stats(gaussian_features(rng, 300, 8))
    monkeypatch.setattr(fid.scipy.linalg, "sqrtm", lambda m: 2.0 * np.eye(len(m)))
    with pytest.raises(ValueError, match="disagrees"):
        fid.frechet_distance(mu, sigma, mu, sigma)
    assert fid.frechet_distance(mu, sigma, mu, sigma, check_sqrtm=False) == pytest.approx(0.0, abs=1e-9)


def test_fid_rejects_bad_shapes():
    with pytest.raises(ValueError):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        fid.fid_from_features(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        fid.feature_statistics(np.zeros((1, 3)))


# -------------------------------------------------------------------------------------------- precision / recall


def torch_fidelity_prc(real, fake, k):
    out = metric_prc.prc_features_to_metric(  # input1 = generated, input2 = real (0.4.0, after fix #70)
        torch.from_numpy(fake),
        torch.from_numpy(real),
        prc_neighborhood=k,
        prc_batch_size=64,
        save_cpu_ram=False,
        verbose=False,
    )
    return out[metric_prc.KEY_METRIC_PRECISION], out[metric_prc.KEY_METRIC_RECALL]


@pytest.mark.parametrize("seed", range(3))
def test_precision_recall_matches_torch_fidelity_on_random_features(seed):
    rng = np.random.default_rng(seed)
    real = gaussian_features(rng, 300, 16)
    fake = gaussian_features(rng, 250, 16, shift=0.4, scale=0.8)
    ours = prdc.precision_recall(real, fake, k=3, row_block=50)
    theirs = torch_fidelity_prc(real, fake, 3)
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert 0.0 < ours[0] < 1.0 and 0.0 < ours[1] < 1.0


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_torch_fidelity_with_ties_and_duplicates(k):
    # Small integer coordinates: many exact duplicates (inside and across sets) and tied distances, all computed
    # exactly in float32, so "<=" on a tie is decided identically by both implementations.
    rng = np.random.default_rng(10 + k)
    real = rng.integers(0, 4, size=(200, 3)).astype(np.float32)
    fake = np.concatenate([rng.integers(1, 6, size=(150, 3)), real[:30]]).astype(np.float32)
    ours = prdc.precision_recall(real, fake, k=k, row_block=17)
    assert ours == pytest.approx(torch_fidelity_prc(real, fake, k), abs=1e-6)


def test_precision_recall_does_not_depend_on_the_block_size():
    rng = np.random.default_rng(20)
    real, fake = gaussian_features(rng, 210, 8), gaussian_features(rng, 190, 8, shift=0.3)
    unblocked = prdc.precision_recall(real, fake, row_block=10**6)
    for row_block in (1, 7, 64, 209):
        assert prdc.precision_recall(real, fake, row_block=row_block) == unblocked


def test_tight_fake_cluster_in_a_wide_real_cloud_has_high_precision_low_recall():
    # Would fail with precision and recall swapped (torch-fidelity's pre-0.4 bug #58).
    rng = np.random.default_rng(21)
    real = rng.normal(size=(500, 8)).astype(np.float32)
    fake = (0.05 * rng.normal(size=(300, 8))).astype(np.float32)
    precision, recall = prdc.precision_recall(real, fake)
    assert precision > 0.95
    assert recall < 0.2


def test_precision_recall_accepts_tensors_and_float64():
    rng = np.random.default_rng(22)
    real, fake = gaussian_features(rng, 60, 4), gaussian_features(rng, 50, 4)
    expected = prdc.precision_recall(real, fake)
    assert prdc.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), device="cpu") == expected
    assert prdc.precision_recall(real.astype(np.float64), fake.astype(np.float64)) == expected


def test_precision_recall_never_builds_a_full_distance_matrix(monkeypatch):
    rng = np.random.default_rng(23)
    real, fake = gaussian_features(rng, 300, 4), gaussian_features(rng, 200, 4)
    sizes = []
    cdist = torch.cdist

    def recording_cdist(x1, x2, *args, **kwargs):
        sizes.append(x1.shape[0] * x2.shape[0])
        return cdist(x1, x2, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", recording_cdist)
    prdc.precision_recall(real, fake, row_block=32)
    assert max(sizes) <= 32 * 300


def test_precision_recall_peak_memory_is_bounded_by_the_block():
    # A fresh process, with glibc returning big blocks to the OS on free, so that the peak RSS growth measures
    # the largest live allocation. A full 4000 x 4000 float32 matrix would be 64 MB; a 400-row block is 6.4 MB.
    script = textwrap.dedent(
        """
        import resource, numpy as np
        from bench.metrics.prdc import precision_recall
        rng = np.random.default_rng(0)
        real, fake = rng.normal(size=(4000, 8)).astype(np.float32), rng.normal(size=(4000, 8)).astype(np.float32)
        precision_recall(real[:64], fake[:64], row_block=16)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        precision_recall(real, fake, row_block=400)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
        """
    )
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    growth = int(out.stdout.split()[-1])
    block_bytes = 400 * 4000 * 4
    assert growth < 3 * block_bytes + (4 << 20), f"peak RSS grew by {growth / 2**20:.1f} MB"


def test_precision_recall_rejects_bad_input():
    with pytest.raises(ValueError):
        prdc.precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        prdc.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# ------------------------------------------------------------------------------------------------------- CLIP score


def test_clip_scores_are_raw_cosines_without_clamp():
    rng = np.random.default_rng(30)
    image, text = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
    text[0] = -3.0 * image[0]  # cosine -1: must not be clamped
    expected = [u @ v / np.linalg.norm(u) / np.linalg.norm(v) for u, v in zip(image, text, strict=True)]
    scores = clipscore.clip_scores(image, text)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    np.testing.assert_allclose(
        clipscore.clip_scores(image.astype(np.float32), text.astype(np.float32)), expected, atol=1e-6
    )
    assert scores[0] == pytest.approx(-1.0)
    assert clipscore.clip_score(image, text) == pytest.approx(np.mean(expected))
    assert clipscore.clip_score(image, 2.0 * image) == pytest.approx(1.0)  # a cosine, not x100


def test_clip_scores_reject_mismatch_and_zero_vectors():
    with pytest.raises(ValueError):
        clipscore.clip_scores(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError):
        clipscore.clip_scores(np.zeros((1, 4)), np.ones((1, 4)))


# -------------------------------------------------------------------------------------------------------------- KID


def test_kid_is_deterministic_for_a_seed():
    rng = np.random.default_rng(40)
    a, b = gaussian_features(rng, 300, 16), gaussian_features(rng, 300, 16, shift=0.2)
    first = kid.kid_from_features(a, b, num_subsets=10, subset_size=100, seed=7)
    assert kid.kid_from_features(a, b, num_subsets=10, subset_size=100, seed=7) == first
    assert kid.kid_from_features(a, b, num_subsets=10, subset_size=100, seed=8) != first


def test_kid_from_whole_set_kernels_equals_kernels_per_subset(monkeypatch):
    """The small-set path (three whole-set kernels, subsets summed from them) against the per-subset path."""
    rng = np.random.default_rng(43)
    a, b = gaussian_features(rng, 300, 16), gaussian_features(rng, 250, 16, shift=0.2)
    whole = kid.kid_from_features(a, b, num_subsets=50, subset_size=100, seed=3)
    monkeypatch.setattr(kid, "WHOLE_KERNEL_ENTRIES", 0)
    per_subset = kid.kid_from_features(a, b, num_subsets=50, subset_size=100, seed=3)
    assert whole == pytest.approx(per_subset, rel=1e-9)
    assert whole[1] > 0


def test_kid_with_one_full_subset_equals_torch_fidelity_and_cleanfid_exactly():
    # One subset of all samples is a permutation, and the unbiased MMD^2 does not depend on order.
    rng = np.random.default_rng(41)
    a, b = gaussian_features(rng, 120, 16).astype(np.float64), gaussian_features(rng, 120, 16, shift=0.3)
    b = b.astype(np.float64)
    mean, std = kid.kid_from_features(a, b, num_subsets=1, subset_size=120)
    fidelity = metric_kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=1, kid_subset_size=120, verbose=False
    )
    assert mean == pytest.approx(fidelity[metric_kid.KEY_METRIC_KID_MEAN], rel=1e-10)
    assert mean == pytest.approx(cleanfid_fid.kernel_distance(a, b, num_subsets=1, max_subset_size=120), rel=1e-10)
    assert std == 0.0


def test_kid_is_close_to_torch_fidelity_with_different_subsets():
    rng = np.random.default_rng(42)
    a, b = gaussian_features(rng, 600, 16), gaussian_features(rng, 600, 16, shift=0.3)
    mean, std = kid.kid_from_features(a, b, num_subsets=50, subset_size=200)
    fidelity = metric_kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=50, kid_subset_size=200, verbose=False
    )
    assert mean > 0
    assert mean == pytest.approx(fidelity[metric_kid.KEY_METRIC_KID_MEAN], rel=0.05)
    assert std == pytest.approx(fidelity[metric_kid.KEY_METRIC_KID_STD], rel=0.5)


def test_kid_lowers_subset_size_with_a_warning():
    rng = np.random.default_rng(43)
    a, b = gaussian_features(rng, 50, 4), gaussian_features(rng, 80, 4)
    with pytest.warns(UserWarning, match="lowered from 1000 to 50"):
        kid.kid_from_features(a, b, num_subsets=2)
