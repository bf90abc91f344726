"""A text encoder built in code, for models that ship without one (random-weight presets).

It maps words to rows of a fixed random table (seeded), padded to a fixed length with zeros, the
way Wan pads its T5 embeddings. It carries no meaning; it only gives different prompts different,
deterministic embeddings of the right shape.
"""

from __future__ import annotations

import re
import zlib

import torch

__all__ = ["HashTextEncoder"]


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
