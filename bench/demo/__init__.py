"""The offline demo world: SwiftBrush v2's benchmark in miniature on scikit-learn's handwritten digits.

Importing ``bench.demo`` registers its feature extractors with ``bench.features``:

* ``demo-classifier``: 128-d features of a digit classifier (the Inception stand-in: FID, precision, recall);
* ``demo-contrastive``: a small contrastive image-text model (the CLIP-score stand-in);
* ``demo-contrastive-loss``: a second, separate one for training losses (SBv2's CLIP ViT-B/32 loss model).

Each factory takes ``root`` (the demo world, default ``results/demo``; missing weights are trained there),
or ``weights`` (a safetensors file), and ``device``. See ``bench.demo.world`` for the world's layout.
"""

from bench.features import EXTRACTORS, register_extractor

DEFAULT_ROOT = "results/demo"


def demo_classifier(root: str = DEFAULT_ROOT, weights: str | None = None, device: str = "cpu", quick: bool = False):
    from bench.demo.extractors import DemoClassifierExtractor
    from bench.demo.world import ensure_classifier

    return DemoClassifierExtractor(weights or ensure_classifier(root, quick), device=device)


def demo_contrastive(root: str = DEFAULT_ROOT, weights: str | None = None, device: str = "cpu", quick: bool = False):
    from bench.demo.extractors import DemoContrastiveExtractor
    from bench.demo.world import ensure_contrastive

    return DemoContrastiveExtractor(weights or ensure_contrastive(root, quick), device=device, name="demo-contrastive")


def demo_contrastive_loss(root: str = DEFAULT_ROOT, weights: str | None = None, device: str = "cpu",
                          quick: bool = False):
    from bench.demo.extractors import DemoContrastiveExtractor
    from bench.demo.world import ensure_contrastive

    return DemoContrastiveExtractor(weights or ensure_contrastive(root, quick, loss=True), device=device,
                                    name="demo-contrastive-loss")


for _name, _factory in (("demo-classifier", demo_classifier), ("demo-contrastive", demo_contrastive),
                        ("demo-contrastive-loss", demo_contrastive_loss)):
    if _name not in EXTRACTORS:
        register_extractor(_name, _factory)
