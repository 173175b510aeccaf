"""What generating in float16 instead of float32 changes, measured on trained models: the demo world's.

    python scripts/measure_dtype.py [--world results/demo/world] [--n 1800]

For each model, the same samples (same captions, seeds and indices) are generated in float32 and in float16 (on
the CPU: PyTorch's half-precision kernels there, not a GPU's), then compared: pixels, the FID extractor's features,
the FID between the two sample sets beside the FID between two noise seeds in float32 (the sampling noise), and
each set's FID against the reference. The demo world must be trained (``python -m bench.run --suite demo``).
"""

import argparse
import dataclasses
import warnings

import numpy as np
import torch

from bench.demo import students, suite  # noqa: F401  (registers the demo extractors)
from bench.demo.models import demo_models
from bench.demo.protocol import demo_protocol
from bench.demo.world import world_paths
from bench.generate import Sampler
from bench.load import load_model
from bench.metrics.fid import fid_from_features


def samples(spec, captions, seed: int, dtype: torch.dtype) -> np.ndarray:
    model = load_model(spec)
    if dtype != torch.float32:
        for module in (model.unet, model.text_encoder, model.vae):
            module.to(dtype)
        model = dataclasses.replace(model, dtype=dtype)
    sampler = Sampler(model, seed=seed)
    return np.concatenate([sampler(captions[i:i + 300], range(i, min(i + 300, len(captions))))[0]
                           for i in range(0, len(captions), 300)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="results/demo/world")
    parser.add_argument("--n", type=int, default=1800)
    parser.add_argument("--models", default="demo-teacher-cfg2,demo-turbo,demo-vsd-lora-clip")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from bench.demo.extractors import DemoClassifierExtractor

    world = world_paths(args.world)
    registry = demo_models(world.root) | students.student_models(world.root)
    protocol = demo_protocol(samples_per_prompt=args.n // 10)
    extractor = DemoClassifierExtractor(world.classifier)
    reference = extractor.image_features(next(protocol.reference.load_batches(10_000)))
    captions = list(protocol.captions)
    print("| model | pixels differing | max pixel diff | max feature diff / feature scale | FID fp16 vs fp32 | "
          "FID seed 0 vs seed 1 (fp32) | FID to reference fp32 / fp16 |")
    print("|---|---|---|---|---|---|---|")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models.split(","):
            spec = registry[name]
            full, half = samples(spec, captions, 0, torch.float32), samples(spec, captions, 0, torch.float16)
            other = samples(spec, captions, 1, torch.float32)
            f_full, f_half, f_other = (extractor.image_features(protocol.to_metric_images(x))
                                       for x in (full, half, other))
            difference = np.abs(full.astype(int) - half)
            print(f"| {name} | {(difference > 0).mean():.2%} | {difference.max()} | "
                  f"{np.abs(f_full - f_half).max():.3g} / {np.abs(f_full).max():.3g} | "
                  f"{fid_from_features(f_full, f_half):.4f} | {fid_from_features(f_full, f_other):.4f} | "
                  f"{fid_from_features(reference, f_full):.3f} / {fid_from_features(reference, f_half):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
