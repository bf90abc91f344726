"""Checksums of the chunks a render writes, so that a chunk changed or lost on disk is never used.

Each writer computes the CRC-32 of the data it writes (the array's own dtype, C order) and records
it beside the data, before the done marker that vouches for both; each reader of a recorded chunk
recomputes it. ``-1`` means "nothing recorded" (a chunk not yet written, or pruned).
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["NOT_RECORDED", "ChunkCorruptError", "crc32"]

NOT_RECORDED = -1


class ChunkCorruptError(OSError):
    """A chunk whose data does not match its recorded checksum, or that cannot be read at all.

    ``where`` names the chunk (array path and step/tile or frames), for reports and repairs.
    """

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"corrupt chunk {where}: {problem}")


def crc32(data: np.ndarray, dtype=None) -> int:
    """CRC-32 of ``data``'s bytes as stored (cast to ``dtype`` when given, C order)."""
    arr = np.ascontiguousarray(data if dtype is None else np.asarray(data, dtype=dtype))
    return zlib.crc32(arr.reshape(-1).view(np.uint8))
