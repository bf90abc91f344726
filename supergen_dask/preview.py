"""Previews: decoded pictures and clips of any stored step, and the sketch as a clip.

``supergen preview DIR --step N`` decodes one stored step of a render (the noisy latents as they
stand after that step, over the whole canvas, on this machine) to a PNG (one frame, or a contact
sheet of several) or an mp4. The render's own ``sketch.mp4`` is written by a task as soon as
stage 1 ends (``tasks.sketch_preview``), so the composition can be checked before stage 2.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from storage import Location

__all__ = [
    "contact_sheet",
    "decode_latents",
    "decode_step",
    "stored_steps",
    "write_clip",
    "write_png",
    "write_preview",
]


def contact_sheet(frames: np.ndarray, count: int = 4, gap: int = 2) -> np.ndarray:
    """``count`` evenly spaced frames of ``(F, H, W, 3)`` uint8, side by side (one row)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (frames, height, width, 3) pixels, got shape {frames.shape}")
    n = max(1, min(count, frames.shape[0]))
    picks = np.linspace(0, frames.shape[0] - 1, n).round().astype(int)
    _, h, w, _ = frames.shape
    sheet = np.full((h, n * w + (n - 1) * gap, 3), 255, dtype=np.uint8)
    for i, f in enumerate(picks):
        sheet[:, i * (w + gap) : i * (w + gap) + w] = frames[f]
    return sheet


def write_png(image: np.ndarray, path: str | Path | Location) -> Path | Location:
    """Write an ``(H, W, 3)`` uint8 picture as PNG (through a temporary name, then renamed; on
    object storage as one object). ``path``: a local path, an fsspec URL or a ``Location``."""
    from PIL import Image

    from supergen_dask.config import location

    target = location(path)
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    local = target.local_path
    if local is None:
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        target.write_bytes(buf.getvalue())
        return target
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.partial")
    picture.save(tmp, format="PNG")
    tmp.replace(local)
    return local


def write_clip(frames: np.ndarray, path: str | Path | Location, fps: int | float):
    """Encode ``(F, H, W, 3)`` uint8 frames as an H.264 mp4 (written whole or not at all; encoded
    locally and uploaded when ``path`` is on another filesystem)."""
    from storage import encode_video
    from supergen_dask.config import location

    target = location(path)
    with target.local_target() as local:
        info = encode_video(iter(frames), local, fps=fps, threads=1)
    return info


def decode_latents(backend, latents: np.ndarray) -> np.ndarray:
    """VAE-decode stored ``(F, C, H, W)`` latents with a model backend -> ``(F', H', W', 3)`` uint8."""
    import torch

    z = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)).permute(1, 0, 2, 3)[None]
    with torch.no_grad():
        video = backend.vae_decode(z.to(backend.device))
    v = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).cpu().numpy()


def stored_steps(render_dir: str | Path | Location, stage: str = "refine") -> list[int]:
    """The steps of ``stage`` whose every tile is finished (so their latents can be decoded)."""
    from storage import RenderStore
    from supergen_dask.config import location
    from supergen_dask.graph import STORE_NAME

    store = RenderStore.open(location(render_dir) / STORE_NAME, mode="r")
    st = store.stage(stage)
    done = store.done_mask(stage)
    return [int(s) for i, s in enumerate(st.steps) if done[i].all()]


def decode_step(render_dir: str | Path | Location, step: int, stage: str = "refine") -> np.ndarray:
    """Decoded pixels ``(F, H, W, 3)`` uint8 of a finished step of a render (whole canvas,
    cropped to the output, decoded in this process with the render's model)."""
    from storage import open_render
    from supergen_dask import worker_models
    from supergen_dask.config import location
    from supergen_dask.graph import STORE_NAME, load_plan

    render_dir = location(render_dir)
    if stage not in ("refine", "sketch"):
        raise ValueError(f"stage must be 'refine' or 'sketch', got {stage!r}")
    plan = load_plan(render_dir)
    if stage == "sketch" and plan.sketch is None:
        raise ValueError(f"{render_dir} has no {stage} stage")
    steps = stored_steps(render_dir, stage)
    if step not in steps:
        have = f"{steps[0]}..{steps[-1]}" if steps else "none yet"
        raise ValueError(
            f"step {step} of the {stage} stage is not finished in {render_dir}; finished: {have}"
        )
    ds = open_render(render_dir / STORE_NAME, stage=stage)
    latents = ds.latents.sel(step=step).values
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    return decode_latents(backend, latents)


def write_preview(
    render_dir: str | Path | Location,
    step: int,
    out: str | Path | Location | None = None,
    *,
    stage: str = "refine",
    frame: int | None = None,
    count: int = 4,
) -> Path | Location:
    """Decode a stored step and write it: ``.mp4`` -> a clip of every frame; ``.png`` -> frame
    ``frame``, or a contact sheet of ``count`` frames when ``frame`` is None. ``out`` defaults to
    ``<render_dir>/preview-<stage>-<step>.png`` (on the render directory's filesystem)."""
    from supergen_dask.config import location

    render_dir = location(render_dir)
    target = location(out) if out is not None else render_dir / f"preview-{stage}-{step}.png"
    suffix = Path(target.name).suffix.lower()
    if suffix not in (".png", ".mp4"):
        raise ValueError(f"{target}: the preview is written as .png or .mp4")
    pixels = decode_step(render_dir, step, stage)
    out = target.native()
    if suffix == ".mp4":
        from supergen_dask.graph import load_plan

        write_clip(pixels, target, fps=load_plan(render_dir).spec.fps)
        return out
    if frame is not None:
        if not 0 <= frame < pixels.shape[0]:
            raise ValueError(f"frame {frame} out of range: the step decodes to {pixels.shape[0]} frames")
        return write_png(pixels[frame], out)
    return write_png(contact_sheet(pixels, count), out)
