"""``python -m bench.metrics.cost``: what the intervals, FID∞ and diversity add to a run's metric stage.

Random features of a run's shapes (default: 30,000 generated and 40,504 reference 2048-d Inception features,
1024-d CLIP embeddings), then, in one process and one after the other:

- the plain metric stage as ``bench.run.evaluate`` runs it: ``fid_from_features``, ``kid_from_features``,
  ``clip_scores``, ``precision_recall`` (alternating with ``precision_recall_samples``, which replaces it);
- the additions: the reference statistics (``evaluate`` has them only inside ``fid_from_features``; a run can
  compute them once for both), ``fid_intervals`` (FID and FID∞ intervals), ``precision_recall_samples`` (it
  replaces ``precision_recall``, so only its difference counts), ``precision_recall_intervals``,
  ``clip_score_interval`` and ``diversity_columns`` on P prompts x K seeds.

Inception-like features: independent coordinates with variances decaying as 1 / i (a few directions carry most of
the variance); the generated set slightly narrower and shifted, so that precision and recall sit between 0 and 1
(their distance structures, hence the recall pairs kept for the interval, resemble a real run's).
Prints each time (wall clock and this process's CPU time, which a busy machine disturbs less), the ratios of the
additions to the plain stage, the machine's load before and after, and a JSON line.
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from bench.metrics import diversity, fid_uncertainty, intervals, prdc_uncertainty
from bench.metrics.clipscore import clip_scores
from bench.metrics.fid import feature_statistics, fid_from_features
from bench.metrics.kid import kid_from_features
from bench.metrics.prdc import precision_recall

PR_K = 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.metrics.cost", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=30000, help="generated samples")
    p.add_argument("--n-ref", type=int, default=40504, help="reference samples")
    p.add_argument("--dim", type=int, default=2048, help="Inception feature dimension")
    p.add_argument("--clip-dim", type=int, default=1024, help="CLIP embedding dimension (ViT-g-14: 1024)")
    p.add_argument("--diversity-prompts", type=int, default=1000, help="P prompts of the diversity subset")
    p.add_argument("--diversity-k", type=int, default=4, help="K seeds per diversity prompt")
    p.add_argument("--n-resamples", type=int, default=prdc_uncertainty.RECALL_RESAMPLES, help="recall half-samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device of the precision/recall distance blocks")
    p.add_argument("--threads", type=int, help="torch and BLAS threads for everything (default: as a run leaves them)")
    p.add_argument("--pr-repeats", type=int, default=1,
                   help="timings of each precision/recall pass, alternating (2: plain, samples, samples, plain)")
    return p.parse_args(argv)


def features(rng: np.random.Generator, args) -> dict:
    spread = (np.arange(1, args.dim + 1, dtype=np.float32) ** -0.5)

    def inception(n, shift=0.0, scale=1.0, shape=()):
        z = rng.standard_normal((*shape, n, args.dim), dtype=np.float32)
        return (z * scale + shift) * spread

    p, k = args.diversity_prompts, args.diversity_k
    return {
        "real": inception(args.n_ref),
        "fake": inception(args.n, shift=0.05, scale=0.98),
        "image": rng.standard_normal((args.n, args.clip_dim), dtype=np.float32),
        "text": rng.standard_normal((args.n, args.clip_dim), dtype=np.float32),
        "div_clip": rng.standard_normal((p, 1, args.clip_dim), dtype=np.float32)
        + 0.5 * rng.standard_normal((p, k, args.clip_dim), dtype=np.float32),
        "div_inception": inception(k, shape=(p,)),
    }


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: all threads of this process


def timed(times: dict, name: str, fn, *a, **kw):
    start = {clock: read() for clock, read in CLOCKS.items()}
    out = fn(*a, **kw)
    times[name] = {clock: read() - start[clock] for clock, read in CLOCKS.items()}
    print(f"  {name:<44} {times[name]['wall']:8.1f} s wall {times[name]['cpu']:8.1f} s cpu", flush=True)
    return out


def conditions() -> dict:
    blas = [f"{i.get('internal_api')} {i.get('version')} x{i.get('num_threads')}" for i in threadpool_info()]
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "blas": blas,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is None:
        return measure(args)
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        return measure(args)


def measure(args) -> dict:
    rng = np.random.default_rng(args.seed)
    print(f"features: {args.n} generated, {args.n_ref} reference, {args.dim}-d; CLIP {args.clip_dim}-d; "
          f"diversity {args.diversity_prompts} prompts x {args.diversity_k} seeds", flush=True)
    f = features(rng, args)
    before = conditions()
    print(f"conditions before: {before}", flush=True)

    plain, extra = {}, {}
    print("plain metric stage:", flush=True)
    fid = timed(plain, "fid_from_features", fid_from_features, f["real"], f["fake"])
    timed(plain, "kid_from_features", kid_from_features, f["real"], f["fake"], seed=0)
    scores = timed(plain, "clip_scores", clip_scores, f["image"], f["text"])
    # precision_recall_samples replaces precision_recall: time both, alternating (ABBA with --pr-repeats 2) so that
    # a drift in the machine's load does not land on one of them.
    pr_runs = {"precision_recall": [], "precision_recall_samples": []}
    for repeat in range(args.pr_repeats):
        for name in ("precision_recall", "precision_recall_samples")[:: 1 if repeat % 2 == 0 else -1]:
            once = {}
            if name == "precision_recall":
                pr = timed(once, name, precision_recall, f["real"], f["fake"], k=PR_K, device=args.device)
            else:
                samples = timed(once, name, prdc_uncertainty.precision_recall_samples, f["real"], f["fake"], k=PR_K,
                                device=args.device)
            pr_runs[name].append(once[name])
    if (samples.precision, samples.recall) != pr:
        raise SystemExit(f"precision_recall_samples gave {(samples.precision, samples.recall)}, plain {pr}")

    def mean_of(runs):
        return {clock: float(np.mean([run[clock] for run in runs])) for clock in CLOCKS}

    plain["precision_recall"] = mean_of(pr_runs["precision_recall"])
    with_samples = mean_of(pr_runs["precision_recall_samples"])

    print("additions:", flush=True)
    extra["precision_recall_samples - precision_recall"] = {
        clock: with_samples[clock] - plain["precision_recall"][clock] for clock in CLOCKS
    }
    mu_ref, sigma_ref = timed(extra, "reference statistics", feature_statistics, f["real"])
    fid_out = timed(extra, "fid_intervals (FID, FID∞)", fid_uncertainty.fid_intervals, mu_ref, sigma_ref, f["fake"],
                    seed=args.seed)
    if abs(fid_out["fid"] - fid) > 1e-6 * max(1.0, abs(fid)):
        raise SystemExit(f"fid_intervals gave FID {fid_out['fid']!r}, fid_from_features {fid!r}")
    pr_out = timed(extra, "precision_recall_intervals", prdc_uncertainty.precision_recall_intervals, samples,
                   n_resamples=args.n_resamples, seed=args.seed)
    clip_out = timed(extra, "clip_score_interval", intervals.clip_score_interval, scores)
    div_out = timed(extra, "diversity_columns", diversity.diversity_columns, clip=f["div_clip"],
                    inception=f["div_inception"], seed=args.seed)
    after = conditions()

    totals = {}
    for clock in CLOCKS:
        plain_total = sum(t[clock] for t in plain.values())
        counted = {key: max(t[clock], 0.0) for key, t in extra.items()}  # a faster P/R pass saves nothing
        intervals_total = sum(value for key, value in counted.items() if key != "diversity_columns")
        all_total = sum(counted.values())
        totals[clock] = {
            "plain_stage_s": plain_total,
            "intervals_and_fid_inf_s": intervals_total,
            "diversity_s": counted["diversity_columns"],
            "ratio_intervals_and_fid_inf": intervals_total / plain_total,
            "ratio_all_additions": all_total / plain_total,
            "ratio_without_reference_statistics": (all_total - counted["reference statistics"]) / plain_total,
            "ratio_without_pr_pass_difference": (all_total - counted["precision_recall_samples - precision_recall"])
            / plain_total,
        }
    summary = {
        "shapes": {"n": args.n, "n_ref": args.n_ref, "dim": args.dim, "clip_dim": args.clip_dim,
                   "diversity_prompts": args.diversity_prompts, "diversity_k": args.diversity_k,
                   "n_resamples": args.n_resamples, "recall_pairs": int(len(samples.pair_real))},
        "plain_s": plain,
        "precision_recall_runs_s": pr_runs,
        "additions_s": extra,
        "totals": totals,
        "values": {key: fid_out[key] for key in ("fid", "fid_lo", "fid_hi", "fid_inf", "fid_inf_lo", "fid_inf_hi")}
        | {key: value for key, value in pr_out.items() if not key.endswith("_se")}
        | {key: value for key, value in clip_out.items() if not key.endswith("_se")}
        | {key: value for key, value in div_out.items() if not key.endswith("per_prompt")},
        "conditions_before": before,
        "conditions_after": after,
    }
    for clock, t in totals.items():
        print(f"{clock}: plain metric stage {t['plain_stage_s']:.1f} s; "
              f"intervals + FID∞ {t['intervals_and_fid_inf_s']:.1f} s "
              f"= {100 * t['ratio_intervals_and_fid_inf']:.1f}% (counting the reference statistics and the P/R pass "
              f"difference); with diversity {100 * t['ratio_all_additions']:.1f}%; without the reference statistics "
              f"{100 * t['ratio_without_reference_statistics']:.1f}%; without the P/R pass difference "
              f"{100 * t['ratio_without_pr_pass_difference']:.1f}%")
    print(f"conditions after: {after}")
    print(json.dumps(summary))
    return summary

if __name__ == "__main__":
    main()
