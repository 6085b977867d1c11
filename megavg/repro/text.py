"""The world's text encoder: a small umT5 with a word-level tokenizer over the world's vocabulary.

    build_text_encoder("runs/repro/text", dim=32, seed=0)   # then --text-encoder runs/repro/text

A fixed, deterministic stand-in for umT5-XXL: a randomly initialised (from ``seed``) one-layer
``UMT5EncoderModel`` saved as a transformers folder, so pre-computation and ``generate`` load it through
the same :class:`megavg.infer.text.TextEncoder` path (and the same zero padding) as Wan's real encoder.
Each caption word has its own token; umT5's tokenizer appends ``</s>``, so the empty caption (the null
condition) encodes to that one row.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megavg.repro.world import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES

SPECIALS = ["<pad>", "</s>", "<unk>"]
FILLER = ["a", "moves", "on"]


def vocabulary() -> list[str]:
    """Token strings, specials first (pad 0, eos 1, unk 2)."""
    return SPECIALS + FILLER + list(SHAPES) + list(COLOURS) + list(DIRECTIONS) + list(BACKGROUNDS)


def build_text_encoder(folder: str | Path, dim: int = 32, seed: int = 0) -> Path:
    """Write the tokenizer and a seeded random one-layer umT5 encoder (width ``dim``) to ``folder``."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    config = transformers.UMT5Config(
        vocab_size=len(words), d_model=dim, d_kv=dim // 4, num_heads=4, d_ff=2 * dim, num_layers=1
    )
    torch.manual_seed(seed)
    model = transformers.UMT5EncoderModel(config)
    folder = Path(folder)
    fast.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
