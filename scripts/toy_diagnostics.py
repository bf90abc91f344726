"""Where a toy checkpoint fails, measured on the CPU: which noise levels, the text encoder, time.

    python scripts/toy_diagnostics.py --toy pipelines/toy/weights --out reports/toy-diagnostics.json

Three measurements, each on held-out grammar prompts (``evaluation_prompts``):

- ``from_real_clips``: the scene checks (``supergen_dask.scene_check``) of clips sampled from the
  prompt's own procedural clip noised to ``t0`` (Euler flow steps from ``t0`` to 0), for several
  ``t0``; ``t0 = 1`` is plain sampling. Where the checks jump between two ``t0`` is where the model
  fails to settle what the prompt asks;
- ``text_distances``: distances between the text encoder's embeddings of prompts that differ in
  one word (direction, colour, shape). A word the encoder has merged with another cannot steer;
- ``symmetry``: how far the transformer's prediction moves when its input is played backwards in
  time (then reversed back), beside a left-right mirror. A model whose output barely changes under
  time reversal cannot tell "moving left" from "moving right" however the prompt is encoded.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import load_backend  # noqa: E402
from pipelines.toy import Scene, evaluation_prompts, render_scenes  # noqa: E402
from supergen_dask.scene_check import judge_clip, scene_accuracy  # noqa: E402


def sample_from(
    backend, x0: torch.Tensor, embeds: torch.Tensor, t0: float, steps: int, guidance: float, seed: int
):
    """Euler flow steps from ``x0`` noised to ``t0`` down to 0, with classifier-free guidance.

    ``embeds`` is ``(2B, ...)``: the negative prompts' embeddings, then the positive ones'."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g)
    x = (1 - t0) * x0 + t0 * eps
    ts = torch.linspace(t0, 0.0, steps + 1)
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        u, c = backend.predict(torch.cat([x, x]), (t * 1000).expand(2 * len(x)), embeds).chunk(2)
        x = x + (t_next - t) * (u + guidance * (c - u))
    video = backend.vae_decode(x)
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def from_real_clips(backend, prompts: list[str], t0s: list[float], steps: int, guidance: float, seed: int):
    info = backend.info
    h, w, f = info.native_height, info.native_width, info.native_frames
    clips = render_scenes([Scene.from_prompt(p) for p in prompts], h, w, f)
    x0 = backend.vae_encode(clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1)
    pairs = [backend.encode_prompt(p, "") for p in prompts]
    embeds = torch.cat([torch.stack([e[1] for e in pairs]), torch.stack([e[0] for e in pairs])])
    out = []
    for t0 in t0s:
        frames = sample_from(backend, x0, embeds, t0, steps, guidance, seed)
        checks = scene_accuracy([judge_clip(c, p) for c, p in zip(frames, prompts, strict=True)])
        out.append({"t0": t0, "checks": checks})
        print(f"from real clips noised to t0={t0:g}: {checks}", flush=True)
    return out


def text_distances(backend) -> dict:
    base = "a red circle moving right"
    variants = {
        "left": "a red circle moving left",
        "up": "a red circle moving up",
        "down": "a red circle moving down",
        "blue": "a blue circle moving right",
        "square": "a red square moving right",
    }
    ref = backend.encode_prompt(base, "")[0]
    out = {k: round(float((backend.encode_prompt(p, "")[0] - ref).norm()), 3) for k, p in variants.items()}
    up = backend.encode_prompt(variants["up"], "")[0]
    out["up-down"] = round(float((backend.encode_prompt(variants["down"], "")[0] - up).norm()), 3)
    return {"reference": base, "distance_to": out}


def _symmetry_gaps(predict, x: torch.Tensor, t: float) -> dict:
    ts = torch.full((len(x),), t * 1000)
    y = predict(x, ts)
    scale = float(y.abs().mean())
    rev = predict(x.flip(2), ts).flip(2)
    mir = predict(x.flip(4), ts).flip(4)
    return {
        "time_reversal": round(float((y - rev).abs().mean()) / scale, 5),
        "left_right_mirror": round(float((y - mir).abs().mean()) / scale, 5),
    }


def symmetry(backend, seed: int) -> dict:
    """Gaps of the trained transformer at two noise levels, and of a freshly built one of the same
    config (what training starts from)."""
    info = backend.info
    g = torch.Generator().manual_seed(seed)
    h, w = info.native_latent_hw
    x = torch.randn(2, info.latent_channels, info.latent_frames(info.native_frames), h, w, generator=g)
    emb = torch.stack([backend.encode_prompt("a red circle moving right", "")[0]] * 2)
    out = {str(t): _symmetry_gaps(lambda x, ts: backend.predict(x, ts, emb), x, t) for t in (0.95, 0.7)}
    model = backend.expert(torch.tensor([700.0]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model).from_config(model.config).eval()

    @torch.no_grad()
    def fresh_predict(x, ts):
        return fresh(hidden_states=x, timestep=ts, encoder_hidden_states=emb, return_dict=False)[0]

    out["fresh_0.95"] = _symmetry_gaps(fresh_predict, x, 0.95)
    return {"note": "mean |f(x) - T^-1 f(T x)| over mean |f(x)|, noise as input", **out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toy", default=str(ROOT / "pipelines" / "toy" / "weights"))
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--t0", type=float, nargs="+", default=[1.0, 0.95, 0.9, 0.8, 0.6])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, help="CFG scale (default: the toy's own)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not all(0 < t <= 1 for t in args.t0):
        p.error("--t0 values must lie in (0, 1]")
    t_start = time.time()
    backend = load_backend(args.toy, device="cpu", dtype=torch.float32)
    prompts = evaluation_prompts(args.prompts, seed=999)
    if args.guidance is None:
        args.guidance = backend.info.default_guidance
    report = {
        "toy": args.toy,
        "machine": {"device": platform.processor() or "cpu", "torch": torch.__version__},
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "toy")},
        "text_distances": text_distances(backend),
        "symmetry": symmetry(backend, args.seed),
        "from_real_clips": from_real_clips(backend, prompts, args.t0, args.steps, args.guidance, args.seed),
    }
    report["seconds"] = round(time.time() - t_start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("text_distances", "symmetry")}, indent=2))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
