"""Feature extractors and their registry: Inception (clean-fid), CLIP (open_clip), HPS v2, and any registered or
``module:factory`` extractor (the demo world registers its own when ``bench.demo`` is imported).

Every extractor takes uint8 NHWC RGB images at the protocol's metric resolution (``bench.features.base``); the
on-disk cache of reference and text features is ``bench.features.cache``.
"""

import difflib
import importlib
from collections.abc import Callable

from bench.errors import UserError
from bench.features.base import FeatureExtractor, TextImageExtractor
from bench.features.cache import cached_features, reference_features, text_features_cached
from bench.features.clip import ClipExtractor, clip_text
from bench.features.hps import HpsExtractor
from bench.features.inception import InceptionExtractor, inception_adm_extractor, inception_extractor

EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "inception": inception_extractor,
    "inception-adm": inception_adm_extractor,
    "clip": ClipExtractor,
    "hps": HpsExtractor,
}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    if name in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is already registered")
    EXTRACTORS[name] = factory


def build_extractor(name: str, **options) -> FeatureExtractor:
    """A registered extractor (``build_extractor("inception", weights=FILE)``), or ``module:factory`` for a
    user's own, called with the same options.

    Raises:
        UserError: an unknown name (the message lists the registered ones and a near miss) or a
            ``module:factory`` that cannot be imported.
    """
    if ":" in name:
        module, attr = name.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as error:
            raise UserError(f"feature extractor {name!r} cannot be imported ({error}): check module:factory") \
                from error
        return factory(**options)
    if name not in EXTRACTORS:
        close = difflib.get_close_matches(name, EXTRACTORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown feature extractor {name!r}{hint}; choose one of: {', '.join(sorted(EXTRACTORS))}, "
                        "or pass module:factory")
    return EXTRACTORS[name](**options)


__all__ = ["EXTRACTORS", "ClipExtractor", "FeatureExtractor", "InceptionExtractor", "TextImageExtractor",
           "build_extractor", "cached_features", "clip_text", "reference_features", "register_extractor",
           "text_features_cached"]
