"""Deleting the chunks of a step that retention does not keep (``StageLayout.freed``).

The caller decides *when* (only once no unfinished task can read them: the renderer's
``supergen_dask.retention``); this module only knows *where* a step's chunks live. Array metadata
and checksums stay, so a freed step reads as NaN and its records (stats, done markers) remain.
"""

from __future__ import annotations

from zarr.core.sync import sync

from storage.store import RenderStore

__all__ = ["delete_step_chunks"]


def delete_step_chunks(store: RenderStore, stage: str, step: int, names: tuple[str, ...]) -> int:
    """Delete every chunk of ``step`` of the arrays ``names`` of ``stage`` (idempotent: chunks
    already gone are skipped). Returns the number of arrays touched."""
    i = store.stage(stage).step_index(step)
    backend = store.root.store_path.store
    base = store.root.store_path.path
    for name in names:
        prefix = f"{stage}/{name}/c/{i}"  # the step axis is first and chunked by one
        sync(backend.delete_dir(f"{base}/{prefix}" if base else prefix))
    return len(names)
