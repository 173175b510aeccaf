"""The demo world's feature extractors: a digit classifier (the Inception stand-in) and two small
contrastive image-text models (the CLIP stand-ins).

* ``demo-classifier``: 3 conv layers, FC-128, 10 classes. Its 128-d penultimate features (the FC-128 output,
  before the ReLU) play Inception's pool features for FID and precision/recall.
* ``demo-contrastive``: an image tower (a small CNN on the 8x8 gray digit) and a text tower (mean-pooled
  embeddings of the real CLIP tokenizer's ids, then an MLP, so any prompt string is accepted), trained with
  InfoNCE at a *fixed*, low temperature on (digit, prompt) pairs with noise augmentation, so that the cosine of a
  matched pair measures alignment on a graded scale instead of saturating (``docs/demo.md``). It is the
  CLIP-score model.
* ``demo-contrastive-loss``: a second contrastive model (another seed and width) for training losses,
  as SwiftBrush v2 uses ViT-B/32 for its CLIP loss and ViT-g/14 for evaluation.

All take uint8 NHWC RGB images at 8x8 (the gray value is the channel mean). Weights are safetensors files
whose metadata holds the architecture; an extractor's ``id`` holds the file's sha256. The contrastive
models also expose a differentiable torch path for losses: ``encode_image(x)`` on float NCHW images in
[0, 1] (1 or 3 channels, 8x8) and ``encode_text(list[str])``, both returning unit vectors.
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.demo.data import PROMPTS, digits, split, uint8_to_unit
from bench.features import FeatureExtractor, TextImageExtractor
from bench.hashing import file_sha256

VOCAB_SIZE = 49408  # the CLIP BPE vocabulary


@dataclass(frozen=True)
class ClassifierConfig:
    width: int = 32
    feature_dim: int = 128
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    noise_std: float = 0.1  # light Gaussian noise on the [-1, 1] pixels
    seed: int = 0


@dataclass(frozen=True)
class ContrastiveConfig:
    width: int = 16
    embed_dim: int = 32
    token_dim: int = 32
    # Fixed and low, near where CLIP's learned one ends (0.01): the softmax is satisfied at a moderate cosine, so
    # the score stays graded instead of saturating near 1.
    temperature: float = 0.05
    steps: int = 150
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    noise_std: float = 0.5  # strong noise augmentation: ambiguous digits get lower cosines
    seed: int = 1


# --- networks -----------------------------------------------------------------------------------------------


def _conv_tower(width: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
        nn.Flatten(), nn.Linear(8 * width, out_dim),
    )


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Float NCHW in [0, 1] with 1 or 3 channels at 8x8 -> (N, 1, 8, 8) in [-1, 1]."""
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[-2:] != (8, 8):
        raise ValueError(f"expected float NCHW images with 1 or 3 channels at 8x8, got shape {tuple(x.shape)}")
    return x.mean(dim=1, keepdim=True) * 2 - 1


class DigitClassifier(nn.Module):
    def __init__(self, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.body = _conv_tower(width, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 8, 8) in [-1, 1]
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


class ContrastiveModel(nn.Module):
    def __init__(self, width: int = 16, embed_dim: int = 32, token_dim: int = 32):
        super().__init__()
        self.image_tower = _conv_tower(width, embed_dim)
        self.token_embedding = nn.Embedding(VOCAB_SIZE, token_dim)
        self.text_mlp = nn.Sequential(nn.Linear(token_dim, 2 * embed_dim), nn.GELU(),
                                      nn.Linear(2 * embed_dim, embed_dim))

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 8, 8) in [-1, 1]
        return F.normalize(self.image_tower(x), dim=-1)

    def text_embedding(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(self.token_embedding.weight.dtype).unsqueeze(-1)
        pooled = (self.token_embedding(ids) * mask).sum(1) / mask.sum(1).clamp_min(1)
        return F.normalize(self.text_mlp(pooled), dim=-1)


# --- weights files ------------------------------------------------------------------------------------------


def _save(model: nn.Module, path: Path, kind: str, config) -> None:
    """safetensors with the architecture in its metadata; written to a temp file, then renamed."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"kind": kind, "config": json.dumps(asdict(config), sort_keys=True)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _load(path: str | Path, kind: str) -> tuple[nn.Module, dict]:
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if meta.get("kind") != kind:
        raise ValueError(f"{path}: not a {kind} weights file (its metadata says kind={meta.get('kind')!r})")
    config = json.loads(meta["config"])
    if kind == "demo-classifier":
        model = DigitClassifier(config["width"], config["feature_dim"])
    else:
        model = ContrastiveModel(config["width"], config["embed_dim"], config["token_dim"])
    model.load_state_dict(load_file(str(path)))
    return model.eval(), config


# --- training -----------------------------------------------------------------------------------------------


def _train_images(train_indices) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = digits()
    return torch.from_numpy(images[train_indices])[:, None], torch.from_numpy(labels[train_indices])


def train_classifier(path: str | Path, config: ClassifierConfig = ClassifierConfig(), train_indices=None,
                     log=None) -> Path:
    """Train the digit classifier (on ``train_indices``, by default the fixed 80% split) and save it."""
    start = time.time()
    train_indices = split()[0] if train_indices is None else train_indices
    images, labels = _train_images(train_indices)
    torch.manual_seed(config.seed)
    model = DigitClassifier(config.width, config.feature_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.steps):
        batch = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        x = images[batch] + config.noise_std * torch.randn(images[batch].shape, generator=generator)
        loss = F.cross_entropy(model(x), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    _save(model.eval(), Path(path), "demo-classifier", config)
    if log:
        log(f"demo-classifier trained in {time.time() - start:.1f} s -> {path}")
    return Path(path)


def train_contrastive(path: str | Path, tokenizer, config: ContrastiveConfig = ContrastiveConfig(),
                      train_indices=None, log=None) -> Path:
    """Train a contrastive image-text model with InfoNCE over the ten prompts at a fixed temperature.

    Each digit's positive is its class prompt and its negatives are the nine other prompts (the batch's
    distinct captions): the image-to-text half of CLIP's loss without duplicate-caption false negatives.
    """
    start = time.time()
    train_indices = split()[0] if train_indices is None else train_indices
    images, labels = _train_images(train_indices)
    tokens = tokenizer(list(PROMPTS), padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    torch.manual_seed(config.seed)
    model = ContrastiveModel(config.width, config.embed_dim, config.token_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.steps):
        batch = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        x = images[batch] + config.noise_std * torch.randn(images[batch].shape, generator=generator)
        logits = model.image_embedding(x) @ model.text_embedding(tokens.input_ids, tokens.attention_mask).T
        loss = F.cross_entropy(logits / config.temperature, labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _save(model.eval(), Path(path), "demo-contrastive", config)
    if log:
        log(f"demo-contrastive (seed {config.seed}, width {config.width}) trained in {time.time() - start:.1f} s "
            f"-> {path}")
    return Path(path)


# --- extractors ---------------------------------------------------------------------------------------------


def _check_images(images: np.ndarray) -> torch.Tensor:
    x = uint8_to_unit(images)
    if x.shape[-2:] != (8, 8):
        raise ValueError(f"demo extractors take 8x8 images (the demo protocol's metric resolution), got "
                         f"{tuple(x.shape[-2:])}: pass them through demo_protocol().to_metric_images first")
    return x


class DemoClassifierExtractor(FeatureExtractor):
    """``FeatureExtractor``: 128-d penultimate features of the digit classifier."""

    def __init__(self, weights: str | Path, device: str = "cpu", batch_size: int = 2048):
        self.model, self.config = _load(weights, "demo-classifier")
        self.model.to(device)
        self.device, self.batch_size = device, batch_size
        self.weights = Path(weights)
        self.id = f"demo-classifier:gray8:fc{self.config['feature_dim']}:sha256={file_sha256(weights)}"

    @torch.no_grad()
    def image_features(self, images: np.ndarray) -> np.ndarray:
        x = _gray(_check_images(images))
        out = [self.model.features(x[i:i + self.batch_size].to(self.device)).cpu()
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.config["feature_dim"]),
                                                                              np.float32)

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class labels (int64) of uint8 NHWC images."""
        x = _gray(_check_images(images)).to(self.device)
        return self.model(x).argmax(-1).cpu().numpy()


class DemoContrastiveExtractor(TextImageExtractor):
    """``TextImageExtractor`` with a differentiable path: ``encode_image`` / ``encode_text`` (unit vectors)."""

    def __init__(self, weights: str | Path, tokenizer=None, device: str = "cpu", name: str = "demo-contrastive",
                 batch_size: int = 2048):
        self.model, self.config = _load(weights, "demo-contrastive")
        self.model.to(device).requires_grad_(False)
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer_near(Path(weights))
        self.device, self.batch_size = device, batch_size
        self.weights = Path(weights)
        self.id = f"{name}:gray8:d{self.config['embed_dim']}:sha256={file_sha256(weights)}"

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Float NCHW images in [0, 1] (1 or 3 channels, 8x8) -> (N, D) unit vectors; gradients flow to x."""
        return self.model.image_embedding(_gray(x.to(self.device)))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True,
                                return_tensors="pt")
        return self.model.text_embedding(tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device))

    @torch.no_grad()
    def image_features(self, images: np.ndarray) -> np.ndarray:
        x = _check_images(images)
        out = [self.encode_image(x[i:i + self.batch_size]).cpu() for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.config["embed_dim"]),
                                                                              np.float32)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = [self.encode_text(texts[i:i + self.batch_size]).cpu() for i in range(0, len(texts), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.config["embed_dim"]),
                                                                              np.float32)


def _tokenizer_near(weights: Path):
    """The CLIP tokenizer of the world the weights live in (``<root>/tokenizer``), else a freshly written one."""
    from transformers import CLIPTokenizer

    folder = weights.parent / "tokenizer"
    if (folder / "vocab.json").exists():
        return CLIPTokenizer.from_pretrained(folder)
    import tempfile

    from bench.tokenizer import write_clip_tokenizer

    return write_clip_tokenizer(tempfile.mkdtemp(prefix="demo-tokenizer-"))
