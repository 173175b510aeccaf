"""The real CLIP BPE tokenizer, written offline from the vocabulary that open_clip ships.

Stable Diffusion's tokenizer is transformers' ``CLIPTokenizer`` over OpenAI's BPE
(``bpe_simple_vocab_16e6.txt.gz``). open_clip carries that file, so a faithful tokenizer can be
built without the Hub: same byte-level alphabet, same merges, same 49,408 ids. SD 2.x pads with
``"!"`` (id 0); SD 1.x pads with the end token. We follow SD 2.x.
"""

import gzip
import json
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer


def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    # The same construction as open_clip.tokenizer.SimpleTokenizer, with transformers' special tokens.
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(out_dir: str | Path, pad_token: str = "!") -> CLIPTokenizer:
    """Write a ``CLIPTokenizer`` folder (vocab.json, merges.txt, config) and return it loaded; ``pad_token`` is SD
    2.x's ``"!"`` by default, ``"<|endoftext|>"`` for SD 1.x."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), pad_token=pad_token, model_max_length=77
    )
    tokenizer.save_pretrained(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir)
