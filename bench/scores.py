"""What a suite measures from a model's samples, and the paper's numbers each table puts beside ours.

A scorer takes the finite samples' stored features (``features_<role>`` per extractor role, ``indices``), the
reference features of the roles that need them and the text features of the captions, and returns the table's
metrics (with their 95% intervals), the per-sample values the reports show (e.g. each sample's CLIP score) and the
details ``metrics.json`` keeps (standard errors, the FID∞ fit, the resampling settings). Metric math lives in
``bench/metrics``; this module only wires roles to it.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from bench.metrics.fid_uncertainty import FID_INF_MIN_SIZE, FID_INF_POINTS, fid_intervals
from bench.metrics.intervals import CONFIDENCE, METHODS, clip_score_interval
from bench.metrics.prdc_uncertainty import RECALL_RESAMPLES, precision_recall_intervals

PR_K = 3  # the protocol's neighbourhood size for precision/recall (Kynkäänniemi et al. 2019)

# SwiftBrush v2 (arXiv 2408.14176), Table 1 and the rows of Table 3 measured on the same protocol: FID-30K, CLIP
# score (raw cosine), precision, recall. Table 3 marks SD 1.5 as reported by others and InstaFlow-0.9B as rerun by
# the authors (Table 8 lists InstaFlow at FID 13.10).
PAPER_COCO = {
    "SD 2.1 (cfg = 2)": dict(fid=9.64, clip_score=0.31, precision=0.57, recall=0.53),
    "SD 2.1 (cfg = 4.5)": dict(fid=12.26, clip_score=0.33, precision=0.61, recall=0.41),
    "SD 2.1 (cfg = 7.5)": dict(fid=15.93, clip_score=0.33, precision=0.59, recall=0.36),
    "SD Turbo": dict(fid=16.10, clip_score=0.33, precision=0.65, recall=0.35),
    "SwiftBrush": dict(fid=15.46, clip_score=0.30, precision=0.47, recall=0.46),
    "SwiftBrush v2": dict(fid=8.77, clip_score=0.32, precision=0.55, recall=0.53),
    "SD 1.5 (cfg = 3)": dict(fid=8.78, clip_score=0.30, precision=0.59, recall=0.53),
    "InstaFlow-0.9B": dict(fid=13.33, clip_score=0.30, precision=0.53, recall=0.45),
}

# Table 4: HPS v2 per benchmark style. The SD 2.1 row equals the HPS authors' own "Stable Diffusion v2.0" row of the
# HPS v2 benchmark (tgxs002/HPSv2 README) in their column order anime, concept-art, paintings, photo, which is the
# order used here (docs/protocol.md); the paper takes SD 2.1 at its default guidance, 7.5.
PAPER_HPS = {
    "SD 2.1 (cfg = 7.5)": {"anime": 27.48, "concept-art": 26.89, "paintings": 26.86, "photo": 27.46},
    "SD Turbo": {"anime": 27.98, "concept-art": 27.59, "paintings": 27.16, "photo": 27.19},
    "InstaFlow-0.9B": {"anime": 25.98, "concept-art": 26.32, "paintings": 25.79, "photo": 25.93},
    "SwiftBrush": {"anime": 26.91, "concept-art": 27.21, "paintings": 26.32, "photo": 26.37},
    "SwiftBrush v2": {"anime": 27.13, "concept-art": 27.56, "paintings": 26.69, "photo": 26.76},
}


@dataclass(frozen=True)
class Scorer:
    score: Callable  # (samples, reference, texts, device) -> (metrics, per-sample arrays, details)
    columns: tuple[str, ...]  # the table's metric columns, in order
    digits: Mapping[str, int]  # decimals shown per column
    paper: Mapping[str, Mapping[str, float]]  # paper row -> column -> value
    reference_roles: tuple[str, ...] = ()  # roles whose reference features the score needs
    note: str = ""  # one sentence for the report: how to read the numbers
    prepare: Callable = dict  # reference features -> what ``score`` reads (computed once per run)


def coco_reference(reference: dict) -> dict:
    """The reference features with the FID features' statistics, computed once for every model of a run."""
    from bench.metrics.fid import feature_statistics

    return {**reference, "fid_stats": feature_statistics(reference["fid"])}


def coco_scores(samples: dict, reference: dict, texts: dict, device: str = "cpu") -> tuple[dict, dict, dict]:
    """FID, FID∞, KID, precision/recall (the ``pr`` role's features when there is one, else the FID features) and
    the CLIP score as SwiftBrush v2 / GigaGAN report them, each with its 95% interval (``bench.metrics``)."""
    from bench.metrics.clipscore import clip_scores
    from bench.metrics.fid import feature_statistics, frechet_distance
    from bench.metrics.kid import kid_from_features
    from bench.metrics.prdc_uncertainty import precision_recall_samples

    pr_role = "pr" if "features_pr" in samples else "fid"
    pr = precision_recall_samples(reference[pr_role], samples[f"features_{pr_role}"], k=PR_K, device=device)
    kid_mean, kid_std = kid_from_features(reference["fid"], samples["features_fid"], seed=0)
    scores = clip_scores(samples["features_clip"], texts["clip"][samples["indices"]])
    mu_ref, sigma_ref = reference["fid_stats"]
    columns, details = table_intervals(mu_ref, sigma_ref, samples["features_fid"], pr, scores)
    # The headline FID keeps frechet_distance's sqrtm cross-check; the interval's own FID agrees to rounding.
    columns["fid"] = frechet_distance(mu_ref, sigma_ref, *feature_statistics(samples["features_fid"]))
    metrics = {**columns, "kid": float(kid_mean), "kid_std": float(kid_std),
               "pr_features": "adm" if pr_role == "pr" else "fid"}
    return metrics, {"clip_scores": scores, "sample_indices": samples["indices"]}, details


def table_intervals(
    mu_ref: np.ndarray,
    sigma_ref: np.ndarray,
    fid_fake: np.ndarray,
    pr_samples,
    clip_scores: np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = RECALL_RESAMPLES,
    seed: int = 0,
    min_size: int = FID_INF_MIN_SIZE,
    num_points: int = FID_INF_POINTS,
) -> tuple[dict, dict]:
    """The interval columns of ``table.csv`` and the details ``metrics.json`` records about them.

    Args:
        mu_ref: (D,) reference mean of the FID features.
        sigma_ref: (D, D) reference covariance of the FID features.
        fid_fake: (N, D) generated FID features.
        pr_samples: ``bench.metrics.prdc_uncertainty.precision_recall_samples(reference, generated)``.
        clip_scores: (N,) per-sample CLIP cosines.
        confidence: two-sided level of every interval.
        n_resamples: recall half-samples.
        seed: seed of the FID∞ permutation and of the half-samples.
        min_size: smallest FID∞ subset.
        num_points: number of FID∞ sizes.

    Returns:
        ``(columns, manifest)``. ``columns``: ``fid``, ``fid_lo``, ``fid_hi``, ``fid_inf``, ``fid_inf_lo``,
        ``fid_inf_hi``, ``precision``, ``precision_lo``, ``precision_hi``, ``recall``, ``recall_lo``,
        ``recall_hi``, ``clip_score``, ``clip_score_lo``, ``clip_score_hi`` (floats). ``manifest``:
        ``confidence``, ``seed``, ``n_resamples``, ``fid_inf_sizes``, ``fid_inf_curve``, ``fid_inf_slope``,
        the standard errors (``*_se``) and ``methods`` (``METHODS``).
    """
    fid = fid_intervals(mu_ref, sigma_ref, fid_fake, confidence, min_size, num_points, seed)
    pr = precision_recall_intervals(pr_samples, confidence, n_resamples, seed)
    clip = clip_score_interval(clip_scores, confidence)
    merged = {**fid, **pr, **clip}
    columns = {
        f"{metric}{suffix}": merged[f"{metric}{suffix}"]
        for metric in ("fid", "fid_inf", "precision", "recall", "clip_score")
        for suffix in ("", "_lo", "_hi")
    }
    manifest = {
        "confidence": confidence,
        "seed": seed,
        "n_resamples": n_resamples,
        "fid_inf_sizes": fid["fid_inf_sizes"],
        "fid_inf_curve": fid["fid_inf_curve"],
        "fid_inf_slope": fid["fid_inf_slope"],
        **{key: value for key, value in merged.items() if key.endswith("_se")},
        "methods": dict(METHODS),
    }
    return columns, manifest


COCO = Scorer(coco_scores, ("fid", "fid_inf", "precision", "recall", "clip_score"),
              {"fid": 2, "fid_inf": 2, "precision": 3, "recall": 3, "clip_score": 3}, PAPER_COCO,
              reference_roles=("fid", "pr"), note="CLIP score is a raw cosine.", prepare=coco_reference)
