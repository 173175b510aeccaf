"""Metrics of a run from its stores alone: the suite's scorer on each model's samples, the spread across extra noise
seeds, per-prompt diversity, and which rows are within noise of each other.

Nothing here writes: a model that fails (NaN samples, too few) leaves every file of the run as it was.
"""

from pathlib import Path

import numpy as np

from bench.errors import UserError
from bench.store import SampleStore, remove_stale_temporaries

DIVERSITY_SEED = 1_000_003  # added to --seed for the diversity samples' noise, apart from the table's samples


def reference_and_text(suite, extractors: dict, cache_dir: str) -> tuple[dict, dict]:
    """The reference features of the roles the suite's scorer needs (prepared once for every model) and the text
    features of every caption, with the protocol's prefix, for each role that encodes text; all cached."""
    from bench import features

    remove_stale_temporaries(Path(cache_dir))
    protocol = suite.protocol
    reference = {role: features.reference_features(protocol.reference, extractor, cache_dir)
                 for role, extractor in extractors.items() if role in suite.scorer.reference_roles}
    captions = [protocol.clip_prefix + c for c in protocol.captions]
    texts = {role: features.text_features_cached(captions, extractor, cache_dir)
             for role, extractor in extractors.items() if isinstance(extractor, features.TextImageExtractor)}
    return suite.scorer.prepare(reference), texts


def finite_samples(store: SampleStore, max_nonfinite: float, at_least: int) -> tuple[dict, np.ndarray]:
    """The finite samples' arrays (features and indices) and the indices of the others, or one line saying why
    the store cannot be scored."""
    data = store.gather()
    finite = data["finite"].astype(bool)
    nonfinite = int((~finite).sum())
    if nonfinite > max_nonfinite * len(finite) or (nonfinite and finite.sum() < at_least):
        raise UserError(f"{store.root}: {nonfinite} of {len(finite)} samples decoded to NaN/inf (limit "
                        f"--max-nonfinite {max_nonfinite}): the model's weights or dtype are at fault; try "
                        "--dtype float32, or check the weights")
    if finite.sum() < at_least:
        raise UserError(f"{store.root}: {int(finite.sum())} samples, but the metrics need at least {at_least}: "
                        "raise --n")
    return {key: value[finite] for key, value in data.items() if key.startswith("features_") or key == "indices"}, \
        data["indices"][~finite]


def evaluate(store: SampleStore, suite, reference: dict, texts: dict, max_nonfinite: float,
             device: str = "cpu") -> tuple[dict, dict, dict]:
    """The suite's metrics of one store, the per-sample values the reports show, and the details
    ``metrics.json`` keeps."""
    from bench.scores import PR_K

    samples, nonfinite = finite_samples(store, max_nonfinite, PR_K + 1)
    metrics, per_sample, details = suite.scorer.score(samples, reference, texts, device)
    return ({"n_samples": len(samples["indices"]), **metrics, "nonfinite_samples": len(nonfinite)},
            {**per_sample, "nonfinite_indices": nonfinite}, details)


def seed_spread(per_seed: list[dict], columns) -> dict:
    """``<column>_seeds_mean`` and ``<column>_seeds_std`` (sample standard deviation) over the noise seeds."""
    spread = {"seeds": len(per_seed)}
    for column in columns:
        values = np.array([metrics[column] for metrics in per_seed], dtype=np.float64)
        spread[f"{column}_seeds_mean"] = float(values.mean())
        spread[f"{column}_seeds_std"] = float(values.std(ddof=1))
    return spread


def diversity_prompts(n: int, k: int, prompts: int | None) -> list[int]:
    """The fixed, evenly spaced subset of sample indices whose captions get ``k`` extra seeds; by default as many
    as keep the extra samples at 10% of the run."""
    count = prompts if prompts is not None else max(2, n // (10 * k))
    return sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))


def diversity_of(store: SampleStore, prompts: list[int], k: int, max_nonfinite: float) -> tuple[dict, dict]:
    """Diversity columns (CLIP cosine and Inception Euclidean, with intervals) and the per-prompt values of a
    diversity store, whose sample ``p * k + s`` is seed s of prompt ``prompts[p]``."""
    from bench.metrics.diversity import diversity_columns

    samples, _ = finite_samples(store, max_nonfinite, 2)
    if len(samples["indices"]) != len(prompts) * k:
        raise UserError(f"{store.root}: diversity needs every sample finite ({len(samples['indices'])} of "
                        f"{len(prompts) * k}); rerun with --dtype float32")
    shaped = {role: samples[f"features_{role}"].reshape(len(prompts), k, -1) for role in ("clip", "fid")
              if f"features_{role}" in samples}
    columns = diversity_columns(clip=shaped.get("clip"), inception=shaped.get("fid"))
    per_prompt = {key: columns.pop(key) for key in list(columns) if key.endswith("_per_prompt")}
    return columns, per_prompt


def within_noise(specs, results: dict, columns) -> dict:
    """For each model and metric column, the other models whose interval overlaps its own."""
    from bench.metrics.intervals import within_noise as overlap

    marks = {}
    for spec in specs:
        row = results[spec.name]
        for column in columns:
            if row.get(f"{column}_lo") is None:
                continue
            others = [other.name for other in specs if other.name != spec.name
                      and results[other.name].get(f"{column}_lo") is not None
                      and overlap(row, results[other.name], column)]
            if others:
                marks.setdefault(spec.name, {})[column] = others
    return marks
