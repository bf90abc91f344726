"""Image-to-video in tiles: the conditioning image checked, encoded once per stage, stored on the
canvas, and handed to every tile as the crop of its own (shifted) window.

A stage's condition is the backend's ``encode_image`` of the image resized to the stage's valid
pixel size (the sketch's size for the sketch, the output size for refinement) and padded to its
canvas like the upscaled sketch. Its canvas part (``ImageCondition.latents``) is stored like a
stage's ``start``: one chunk per tile of the first step's grid, so a tile of any later step reads
its window rolled exactly like its latents. Its global part (``ImageCondition.embeds``) is stored
whole and every tile gets all of it. Both carry checksums (``storage.checksums``), which readers
check and resume checks (``supergen_dask.integrity``: a damaged condition is encoded again). A
condition that fixes cells (``ImageCondition.frozen``: Wan 2.2 TI2V's first frame) is applied to
each stepped tile as well. What the condition *is* (mask channels, first-frame latents, CLIP
tokens) is the family's business, in ``pipelines``; nothing here names a family.

Some families condition the prompt's encoding too (HunyuanVideo I2V's Llava sees the image;
guidance-distilled models pack their embedded guidance scale with the prompt): ``prompt_options``
is what the prompt task hands ``encode_prompt`` besides the prompts, as the model's info asks.

Pure functions (``check_image``, ``file_digest``, ``read_image``, ``stage_image``, ``crop_tile``,
``blank_condition``) are separate from the task (``encode_image``) and the tile tasks' reader
(``tile_image``).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from pipelines import ImageCondition, ModelInfo
from supergen_dask.upscale import pad_index

__all__ = [
    "ImageFileError",
    "check_image",
    "file_digest",
    "read_image",
    "stage_image",
    "crop_tile",
    "blank_condition",
    "prompt_options",
    "encode_image",
    "tile_image",
]


class ImageFileError(ValueError):
    """A conditioning image that cannot be used; the message is one line naming the file."""


def check_image(path) -> str:
    """The absolute path of a readable, decodable image file (workers may run elsewhere than the
    current directory). Raises ``ImageFileError``."""
    if not isinstance(path, str | Path) or not str(path):
        raise ImageFileError(f"must be the path of an image file, got {path!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageFileError(f"{str(path)!r}: no such file")
    if p.is_dir():
        raise ImageFileError(f"{str(path)!r}: is a directory, not an image file")
    read_image(p)
    return str(p.resolve())


def file_digest(path) -> str:
    """sha256 of the file's bytes: a render's image counts by its content, not its path."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise ImageFileError(f"{str(path)!r}: cannot read ({exc.strerror or exc})") from None


def read_image(path) -> np.ndarray:
    """The image as ``(H, W, 3)`` uint8 RGB (alpha dropped, grey expanded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise ImageFileError(f"{str(path)!r}: not an image file PIL can decode") from None
    except OSError as exc:
        msg = " ".join(str(exc.strerror or exc).split())
        raise ImageFileError(f"{str(path)!r}: cannot decode the image ({msg})") from None
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"{str(path)!r}: {' '.join(str(exc).split())}") from None
    return np.asarray(rgb, dtype=np.uint8)


def stage_image(pixels: np.ndarray, out_hw: tuple[int, int], canvas_hw: tuple[int, int]) -> torch.Tensor:
    """``pixels`` resized to ``out_hw`` as diffusers' ``VideoProcessor.preprocess`` resizes (PIL,
    Lanczos; unchanged at the same size), scaled to ``[-1, 1]`` as it scales, and padded at the
    bottom/right to ``canvas_hw`` like the upscaled sketch (reflect, or replicate when the
    padding is as large as the image). Returns ``(1, 3, CH, CW)`` float32."""
    from PIL import Image

    (H, W), (CH, CW) = out_hw, canvas_hw
    im = Image.fromarray(pixels)
    if im.size != (W, H):
        im = im.resize((W, H), resample=Image.LANCZOS)
    x = np.asarray(im, dtype=np.float32) / 255.0
    mode = "reflect" if CH - H < H and CW - W < W else "replicate"
    x = x[pad_index(CH, H, mode)][:, pad_index(CW, W, mode)]
    return torch.from_numpy(2.0 * x - 1.0).permute(2, 0, 1)[None].contiguous()


def crop_tile(latents: torch.Tensor, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """The stored chunk ``(F, C, h, w)`` of a canvas condition ``(1, C, F, H, W)`` for the tile
    whose window starts at ``(y0, x0)``, wrapping the canvas as a tile's latents wrap."""
    tile = ImageCondition(latents).crop(y0, x0, h, w).latents
    return np.ascontiguousarray(tile[0].permute(1, 0, 2, 3).float().cpu().numpy())


def blank_condition(info: ModelInfo, frames: int, h: int, w: int, device, batch: int = 1) -> ImageCondition:
    """A zero condition of the right shape (a worker's warm-up forward)."""
    latents = torch.zeros(batch, info.image_channels, frames, h, w, device=device)
    embeds = None
    if info.image_tokens:
        embeds = torch.zeros(batch, info.image_tokens, info.image_embed_dim, device=device)
    return ImageCondition(latents, embeds, info.image_frozen)


def prompt_options(plan) -> dict:
    """The keywords ``VideoBackend.encode_prompt`` takes for this render besides the prompts: the
    image's pixels when the model's prompt encoder sees the image (checked against the planned
    image's digest), the embedded guidance scale when the model has one."""
    options: dict = {}
    if plan.model.prompt_sees_image and plan.spec.image is not None:
        path = plan.spec.image
        if file_digest(path) != plan.image_sha256:
            raise ImageFileError(f"{path!r}: the image changed since this render was planned")
        options["image"] = read_image(path)
    if plan.spec.embedded_guidance_scale is not None:
        options["embedded_guidance_scale"] = plan.spec.embedded_guidance_scale
    return options


# -- tasks (thin wrappers over the store) ---------------------------------------------------------
def encode_image(plan, url: str, instance: str, stage_name: str, *deps) -> dict:
    """Encode a stage's image condition once and write it to the store (tile chunks of the stage's
    first grid, and the global embeddings), then mark ``image_<stage>`` done."""
    from supergen_dask import tasks, worker_models

    t0 = time.perf_counter()
    task = f"image_{stage_name}"
    store = tasks._store(url, instance)
    if store.task_is_done(task):
        return tasks._receipt("image", task, t0, skipped=True)
    path = plan.spec.image
    if file_digest(path) != plan.image_sha256:
        raise ImageFileError(f"{path!r}: the image changed since this render was planned")
    backend = worker_models.get_backend(plan.spec.model, plan.spec.dtype)
    st = plan.stage(stage_name)
    g, f, info = st.grid, plan.model.spatial_factor, plan.model
    image = stage_image(read_image(path), (g.valid_h * f, g.valid_w * f), (g.canvas_h * f, g.canvas_w * f))
    cond = backend.encode_image(image.to(backend.device), plan.pixel_frames)
    want = (1, info.image_channels, st.latent_frames, g.canvas_h, g.canvas_w)
    if cond.latents is None or tuple(cond.latents.shape) != want:
        got = None if cond.latents is None else tuple(cond.latents.shape)
        raise RuntimeError(f"{info.name}: encode_image gave a condition of shape {got}, expected {want}")
    for key in st.keys(st.first):
        y0, x0 = st.origin(key)
        store.write_tile(
            stage_name, "image", None, key.row, key.col, crop_tile(cond.latents, y0, x0, g.tile_h, g.tile_w)
        )
    if info.image_tokens:
        want = (1, info.image_tokens, info.image_embed_dim)
        if cond.embeds is None or tuple(cond.embeds.shape) != want:
            got = None if cond.embeds is None else tuple(cond.embeds.shape)
            raise RuntimeError(f"{info.name}: encode_image gave embeddings of shape {got}, expected {want}")
        store.write_image_embeds(stage_name, cond.embeds[0].float().cpu().numpy())
    store.mark_task_done(task)
    return tasks._receipt("image", task, t0)


def tile_image(store, plan, key, device, batch: int = 1, origin=None) -> ImageCondition | None:
    """The image condition of tile ``key`` (``None`` for a text-to-video render), for a batch of
    ``batch``: its window of the stage's stored condition, read at the step's shifted origin, or
    at ``origin`` (the seam pass: a window of the last refinement step's condition elsewhere).
    The chunks read are checked against the checksums the image task recorded
    (``ChunkCorruptError`` if one changed on disk; resume re-encodes the stage's condition)."""
    if plan.spec.image is None:
        return None
    st = plan.stage(key.stage)
    g = st.grid
    y0, x0 = st.origin(key) if origin is None else origin
    # the tile's own chunk (or every chunk under the window, when the shifts have moved past it)
    own = (key.row, key.col)
    window = store.read_region(key.stage, "image", None, y0, x0, g.tile_h, g.tile_w, verify=own)
    embeds = None
    if plan.model.image_tokens:
        embeds = store.read_image_embeds(key.stage)
        if not np.isfinite(embeds).all():
            raise RuntimeError(f"{key.stage}/image_embeds is missing: redo task image_{key.stage}")
        embeds = torch.from_numpy(np.asarray(embeds, dtype=np.float32))[None].to(device)
    if not np.isfinite(window).all():
        raise RuntimeError(f"{key.stage}/image window {(y0, x0)} is missing: redo task image_{key.stage}")
    latents = (
        torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)).to(device).permute(1, 0, 2, 3)[None]
    )
    return ImageCondition(latents, embeds, plan.model.image_frozen).repeat(batch)
