"""Per-prompt diversity (bench.metrics.diversity): hand-computed distances, the zero and monotone acceptance cases."""

import numpy as np
import pytest

from bench.metrics import diversity as div


def prompts_with_noise(rng, p, k, d, scale):
    """P prompt centres, each drawn K times with isotropic noise of the given scale (one noise draw per call)."""
    centres = rng.normal(size=(p, 1, d)) * 3.0 + 1.0
    return centres + scale * rng.normal(size=(p, k, d))


def test_hand_computed_distances():
    # Euclidean: a 3-4-5 triangle, mean of the three sides = 4.
    triangle = np.array([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])
    assert div.per_prompt_diversity(triangle, "euclidean") == pytest.approx([4.0])
    # Cosine: (1, 0), (0, 1), (-1, 0): 1 - cos = 1, 2, 1 -> mean 4 / 3; lengths do not matter.
    directions = np.array([[[2.0, 0.0], [0.0, 5.0], [-0.5, 0.0]]])
    assert div.per_prompt_diversity(directions, "cosine") == pytest.approx([4.0 / 3.0])
    two_prompts = np.concatenate([triangle, triangle * 2.0])
    assert div.per_prompt_diversity(two_prompts, "euclidean") == pytest.approx([4.0, 8.0])


@pytest.mark.parametrize("distance", div.DISTANCES)
def test_a_model_that_ignores_its_noise_has_zero_diversity(distance):
    rng = np.random.default_rng(0)
    same = np.repeat(rng.normal(size=(50, 1, 64)), 4, axis=1).astype(np.float32)
    out = div.diversity(same, distance, n_resamples=200)
    assert np.all(out["per_prompt"] == 0.0)
    assert out["diversity"] == out["diversity_lo"] == out["diversity_hi"] == 0.0


@pytest.mark.parametrize("distance", div.DISTANCES)
def test_diversity_grows_with_the_noise_scale(distance):
    rng = np.random.default_rng(1)
    scales = [0.0, 0.05, 0.2, 0.5, 1.0, 2.0]
    results = [div.diversity(prompts_with_noise(rng, 200, 4, 32, s), distance, n_resamples=500) for s in scales]
    values = [r["diversity"] for r in results]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values, values[1:])), values
    for smaller, larger in zip(results[1:], results[2:]):  # each step is beyond the noise
        assert smaller["diversity_hi"] < larger["diversity_lo"]


def test_euclidean_diversity_of_gaussian_noise_is_its_expected_distance():
    # Two independent N(0, s^2 I_d) draws are s * sqrt(2) * chi_d apart; E chi_d ~= sqrt(d - 1/2).
    rng = np.random.default_rng(2)
    d, s = 256, 0.7
    out = div.diversity(prompts_with_noise(rng, 400, 5, d, s), "euclidean", n_resamples=500)
    expected = s * np.sqrt(2.0) * np.sqrt(d - 0.5)
    assert out["diversity"] == pytest.approx(expected, rel=0.01)
    assert out["diversity_lo"] < expected < out["diversity_hi"]


def test_bootstrap_interval_is_seeded_and_narrows_with_prompts():
    rng = np.random.default_rng(3)
    few, many = prompts_with_noise(rng, 50, 3, 16, 1.0), prompts_with_noise(rng, 800, 3, 16, 1.0)
    first = div.diversity(few, "cosine", seed=7)
    again = div.diversity(few, "cosine", seed=7)
    assert (first["diversity_lo"], first["diversity_hi"]) == (again["diversity_lo"], again["diversity_hi"])
    other = div.diversity(few, "cosine", seed=8)
    assert (other["diversity_lo"], other["diversity_hi"]) != (first["diversity_lo"], first["diversity_hi"])
    assert first["diversity_lo"] < first["diversity"] < first["diversity_hi"]
    wide = first["diversity_hi"] - first["diversity_lo"]
    narrow = div.diversity(many, "cosine")
    assert 2.5 < wide / (narrow["diversity_hi"] - narrow["diversity_lo"]) < 6.0  # sqrt(800 / 50) = 4


def test_per_prompt_values_keep_prompt_order():
    rng = np.random.default_rng(4)
    features = np.concatenate([prompts_with_noise(rng, 1, 4, 8, s) for s in (0.1, 2.0, 0.5)])
    values = div.diversity(features, "euclidean")["per_prompt"]
    assert values.shape == (3,) and np.argmin(values) == 0 and np.argmax(values) == 1


def test_diversity_columns():
    rng = np.random.default_rng(5)
    clip, inception = prompts_with_noise(rng, 30, 4, 16, 0.5), prompts_with_noise(rng, 30, 4, 32, 0.5)
    columns = div.diversity_columns(clip=clip, inception=inception, n_resamples=100)
    assert set(columns) == {f"diversity_{kind}{suffix}" for kind in ("clip", "inception")
                            for suffix in ("", "_lo", "_hi", "_per_prompt")}
    assert columns["diversity_clip"] == div.diversity(clip, "cosine")["diversity"]
    assert columns["diversity_inception"] == div.diversity(inception, "euclidean")["diversity"]
    assert set(div.diversity_columns(clip=clip)) == {"diversity_clip", "diversity_clip_lo", "diversity_clip_hi",
                                                     "diversity_clip_per_prompt"}


def test_bad_input_raises():
    with pytest.raises(ValueError):
        div.per_prompt_diversity(np.zeros((5, 1, 3)))  # one seed: no pairs
    with pytest.raises(ValueError):
        div.per_prompt_diversity(np.zeros((5, 3)))
    with pytest.raises(ValueError):
        div.per_prompt_diversity(np.ones((2, 2, 3)), "manhattan")
    with pytest.raises(ValueError):
        div.per_prompt_diversity(np.zeros((2, 2, 3)), "cosine")
    with pytest.raises(ValueError):
        div.diversity(np.ones((2, 2, 3)), confidence=0.0)
