"""A text encoder built in code, for models that ship without one (random-weight presets).

It maps words to rows of a fixed random table (seeded), padded to a fixed length with zeros, the
way Wan pads its T5 embeddings. It carries no meaning; it only gives different prompts different,
deterministic embeddings of the right shape.
"""

from __future__ import annotations

import re
import zlib

import torch

__all__ = ["HashTextEncoder", "TINY_WORDS", "tiny_word_tokenizer"]


class HashTextEncoder:
    """Deterministic word-hash embeddings of shape ``(max_length, dim)``."""

    def __init__(self, dim: int, max_length: int, vocab: int = 4096, seed: int = 0):
        self.dim = dim
        self.max_length = max_length
        self.vocab = vocab
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, dim, generator=g)

    def tokenize(self, text: str) -> list[int]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return [zlib.crc32(w.encode()) % self.vocab for w in words][: self.max_length]

    def __call__(self, text: str) -> torch.Tensor:
        ids = self.tokenize(text)
        out = torch.zeros(self.max_length, self.dim)
        if ids:
            out[: len(ids)] = self.table[torch.tensor(ids)]
        return out


TINY_WORDS = [
    "<pad>",
    "</s>",
    "<unk>",
    "a",
    "red",
    "green",
    "blue",
    "circle",
    "square",
    "moving",
    "left",
    "right",
]


def tiny_word_tokenizer(words: list[str] | None = None, bos: str | None = None):
    """A word-level fast tokenizer built in code (no files, no hub), for tiny test pipelines.

    Word 0 pads, word 1 ends a sequence, word 2 is unknown; ``bos`` (a word of the list) starts one.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(words or TINY_WORDS)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[2]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"pad_token": words[0], "eos_token": words[1], "unk_token": words[2]}
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {words[1]}", special_tokens=[(bos, words.index(bos)), (words[1], 1)]
        )
        special["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)
