"""The one small protocol every model family implements.

A backend wraps the unchanged pretrained components of one model family (transformer, VAE, text
encoder, scheduler config) and exposes what tiled rendering needs: encode a prompt, VAE encode and
decode, predict the noise (or velocity) of a latent tile at a timestep, and make the scheduler.
Components load lazily: a denoise worker never touches the text encoder or the VAE.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FamilyDefaults",
    "ImageCondition",
    "ModelInfo",
    "VideoBackend",
    "LazyBackend",
    "OFFLOAD_MODES",
    "check_offload",
    "place",
    "offload_module",
    "is_offloaded",
    "ModelDirectoryError",
    "check_directory",
    "directory_revision",
    "read_overrides",
    "pack_text",
    "unpack_text",
    "cast_weights",
    "seeded",
    "no_weight_init",
    "drawn_on_device",
    "random_weights",
    "random_vae",
]


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, known without loading any weights.

    Sizes are in pixels unless named ``latent_*``. ``spatial_factor`` is the VAE's spatial
    compression: output sizes must be multiples of it. Latent tiles are multiples of
    ``patch_spatial`` (the transformer's patch). ``default_refine_fraction`` is the share of the
    schedule refined with tiles when a spec leaves k open; ``revision`` fingerprints the weights, so
    a render made with other weights is never resumed with these. ``prompt_grammar`` names the
    closed prompt language a model was trained on, when its prompts can be checked against what
    a render shows (``"toy-shapes"``: ``pipelines.toy``'s grammar, whose object the quality
    record counts); empty for models of open, natural-language prompts.
    """

    name: str
    family: str
    native_height: int
    native_width: int
    native_frames: int
    spatial_factor: int
    temporal_factor: int
    patch_spatial: int
    latent_channels: int
    fps: int
    scheduler_class: str
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    default_steps: int = 50
    default_guidance: float = 5.0
    supports_image: bool = False
    text_embed_dim: int = 0
    text_tokens: int = 512
    default_refine_fraction: float = 0.9
    revision: str = ""
    description: str = ""
    prompt_grammar: str = ""
    latent_frame_multiple: int = 1
    latent_pad_frames: int = 0
    # the residual cache's default tau (``supergen_dask.cache``); residual magnitudes differ
    # between families, so thresholds do not transfer
    cache_threshold: float = 0.2
    # whether a render uses the cache when its spec does not say: only where a sweep on this
    # model measured that its threshold keeps the output (``scripts/cache_sweep.py``)
    cache_enabled: bool = False
    # image-to-video (``supports_image``): the shape of ``encode_image``'s condition, known without
    # weights so a render's store can hold it: ``image_channels`` latent-canvas channels (0: none),
    # ``image_tokens`` x ``image_embed_dim`` global embeddings (0: none)
    image_channels: int = 0
    image_tokens: int = 0
    image_embed_dim: int = 0
    image_frozen: bool = False  # the condition replaces cells (``ImageCondition.frozen``)
    # the prompt's encoder sees the image too (HunyuanVideo I2V's Llava): ``encode_prompt`` then
    # takes ``image=``
    prompt_sees_image: bool = False
    # guidance-distilled models (HunyuanVideo): the guidance scale embedded into the denoiser when a
    # spec leaves ``embedded_guidance_scale`` open; ``None``: the model takes none
    embedded_guidance: float | None = None
    # two-expert models (Wan 2.2 A14B): the timestep below which the second expert denoises and
    # ``guidance_scale_2`` applies (diffusers' rule); 0: one expert, one guidance scale
    guidance_boundary: float = 0.0

    def frames_ok(self, num_frames: int) -> bool:
        """Whether the VAE can take ``num_frames`` (causal video VAEs want 1 + k * factor) and the
        transformer its latent frames (a temporal patch wants a multiple of its size, after the
        ``latent_pad_frames`` throw-away frames some pipelines put in front)."""
        return (
            num_frames >= 1
            and (num_frames - 1) % self.temporal_factor == 0
            and self.latent_frames(num_frames) % self.latent_frame_multiple == 0
        )

    def allowed_frames_hint(self) -> str:
        f, m = self.temporal_factor, self.latent_frame_multiple
        if m == 1:
            return f"1 + {f}*k frames (e.g. {1 + f}, {1 + 2 * f}, {1 + 4 * f}, {1 + 20 * f})"
        ok = [n for n in range(1, 1 + 60 * f, f) if self.frames_ok(n)]
        examples = ", ".join(str(n) for n in ok[:3] + ok[-1:])
        return (
            f"1 + {f}*k frames whose latent frames (plus {self.latent_pad_frames} padding) are a "
            f"multiple of {m} (e.g. {examples})"
        )

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of the canvas, padding included."""
        return (num_frames - 1) // self.temporal_factor + 1 + self.latent_pad_frames

    def pixel_frames(self, latent_frames: int) -> int:
        return (latent_frames - self.latent_pad_frames - 1) * self.temporal_factor + 1

    @property
    def native_latent_hw(self) -> tuple[int, int]:
        return self.native_height // self.spatial_factor, self.native_width // self.spatial_factor

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageCondition:
    """How a family conditions on an image, in the two parts a tiled renderer treats differently.

    ``latents`` ``(B, Ci, F, h, w)`` lie on the latent canvas cell for cell (Wan's mask + encoded
    first frame, CogVideoX's encoded first frame): a tile gets the crop of its own window, wrapped
    like its latents. ``embeds`` ``(B, L, D)`` are global (Wan 2.1's CLIP image tokens): every tile
    gets all of them. Either may be ``None``.

    ``frozen``: the condition *replaces* latent cells instead of riding along (Wan 2.2 TI2V's
    first frame): channel 0 of ``latents`` is 1 on the frozen cells, the other channels their
    values. ``freeze`` applies it; the renderer applies it to every stepped tile, so the stored
    latents are always the video the pipeline would decode.
    """

    latents: torch.Tensor | None = None
    embeds: torch.Tensor | None = None
    frozen: bool = False

    def freeze(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the frozen cells set to the condition's values (``x`` itself if none)."""
        if not self.frozen or self.latents is None:
            return x
        c = self.latents[:1].to(x.device, x.dtype)
        keep = c[:, :1]
        return keep * c[:, 1:] + (1 - keep) * x

    def crop(self, y0: int, x0: int, h: int, w: int) -> ImageCondition:
        """The condition of the tile whose window starts at ``(y0, x0)`` (wrapping the canvas)."""
        if self.latents is None:
            return self
        H, W = self.latents.shape[-2:]
        ys = [(y0 + i) % H for i in range(h)]
        xs = [(x0 + i) % W for i in range(w)]
        return ImageCondition(self.latents[..., ys, :][..., xs], self.embeds, self.frozen)

    def repeat(self, n: int) -> ImageCondition:
        """The same condition for a batch of ``n`` (e.g. both classifier-free guidance branches)."""
        return ImageCondition(
            None if self.latents is None else self.latents.expand(n, *self.latents.shape[1:]),
            None if self.embeds is None else self.embeds.expand(n, *self.embeds.shape[1:]),
            self.frozen,
        )


class VideoBackend:
    """Base class of the model backends. Subclasses load components lazily.

    Tensor layouts follow diffusers: latents ``(B, C, F, h, w)``, pixel video ``(B, 3, F, H, W)``
    in ``[-1, 1]``. Latents handed to and returned by the VAE methods are *normalised* (the space
    the transformer works in).
    """

    info: ModelInfo
    # how the components' weights reach ``device`` (``OFFLOAD_MODES``; ``load_backend`` sets it):
    # a runtime choice that never changes what a component computes
    offload: str = "none"
    # the denoiser's attention backend and torch.compile (``pipelines.acceleration``; set by
    # ``load_backend``), applied to ``denoisers`` as they load
    attention: str | None = None
    compile: bool | str = False

    def __init__(
        self, info: ModelInfo, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ):
        self.info = info
        self.device = torch.device(device)
        self.dtype = dtype

    def __init_subclass__(cls, **kwargs):
        # every family's model calls give what they give with no load under way elsewhere in the
        # process (``unaffected_by_loads``)
        super().__init_subclass__(**kwargs)
        for name in MODEL_CALLS:
            if name in cls.__dict__:
                setattr(cls, name, unaffected_by_loads(cls.__dict__[name]))

    # -- text ---------------------------------------------------------------------------------
    def encode_prompt(
        self, prompt: str, negative_prompt: str = "", **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(prompt_embeds, negative_prompt_embeds)``, each ``(L, D)`` float32 on CPU.

        ``options`` are what a family's conditioning takes besides the prompts, passed only to
        models whose ``ModelInfo`` asks for them: ``image`` (the conditioning image, ``(H, W, 3)``
        uint8, when ``prompt_sees_image``) and ``embedded_guidance_scale`` (when the model has
        ``embedded_guidance``; left out: that default).
        """
        raise NotImplementedError

    def park(self, name: str) -> bool:
        """Move component ``name``'s weights off the device until its next use; False when this
        backend cannot (``LazyBackend.park``)."""
        return False

    # -- transformer --------------------------------------------------------------------------
    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        offset: tuple[int, int] = (0, 0),
        image: ImageCondition | None = None,
    ) -> torch.Tensor:
        """Model output for a batch of latent tiles at one timestep.

        ``latents`` is ``(B, C, F, h, w)``, ``timestep`` ``(B,)``, ``embeds`` ``(B, L, D)``:
        stacked outputs of ``encode_prompt``, which the renderer stores and hands back without
        looking inside, so a family that needs more than token embeddings (an attention mask, a
        pooled vector) packs them into that one tensor (``pack_text``), its shape being
        ``(ModelInfo.text_tokens, ModelInfo.text_embed_dim)``.
        ``offset`` is the tile's top-left position on the canvas in latent cells (not always a
        whole patch). Whether it matters is a property of the family, established by a test per
        family: rotary positions seen only by self-attention are relative and make it irrelevant
        (Wan, LTX); rotary positions on video tokens attending jointly with unrotated text tokens
        (CogVideoX, HunyuanVideo) or absolute embeddings make the output depend on it, and the
        backend starts its positions at ``offset``.
        ``image`` is the tile's part of ``encode_image``'s condition (image-to-video models only).
        """
        raise NotImplementedError

    def load_transformer(self) -> None:
        """Make sure the denoiser is resident (tasks call this before timing a forward)."""

    # -- image conditioning (image-to-video models; ``info.supports_image``) ---------------------
    def encode_image(self, image: torch.Tensor, num_frames: int) -> ImageCondition:
        """The condition of an image-to-video model for ``image`` ``(1, 3, H, W)`` in ``[-1, 1]``.

        ``H, W`` are the pixel size of the latent canvas it conditions (the native size for a
        sketch; the padded high-resolution canvas for tiles, the image resized and padded like the
        upscaled sketch), ``num_frames`` the video's pixel frames. ``predict`` then takes
        ``image=condition.crop(*offset, h, w).repeat(B)`` for a tile.
        """
        raise NotImplementedError(f"{self.info.name} is a text-to-video model and takes no image")

    # -- VAE ----------------------------------------------------------------------------------
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- scheduler ----------------------------------------------------------------------------
    def make_scheduler(self):
        """A fresh diffusers scheduler for this model (tasks never share a live one)."""
        from pipelines.schedulers import make_scheduler

        return make_scheduler(self.info.scheduler_class, self.info.scheduler_config)


# -- per-family defaults --------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilyDefaults:
    """What a model family is and how it renders by default: the one place per family.

    ``pipelines`` are the ``_class_name`` values of ``model_index.json`` this family loads;
    ``components`` the subfolders a directory must hold. Sizes, frames, steps and guidance are what
    a render uses when the spec leaves them open (a directory's ``supergen.json`` may override
    them). ``guidance_note`` names the family's own guidance options beyond ``guidance_scale``.
    """

    family: str
    pipelines: tuple[str, ...]
    components: tuple[str, ...]
    native_height: int
    native_width: int
    native_frames: int
    fps: int
    default_steps: int
    default_guidance: float
    default_refine_fraction: float = 0.9
    temporal_factor: int = 4
    latent_frame_multiple: int = 1
    latent_pad_frames: int = 0
    text_tokens: int = 512
    guidance_note: str = ""
    description: str = ""
    cache_threshold: float = 0.2
    cache_enabled: bool = False

    def frame_rule(self) -> str:
        f, m, pad = self.temporal_factor, self.latent_frame_multiple, self.latent_pad_frames
        rule = f"1+{f}k"
        if m == 1:
            return rule
        if m == 2:  # latent frames k + 1 + pad must be even
            return f"{rule}, k {'odd' if pad % 2 == 0 else 'even'}"
        return f"{rule}, k+{1 + pad} a multiple of {m}"

    def overrides(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The ModelInfo fields of these defaults, each replaced by ``extra`` (supergen.json) if set."""
        keys = (
            "native_height",
            "native_width",
            "native_frames",
            "fps",
            "default_steps",
            "default_guidance",
            "default_refine_fraction",
            "cache_threshold",
            "cache_enabled",
        )
        out: dict[str, Any] = {k: extra.get(k, getattr(self, k)) for k in keys}
        out["text_tokens"] = int(extra.get("max_sequence_length", self.text_tokens))
        out["prompt_grammar"] = str(extra.get("prompt_grammar", ""))
        return out


# -- placing weights: on the device, or offloaded ------------------------------------------------
OFFLOAD_MODES = ("none", "block", "leaf")

# the offload mode of the component a LazyBackend is loading in this thread ("none" outside loads)
_LOADING_OFFLOAD: contextvars.ContextVar[str] = contextvars.ContextVar("offload", default="none")
# the modules ``place`` put on a device while a LazyBackend loads a component (``park`` moves them)
_LOADING_PLACED: contextvars.ContextVar[list | None] = contextvars.ContextVar("placed", default=None)


def check_offload(value: Any, name: str = "offload") -> str:
    """``value`` as one of ``OFFLOAD_MODES`` (``None`` is ``"none"``); ``ValueError`` naming
    ``name`` otherwise."""
    mode = "none" if value is None else value
    if not isinstance(mode, str) or mode not in OFFLOAD_MODES:
        raise ValueError(f"{name} must be one of {', '.join(OFFLOAD_MODES)}; got {value!r}")
    return mode


# One component loads at a time in a process, whatever backend it belongs to. Loading changes
# process-wide state and puts it back when done: transformers' ``from_pretrained`` sets torch's
# default dtype, diffusers' (through accelerate's ``init_empty_weights``) patches
# ``nn.Module.register_parameter``. Two loads in two threads put back each other's settings: on a
# GPU worker a text encoder then loaded with weights left on the meta device, and torch's default
# dtype stayed bfloat16 for the worker's life (its later renders differed from another card's).
# A model call takes the lock only for a moment, to wait for a load under way to end
# (``unaffected_by_loads``); a component already loaded is used without it.
_LOAD_LOCK = threading.RLock()
# Loads begun in this process, and by this thread. Torch's default dtype is one for the process,
# so while another thread loads, what a model call creates without a dtype is created in the
# loader's dtype: on a CPU, a bfloat16 default changed the tiny Wan's prompt embeddings by up to
# 0.004 (a worker encodes the prompt while it loads the transformer for its warm-up).
_LOADS_BEGUN = 0
_OWN_LOADS = threading.local()

# The backend methods that run a model (``VideoBackend.__init_subclass__`` guards each family's)
MODEL_CALLS = ("encode_prompt", "predict", "encode_image", "vae_encode", "vae_decode")


def _loads_by_others() -> int:
    return _LOADS_BEGUN - getattr(_OWN_LOADS, "count", 0)


def _count_load() -> None:
    """Record a load beginning in this thread (called holding ``_LOAD_LOCK``)."""
    global _LOADS_BEGUN
    _LOADS_BEGUN += 1
    _OWN_LOADS.count = getattr(_OWN_LOADS, "count", 0) + 1


def unaffected_by_loads(fn: Callable) -> Callable:
    """``fn`` (a model call: pure, inputs to outputs) run with no other thread's load under way:
    it starts once a load under way has ended, and runs again if another thread began a load
    while it ran (loads are rare: a worker's first tasks, a new model). A load this call makes
    itself (a component's first use) ends before the call goes on, so it counts for nothing."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        while True:
            with _LOAD_LOCK:  # waits for a load under way in another thread
                before = _loads_by_others()
            out = fn(*args, **kwargs)
            if _loads_by_others() == before:
                return out

    return call


@contextlib.contextmanager
def _loading_with(offload: str) -> Iterator[list]:
    """While a component loads: how ``place`` puts it, and the list of the modules it placed."""
    placed: list = []
    token, token_placed = _LOADING_OFFLOAD.set(offload), _LOADING_PLACED.set(placed)
    try:
        yield placed
    finally:
        _LOADING_OFFLOAD.reset(token)
        _LOADING_PLACED.reset(token_placed)


def place(module: torch.nn.Module, device) -> torch.nn.Module:
    """Put a freshly loaded component on ``device``: every family's loaders end with this.

    While a ``LazyBackend`` with offloading on loads the component, the weights stay in CPU memory
    instead and diffusers' group offloading brings them to ``device`` for each forward
    (``offload_module``); a model bigger than the card never has to fit on it whole."""
    mode = _LOADING_OFFLOAD.get()
    if mode == "none":
        placed = _LOADING_PLACED.get()
        if placed is not None:
            placed.append(module)
        return module.to(device)
    return offload_module(module, device, mode)


def offload_module(module: torch.nn.Module, device, mode: str) -> torch.nn.Module:
    """Keep ``module``'s weights in CPU memory and onload them to ``device`` around each forward,
    with diffusers' group offloading (``diffusers.hooks.group_offloading``).

    ``"block"``: one block of the module's block list at a time (``block_level``, one block per
    group), the embeddings and output layers as one more group. A module whose blocks are not its
    direct children (the transformers text encoders: ``encoder.block``, ``text_model.encoder``)
    would be one group, moved whole, so it is offloaded per layer instead. ``"leaf"``: per layer
    (``leaf_level``), the least memory. On CUDA the copies run on a side stream from pinned memory,
    prefetching the next group while the current one computes (``use_stream``; pinned copies of
    every weight stay in host memory). What a forward computes is unchanged: the same weights on
    the same device, only moved in and out.

    Forwards are serialised on the module: the groups are shared state, and a second thread's
    forward would find a group another thread just offloaded.
    """
    check_offload(mode)
    if mode == "none":
        return module.to(device)
    from diffusers.hooks import apply_group_offloading

    onload = torch.device(device)
    module = module.to("cpu")
    blocks = any(isinstance(c, torch.nn.ModuleList | torch.nn.Sequential) for c in module.children())
    options: dict[str, Any] = dict(
        onload_device=onload,
        offload_device=torch.device("cpu"),
        offload_type="block_level" if mode == "block" and blocks else "leaf_level",
        use_stream=onload.type == "cuda",
    )
    if options["offload_type"] == "block_level":
        options["num_blocks_per_group"] = 1  # what diffusers uses with streams in any case
    if hasattr(module, "enable_group_offload"):  # diffusers models: checks the class supports it
        module.enable_group_offload(**options)
    else:
        apply_group_offloading(module, **options)
    lock = threading.RLock()

    def enter(_module, _args):
        lock.acquire()

    def leave(_module, _args, _output):
        lock.release()

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)  # released when the forward raises, too
    return module


def is_offloaded(module: torch.nn.Module) -> bool:
    """Whether diffusers' group offloading manages ``module``'s weights."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return _is_group_offload_enabled(module)


def load_component(cls, root: str, subfolder: str, device, *, tiling: bool = False, **kwargs) -> Any:
    """A component of a diffusers-layout directory: safetensors from local disk only, placed on
    ``device`` (``place``), frozen for inference (``tiling`` for VAEs). ``kwargs`` go to
    ``from_pretrained`` (``torch_dtype=`` for diffusers models, ``dtype=`` for transformers ones)."""
    m = cls.from_pretrained(root, subfolder=subfolder, local_files_only=True, use_safetensors=True, **kwargs)
    m = place(m, device).eval().requires_grad_(False)
    if tiling:
        m.enable_tiling()
    return m


# -- lazily loaded components ---------------------------------------------------------------------
class LazyBackend(VideoBackend):
    """A backend whose components (``transformer``, ``vae``, ``text``) load on first use, once.

    ``text`` loads to a callable ``(prompt, negative) -> (pos, neg)``. With ``offload`` on, every
    component but those in ``resident`` loads offloaded (``place``): the denoisers and the text and
    image encoders. The VAE stays on the device: its weights are small (Wan's: 0.5 GB in float32),
    its memory is its activations, and it keeps feature caches between the calls of one decode.
    """

    resident: frozenset[str] = frozenset({"vae"})
    denoisers: frozenset[str] = frozenset({"transformer", "transformer_2"})

    def __init__(
        self,
        info: ModelInfo,
        loaders: dict[str, Callable[[], Any]],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(info, device, dtype)
        self._loaders = dict(loaders)
        self._components: dict[str, Any] = {}
        # VAEs keep per-call feature caches on the module: one call at a time per process.
        self._vae_lock = threading.Lock()
        # components moved to CPU memory until their next use (``park``), the modules each placed
        # on the device as it loaded, and one lock per component held while it is used or moved
        self._parked: set[str] = set()
        self._placed: dict[str, list] = {}
        self._use_locks = {name: threading.RLock() for name in self._loaders}

    # For families whose output depends on absolute positions: start a tile's positions at its
    # canvas offset (True), or at 0 as a native-size render would (False; ``supergen.json``
    # ``"tile_positions": "tile"``), the choice whose quality at 2K/4K is still to be measured.
    canvas_positions: bool = True

    def position_offset(self, offset: tuple[int, int], patch: int) -> tuple[float, float]:
        """Where a tile's positions start, in patches (fractional when a shift is not a whole patch)."""
        if not self.canvas_positions:
            return 0.0, 0.0
        return offset[0] / patch, offset[1] / patch

    def _get(self, name: str):
        if name in self._parked:
            self._unpark(name)
        comp = self._components.get(name)
        if comp is None:
            # loads take turns in a process (``_LOAD_LOCK``): the text encoder's load may wait
            # for the transformer's, never for its warm-up forward or any other use
            with _LOAD_LOCK:
                comp = self._components.get(name)
                if comp is None:
                    _count_load()
                    mode = "none" if name in self.resident else self.offload
                    with _loading_with(mode) as placed:
                        comp = self._loaders[name]()
                    if name in self.denoisers and (self.attention or self.compile):
                        from pipelines.acceleration import accelerate

                        accelerate(comp, self.attention, self.compile)
                    self._placed[name] = placed
                    self._components[name] = comp
        return comp

    @property
    def transformer(self) -> torch.nn.Module:
        return self._get("transformer")

    @property
    def vae(self) -> torch.nn.Module:
        return self._get("vae")

    def load_transformer(self) -> None:
        self._get("transformer")

    def encode_prompt(
        self, prompt: str, negative_prompt: str = "", **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._use_locks.setdefault("text", threading.RLock()):  # not parked mid-call
            pos, neg = self._get("text")(prompt, negative_prompt, **options)
        return pos.float().cpu(), neg.float().cpu()

    def park(self, name: str) -> bool:
        """Move loaded component ``name``'s weights to CPU memory until its next use, which moves
        them back (a GPU worker's text encoder: used once per render, before any denoising, and
        the largest weights after the denoiser's). False, doing nothing, when the device is the
        CPU, the component is not loaded or its weights are offloaded already."""
        if torch.device(self.device).type == "cpu" or name not in self._components:
            return False
        placed = self._placed.get(name)
        if not placed:  # offloaded (place kept no modules), or placed by other means
            return False
        with self._use_locks.setdefault(name, threading.RLock()):
            for m in placed:
                m.to("cpu")
            self._parked.add(name)
        if torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()
        return True

    def _unpark(self, name: str) -> None:
        with self._use_locks.setdefault(name, threading.RLock()):
            if name in self._parked:
                for m in self._placed.get(name, ()):
                    m.to(self.device)
                self._parked.discard(name)


# -- model directories ----------------------------------------------------------------------------
class ModelDirectoryError(ValueError):
    """A local model directory cannot be used (missing component, pickle-only weights, ...)."""


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_directory(root: str | Path, components: tuple[str, ...]) -> None:
    """Refuse a directory before any weights load: every component in ``components`` must be
    present with its config, and every weight file must be safetensors (pickle files can run code
    when loaded)."""
    root = Path(root)
    index = json.loads((root / "model_index.json").read_text())
    for name in components:
        entry = index.get(name)
        if not entry or entry[0] is None or not (root / name).is_dir():
            raise ModelDirectoryError(
                f"model directory {str(root)!r} has no {name!r} component (needed: {list(components)})"
            )
    for name in sorted(index):
        sub = root / name
        if name.startswith("_") or not sub.is_dir():
            continue
        files = [p for p in sub.rglob("*") if p.is_file()]
        pickles = [p for p in files if p.suffix in _PICKLE_SUFFIXES]
        if pickles and not any(p.suffix == ".safetensors" for p in files):
            raise ModelDirectoryError(
                f"model directory {str(root)!r}: component {name!r} has only pickle weights "
                f"({pickles[0].name}); only safetensors are loaded - convert it with "
                "`save_pretrained(..., safe_serialization=True)`"
            )


def read_overrides(root: str | Path) -> dict[str, Any]:
    """The optional ``supergen.json`` beside ``model_index.json`` (native size, fps, defaults)."""
    path = Path(root) / "supergen.json"
    return json.loads(path.read_text()) if path.exists() else {}


def directory_revision(root: str | Path) -> str:
    """Fingerprint of a model directory: configs by content, weights by size (hashing gigabytes of
    weights would be slow)."""
    root = Path(root)
    revision = hashlib.sha256()
    for part in sorted(root.rglob("*")):
        if part.is_file():
            rel = str(part.relative_to(root))
            revision.update(
                rel.encode()
                + (part.read_bytes() if part.suffix == ".json" else str(part.stat().st_size).encode())
            )
    return revision.hexdigest()[:16]


# -- prompt conditioning in one tensor ------------------------------------------------------------
def pack_text(
    embeds: torch.Tensor, mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None
) -> torch.Tensor:
    """Several text conditionings as the one ``(L', D')`` tensor the renderer stores per prompt.

    The renderer treats prompt embeddings as opaque (it stores them and hands them back to
    ``predict``), so a family that needs more than ``(L, D)`` token embeddings packs the rest in:
    ``mask`` (``L``) becomes an extra last column, ``pooled`` (``P <= D'``) an extra last row,
    zero-padded. ``ModelInfo.text_tokens``/``text_embed_dim`` give the packed shape.
    """
    out = embeds.float()
    if mask is not None:
        out = torch.cat([out, mask.float().reshape(-1, 1)], dim=1)
    if pooled is not None:
        row = torch.zeros(1, out.shape[1])
        row[0, : pooled.numel()] = pooled.float().reshape(-1)
        out = torch.cat([out, row], dim=0)
    return out


def unpack_text(
    packed: torch.Tensor, has_mask: bool, pooled_dim: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Inverse of ``pack_text`` on a batch ``(B, L', D')``: ``(embeds, mask, pooled)``."""
    pooled = None
    if pooled_dim:
        pooled = packed[:, -1, :pooled_dim]
        packed = packed[:, :-1]
    mask = None
    if has_mask:
        mask = packed[:, :, -1]
        packed = packed[:, :, :-1]
    return packed, mask, pooled


# -- random weights for models built in code (the presets) ----------------------------------------
def _fp32_module(name: str, keep: tuple[str, ...]) -> bool:
    """Whether module ``name`` is one a model keeps in float32 (``_keep_in_fp32_modules``)."""
    return bool(name) and any(k in name.split(".") for k in keep)


def cast_weights(model: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to ``dtype``, keeping the modules the model wants in float32 (as
    ``from_pretrained(torch_dtype=...)`` does), then place on ``device`` (cast first: an offloaded
    model keeps copies of its weights as they are when placed)."""
    if dtype != torch.float32:
        keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
        for name, module in model.named_modules():
            if _fp32_module(name, keep):
                continue
            for p in module.parameters(recurse=False):
                p.data = p.data.to(dtype)
            for b_name, b in module.named_buffers(recurse=False):
                if b.is_floating_point():
                    module._buffers[b_name] = b.to(dtype)
    return place(model, device).eval().requires_grad_(False)


def seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """``build()`` with the CPU generator seeded (its default initialisers draw from it), the
    caller's random state left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@contextlib.contextmanager
def no_weight_init():
    """Build modules without running their weight initialisers (the weights are drawn after)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _draw(name: str, p: torch.Tensor, gen: torch.Generator) -> None:
    if p.ndim == 1 and name.endswith("bias"):
        p.zero_()
    elif p.ndim == 1 and "norm" in name:
        p.fill_(1.0)
    else:
        p.normal_(0.0, 0.02, generator=gen)


def drawn_on_device(
    build: Callable[[], torch.nn.Module], seed: int, device, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """Random weights drawn on ``device`` from a seeded generator: norms 1, biases 0, the rest
    N(0, 0.02). Identical on every card of one kind; for timing presets, where a CPU draw of
    billions of weights would dominate a worker's start.

    Without ``dtype`` the model goes to ``device`` whole in float32 and is drawn there. With
    ``dtype``, each weight is drawn in float32 and stored in ``dtype`` at once (the model's float32
    modules kept), so neither the card nor host memory ever holds the float32 model (52 GB for a
    13B one); the values are those of the float32 draw cast with ``cast_weights``."""
    with no_weight_init():
        model = build()  # host memory reserved, never written: the weights are replaced below
    gen = torch.Generator(device=device).manual_seed(seed)
    if dtype is None:
        model = model.to(device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                _draw(name, p, gen)
        return model
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    drawn: dict[int, torch.nn.Parameter] = {}  # a weight shared by two modules is drawn once
    with torch.no_grad():
        for mod_name, module in model.named_modules():  # named_parameters' order
            target = torch.float32 if _fp32_module(mod_name, keep) else dtype
            for p_name, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in drawn:
                    full = torch.empty(p.shape, device=device, dtype=torch.float32)
                    _draw(f"{mod_name}.{p_name}" if mod_name else p_name, full, gen)
                    drawn[id(p)] = torch.nn.Parameter(full.to(target), requires_grad=p.requires_grad)
                module._parameters[p_name] = drawn[id(p)]
            for b_name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[b_name] = b.to(device, target if b.is_floating_point() else b.dtype)
    return model.to(device)


def random_weights(
    build: Callable[[], torch.nn.Module], device, dtype: torch.dtype, *, on_device: bool = True
) -> torch.nn.Module:
    """A preset's denoiser with random weights (seed 1), not yet placed: drawn on ``device`` in
    ``dtype`` when it is a GPU and ``on_device`` (``drawn_on_device``), else by the seeded default
    initialisers on the CPU (``seeded``). Callers finish with ``cast_weights``."""
    if on_device and torch.device(device).type == "cuda":
        return drawn_on_device(build, 1, device, dtype)
    return seeded(build, 1)


def random_vae(build: Callable[[], torch.nn.Module], device) -> torch.nn.Module:
    """A preset's VAE: the seeded default initialisers (seed 2; drawn weights can make a decode
    overflow), float32 on ``device``, tiling on."""
    m = cast_weights(seeded(build, 2), device, torch.float32)
    m.enable_tiling()
    return m
