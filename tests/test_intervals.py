"""Intervals and FID∞ (bench.metrics.intervals) on synthetic Gaussian features, against independent computations."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
from threadpoolctl import threadpool_limits

from bench import scores
from bench.metrics import fid, fid_uncertainty, intervals, prdc, prdc_uncertainty

D, N, N_REF = 32, 2000, 3000
TRIALS, MONTE_CARLO = 100, 1000
# generator = (reference law) * scale + shift: well above FID's floor, a little above it, and on it
REGIMES = {"above_floor": (0.3, 1.3), "near_floor": (0.05, 1.0), "at_floor": (0.0, 1.0)}


pytestmark = pytest.mark.usefixtures("single_threaded")


def mixing_matrix(rng, d):
    return rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)


def batch_fids(mu_ref, sigma_ref, x):
    """FIDs of a (M, n, D) batch of sample sets, via scipy's sqrtm of sigma_ref (not the code under test)."""
    root = scipy.linalg.sqrtm(sigma_ref).real
    mu = x.mean(axis=1)
    centred = x - mu[:, None]
    sigma = np.swapaxes(centred, 1, 2) @ centred / (x.shape[1] - 1)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma @ root), 0.0, None)).sum(axis=1)
    return ((mu - mu_ref) ** 2).sum(axis=1) + np.trace(sigma_ref) + np.trace(sigma, axis1=1, axis2=2) - 2 * tr_sqrt


def run_trials(regime, d=D, n=N, n_ref=N_REF):
    """TRIALS independent n-sample generated sets, their intervals, E[FID_n] and the closed-form FID∞."""
    shift, scale = REGIMES[regime]
    rng = np.random.default_rng(2020)
    mixing = mixing_matrix(rng, d)
    reference = rng.normal(size=(n_ref, d)) @ mixing
    mu_ref, sigma_ref = reference.mean(axis=0), np.cov(reference, rowvar=False)

    def draw(m):
        return (rng.normal(size=(m, n, d)) @ mixing) * scale + shift

    fids = np.concatenate([batch_fids(mu_ref, sigma_ref, draw(50)) for _ in range(MONTE_CARLO // 50)])
    sigma_gen = scale**2 * mixing.T @ mixing
    closed_form = (
        np.sum((shift - mu_ref) ** 2)
        + np.trace(sigma_ref)
        + np.trace(sigma_gen)
        - 2 * np.trace(scipy.linalg.sqrtm(sigma_ref @ sigma_gen)).real
    )
    results = [
        fid_uncertainty.fid_intervals(mu_ref, sigma_ref, x, min_size=n // 5, seed=t)
        for t, x in enumerate(draw(TRIALS))
    ]
    return {"regime": regime, "fids": fids, "closed_form": closed_form, "results": results}


@pytest.fixture(scope="module", params=list(REGIMES))
def trials(request):
    with threadpool_limits(limits=1):
        return run_trials(request.param)


def check_fid_coverage(trials):
    expected = trials["fids"].mean()  # E[FID_N], to within sd / 30
    covered = sum(r["fid_lo"] <= expected <= r["fid_hi"] for r in trials["results"])
    assert covered >= 85, f"{trials['regime']}: {covered} of {TRIALS}"
    # Calibrated, not just wide: the delta-method standard error matches the spread of independent FIDs,
    # conservatively near the floor where the linear term vanishes.
    ratio = np.median([r["fid_se"] for r in trials["results"]]) / trials["fids"].std(ddof=1)
    assert 0.8 < ratio < (1.25 if trials["regime"] == "above_floor" else 1.6), ratio


def check_fid_infinity(trials):
    closed_form = trials["closed_form"]
    covered = sum(r["fid_inf_lo"] <= closed_form <= r["fid_inf_hi"] for r in trials["results"])
    assert covered >= 85, f"{trials['regime']}: {covered} of {TRIALS}"
    # The extrapolation removes the small-sample bias that FID_N carries.
    bias_n = trials["fids"].mean() - closed_form
    bias_inf = np.mean([r["fid_inf"] for r in trials["results"]]) - closed_form
    assert bias_n > 0 and abs(bias_inf) < 0.2 * bias_n, (bias_n, bias_inf)


# ------------------------------------------------------------------------------------------------ FID and FID∞


def test_fid_interval_covers_the_mean_of_independent_fids(trials):
    check_fid_coverage(trials)


def test_fid_infinity_matches_the_closed_form_within_its_interval(trials):
    check_fid_infinity(trials)


# CI runs the regime where the delta method is tightest; the two near FID's floor are in the soak run.
@pytest.mark.slow
@pytest.mark.parametrize("regime", [pytest.param(r, marks=() if r == "above_floor" else pytest.mark.soak)
                                    for r in REGIMES])
def test_fid_intervals_calibrated_at_higher_dimension(regime):
    with threadpool_limits(limits=1):
        trials = run_trials(regime, d=96, n=5000, n_ref=8000)
    check_fid_coverage(trials)
    check_fid_infinity(trials)


def test_fid_equals_fid_from_features_and_the_curve_ends_at_n():
    rng = np.random.default_rng(1)
    mixing = mixing_matrix(rng, 16)
    reference = (rng.normal(size=(900, 16)) @ mixing).astype(np.float32)
    fake = (rng.normal(size=(700, 16)) @ mixing * 1.2 + 0.3).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fid.SmallSampleWarning)
        expected = fid.fid_from_features(reference, fake)
        mu_ref, sigma_ref = fid.feature_statistics(reference)
        prefix = fid.fid_from_features(reference, fake[np.random.default_rng(5).permutation(700)[:350]])
    result = fid_uncertainty.fid_intervals(mu_ref, sigma_ref, fake, min_size=350, num_points=4, seed=5)
    assert result["fid"] == pytest.approx(expected, rel=1e-9)
    assert result["fid_inf_sizes"] == [350, 466, 583, 700]
    assert result["fid_inf_curve"][-1] == result["fid"]
    assert result["fid_inf_curve"][0] == pytest.approx(prefix, rel=1e-9)  # first prefix of the seeded permutation
    assert result["fid_lo"] < result["fid"] < result["fid_hi"]
    assert result["fid_inf_lo"] < result["fid_inf"] < result["fid_inf_hi"]
    sizes = np.array(result["fid_inf_sizes"])
    fit = np.polyfit(1.0 / sizes, result["fid_inf_curve"], 1)
    assert result["fid_inf"] == pytest.approx(fit[1], rel=1e-9)
    assert result["fid_inf_slope"] == pytest.approx(fit[0], rel=1e-9)


def test_singular_reference_covariance_falls_back_to_eigh():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(500, 8))
    reference[:, 3] = reference[:, 0]  # rank 7: Cholesky fails
    fake = rng.normal(size=(400, 8)) + 0.2
    mu_ref, sigma_ref = reference.mean(axis=0), np.cov(reference, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fid.SmallSampleWarning)
        mu, sigma = fid.feature_statistics(fake)
    result = fid_uncertainty.fid_intervals(mu_ref, sigma_ref, fake, min_size=200)
    assert result["fid"] == pytest.approx(fid.frechet_distance(mu_ref, sigma_ref, mu, sigma), rel=1e-9)
    assert np.isfinite(result["fid_se"]) and result["fid_se"] > 0


def test_fid_interval_narrows_with_n():
    rng = np.random.default_rng(3)
    mixing = mixing_matrix(rng, 16)
    reference = rng.normal(size=(4000, 16)) @ mixing
    mu_ref, sigma_ref = reference.mean(axis=0), np.cov(reference, rowvar=False)
    se = {}
    for n in (1000, 8000):
        fake = rng.normal(size=(n, 16)) @ mixing * 1.3 + 0.3
        se[n] = fid_uncertainty.fid_intervals(mu_ref, sigma_ref, fake, min_size=n // 5)["fid_se"]
    assert 2.2 < se[1000] / se[8000] < 3.6  # 1 / sqrt(N): sqrt(8) = 2.83


def test_fid_intervals_are_reproducible_for_a_seed():
    rng = np.random.default_rng(4)
    mu_ref, sigma_ref = np.zeros(8), np.eye(8)
    fake = rng.normal(size=(600, 8)) * 1.1
    first = fid_uncertainty.fid_intervals(mu_ref, sigma_ref, fake, min_size=100, seed=1)
    assert fid_uncertainty.fid_intervals(mu_ref, sigma_ref, fake, min_size=100, seed=1) == first
    other = fid_uncertainty.fid_intervals(mu_ref, sigma_ref, fake, min_size=100, seed=2)
    assert other["fid_inf"] != first["fid_inf"]  # another permutation, other prefixes
    assert other["fid"] == pytest.approx(first["fid"], rel=1e-12)
    assert other["fid_se"] == pytest.approx(first["fid_se"], rel=1e-9)


def test_fid_infinity_sizes_follow_chong_and_forsyth():
    sizes = fid_uncertainty.fid_infinity_sizes(30000)
    assert len(sizes) == 15 and sizes[0] == 5000 and sizes[-1] == 30000
    assert list(fid_uncertainty.fid_infinity_sizes(1800, num_points=4)) == [900, 1200, 1500, 1800]
    with pytest.raises(ValueError):
        fid_uncertainty.fid_infinity_sizes(3)
    with pytest.raises(ValueError):
        fid_uncertainty.fid_infinity_sizes(1000, num_points=1)


def test_fid_intervals_reject_bad_input():
    with pytest.raises(ValueError):
        fid_uncertainty.fid_intervals(np.zeros(3), np.eye(3), np.zeros((100, 4)))
    with pytest.raises(ValueError):
        fid_uncertainty.fid_intervals(np.zeros(3), np.eye(3), np.zeros(100))
    with pytest.raises(ValueError):
        fid_uncertainty.fid_intervals(np.zeros(3), np.eye(3), np.ones((100, 3)), confidence=1.0)


# ---------------------------------------------------------------------------------------- precision and recall


def gaussian(rng, n, d, shift=0.0, scale=1.0, mixing=None):
    mixing = np.eye(d) if mixing is None else mixing
    return (rng.normal(size=(n, d)) @ mixing * scale + shift).astype(np.float32)


@pytest.mark.parametrize("k, row_block", [(3, 64), (1, 1000), (5, 17)])
def test_precision_recall_samples_equal_precision_recall(k, row_block):
    rng = np.random.default_rng(10 + k)
    real, fake = gaussian(rng, 300, 8), gaussian(rng, 250, 8, shift=0.4, scale=0.9)
    samples = prdc_uncertainty.precision_recall_samples(real, fake, k=k, row_block=row_block)
    assert (samples.precision, samples.recall) == prdc.precision_recall(real, fake, k=k, row_block=row_block)
    assert samples.inside.shape == (250,) and samples.inside.mean() == samples.precision
    assert samples.neighbour_index.shape == (250, 8 * k + 1)
    assert np.all(np.diff(samples.neighbour_dist, axis=1) >= 0)


def test_precision_recall_samples_with_duplicates_and_ties():
    rng = np.random.default_rng(20)
    real = rng.integers(0, 4, size=(200, 3)).astype(np.float32)
    fake = np.concatenate([rng.integers(1, 6, size=(150, 3)), real[:30]]).astype(np.float32)
    samples = prdc_uncertainty.precision_recall_samples(real, fake, row_block=17)
    assert (samples.precision, samples.recall) == prdc.precision_recall(real, fake, row_block=17)


def test_subset_recall_equals_precision_recall_on_the_subset():
    # Integer coordinates: every distance is exact in float32, so both sides decide "<=" identically.
    rng = np.random.default_rng(21)
    real = rng.integers(0, 1000, size=(400, 4)).astype(np.float32)
    fake = (rng.integers(0, 800, size=(300, 4)) + 100).astype(np.float32)
    samples = prdc_uncertainty.precision_recall_samples(real, fake)
    for trial in range(20):
        member = np.zeros(300, dtype=bool)
        member[rng.choice(300, 150, replace=False)] = True
        expected = prdc.precision_recall(real, fake[member])[1]
        assert prdc_uncertainty.subset_recall(samples, member) == pytest.approx(expected, abs=1e-12), trial
    everyone = np.ones(300, dtype=bool)
    assert prdc_uncertainty.subset_recall(samples, everyone) == pytest.approx(samples.recall, abs=1e-12)


def test_recall_interval_covers_the_mean_of_independent_recalls():
    rng = np.random.default_rng(22)
    d, n, n_real = 16, 1000, 1500
    mixing = mixing_matrix(rng, d)
    real = gaussian(rng, n_real, d, mixing=mixing)

    def draw():
        return gaussian(rng, n, d, shift=0.3, scale=0.8, mixing=mixing)

    recalls = np.array([prdc.precision_recall(real, draw(), row_block=500)[1] for _ in range(100)])
    expected = recalls.mean()
    results = [
        prdc_uncertainty.precision_recall_intervals(
            prdc_uncertainty.precision_recall_samples(real, draw(), row_block=500), n_resamples=100, seed=t
        )
        for t in range(60)
    ]
    covered = sum(r["recall_lo"] <= expected <= r["recall_hi"] for r in results)
    assert covered >= 51, f"{covered} of 60"
    ratio = np.median([r["recall_se"] for r in results]) / recalls.std(ddof=1)
    assert 0.75 < ratio < 1.35, ratio


def test_wilson_interval_covers_a_known_proportion():
    rng = np.random.default_rng(23)
    for p, n in ((0.6, 2000), (0.02, 500)):
        counts = rng.binomial(n, p, size=400)
        covered = sum(lo <= p <= hi for lo, hi in (intervals.wilson_interval(int(c), n) for c in counts))
        assert covered >= 0.92 * 400, (p, n, covered)
    assert intervals.wilson_interval(0, 100)[0] == 0.0 and intervals.wilson_interval(100, 100)[1] == 1.0


def test_precision_and_recall_intervals_narrow_with_n_and_are_seeded():
    rng = np.random.default_rng(24)
    real = gaussian(rng, 3000, 8)
    widths = {}
    for n in (500, 3000):
        samples = prdc_uncertainty.precision_recall_samples(real, gaussian(rng, n, 8, shift=0.3), row_block=1000)
        out = prdc_uncertainty.precision_recall_intervals(samples, n_resamples=100, seed=0)
        assert out["precision_lo"] <= out["precision"] <= out["precision_hi"]
        assert out["recall_lo"] <= out["recall"] <= out["recall_hi"]
        assert prdc_uncertainty.precision_recall_intervals(samples, n_resamples=100, seed=0) == out
        other_seed = prdc_uncertainty.precision_recall_intervals(samples, n_resamples=100, seed=1)
        assert other_seed["recall_se"] != out["recall_se"]
        widths[n] = (out["precision_hi"] - out["precision_lo"], out["recall_hi"] - out["recall_lo"])
    assert widths[3000][0] < widths[500][0] / 1.8 and widths[3000][1] < widths[500][1]


# ------------------------------------------------------------------------------------------------------- CLIP score


def test_clip_interval_covers_a_known_mean_and_narrows():
    rng = np.random.default_rng(30)
    covered = 0
    for _ in range(200):
        scores = rng.beta(8, 16, size=1000) - 0.1  # mean 8 / 24 - 0.1
        out = intervals.clip_score_interval(scores)
        covered += out["clip_score_lo"] <= 8 / 24 - 0.1 <= out["clip_score_hi"]
    assert covered >= 180
    wide = intervals.clip_score_interval(rng.beta(8, 16, size=500))
    narrow = intervals.clip_score_interval(rng.beta(8, 16, size=8000))
    width = {name: out["clip_score_hi"] - out["clip_score_lo"] for name, out in (("wide", wide), ("narrow", narrow))}
    assert 3.0 < width["wide"] / width["narrow"] < 5.0  # 1 / sqrt(N): 4


# ------------------------------------------------------------------------------------------------------- all four


def test_table_intervals_columns_and_manifest():
    rng = np.random.default_rng(40)
    real, fake = gaussian(rng, 800, 8), gaussian(rng, 600, 8, shift=0.2)
    mu_ref, sigma_ref = real.mean(axis=0, dtype=np.float64), np.cov(real.astype(np.float64), rowvar=False)
    samples = prdc_uncertainty.precision_recall_samples(real, fake)
    columns, manifest = scores.table_intervals(
        mu_ref, sigma_ref, fake, samples, rng.uniform(0.2, 0.4, size=600), n_resamples=50, seed=3, min_size=300
    )
    metrics = ("fid", "fid_inf", "precision", "recall", "clip_score")
    assert set(columns) == {f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi")}
    for metric in metrics:
        assert columns[f"{metric}_lo"] <= columns[metric] <= columns[f"{metric}_hi"]
    assert manifest["seed"] == 3 and manifest["n_resamples"] == 50 and manifest["confidence"] == 0.95
    assert manifest["fid_inf_sizes"][0] == 300 and set(manifest["methods"]) == {m for m in metrics}
    assert {"fid_se", "fid_inf_se", "precision_se", "recall_se", "clip_score_se"} <= set(manifest)


# ---------------------------------------------------------------------------------------------------- judgements


def row(value, lo, hi, metric="fid"):
    return {metric: value, f"{metric}_lo": lo, f"{metric}_hi": hi}


def test_within_noise_is_interval_overlap():
    assert intervals.within_noise(row(10, 9, 11), row(11.5, 10.5, 12.5), "fid")
    assert intervals.within_noise(row(10, 9, 11), row(12, 11, 13), "fid")  # touching
    assert not intervals.within_noise(row(10, 9, 11), row(12.5, 11.5, 13.5), "fid")
    assert not intervals.within_noise(row(12.5, 11.5, 13.5), row(10, 9, 11), "fid")
    with pytest.raises(ValueError):
        intervals.within_noise(row(10, math.nan, 11), row(10, 9, 11), "fid")
    with pytest.raises(KeyError):
        intervals.within_noise(row(10, 9, 11), row(10, 9, 11), "recall")


def test_sweep_verdict():
    clear = [row(12, 11.5, 12.5), row(10, 9.5, 10.5), row(13, 12.5, 13.5)]
    assert intervals.sweep_verdict(clear, "fid") == {"best": 1, "beats_first": True, "beats_last": True,
                                                     "beats_both": True}
    close = [row(10.8, 10.2, 11.4), row(10, 9.5, 10.5), row(13, 12.5, 13.5)]
    assert intervals.sweep_verdict(close, "fid") == {"best": 1, "beats_first": False, "beats_last": True,
                                                     "beats_both": False}
    at_end = [row(9, 8.5, 9.5), row(10, 9.5, 10.5), row(13, 12.5, 13.5)]
    verdict = intervals.sweep_verdict(at_end, "fid")
    assert verdict["best"] == 0 and not verdict["beats_first"] and not verdict["beats_both"]
    recall = [row(0.40, 0.39, 0.41, "recall"), row(0.45, 0.44, 0.46, "recall"), row(0.41, 0.40, 0.42, "recall")]
    assert intervals.sweep_verdict(recall, "recall")["beats_both"]  # higher is better
    assert intervals.sweep_verdict(recall, "recall", lower_is_better=True)["best"] == 0
    with pytest.raises(ValueError):
        intervals.sweep_verdict(clear[:1], "fid")
