"""Train the toy text-to-video model on procedural videos (one GPU, seeded, time-boxed).

    python scripts/train_toy.py --out runs/toy --minutes 8            # on a GPU
    python scripts/train_toy.py --out /tmp/t --tiny --max-steps 20    # smoke run on a CPU

Flow matching (x_t = (1 - t) x0 + t eps, target eps - x0, t logit-normal) on the exact
space-to-depth latents of 64x64, 9-frame clips; the transformer and the text encoder train
together; 10% of prompts are dropped for classifier-free guidance and the others are shortened at
random, so "a red circle moving right" is as valid as the full grammar sentence. An EMA of the
weights is what gets saved, in diffusers layout (``<out>/toy``), every ``--ckpt-minutes`` and at
the end, with ``<out>/train_report.json``: the loss curve and the native accuracy (the share of
samples that show exactly one object of the prompted colour, over ``--eval-prompts`` prompts drawn
through the same backend code as renders).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.toy import COLOURS, Scene, parse_prompt, sample_scene  # noqa: E402
from pipelines.toy.model import (  # noqa: E402
    TOY_NATIVE,
    TOY_TEXT_TOKENS,
    SpaceToDepthAutoencoder,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    encode_prompts,
    save_toy_pipeline,
)

H, W, FRAMES = TOY_NATIVE["native_height"], TOY_NATIVE["native_width"], TOY_NATIVE["native_frames"]


def prompt_variant(scene: Scene, rng: np.random.Generator) -> str:
    """The scene's prompt, shortened at random (size and/or background may be left out)."""
    size = f"{scene.size} " if rng.random() < 0.6 else ""
    text = f"a {size}{scene.colour} {scene.shape} moving {scene.direction}"
    if rng.random() < 0.6:
        text += f" on a {scene.bg_colour} {scene.bg_style} background"
    return text


class ProceduralBatches(torch.utils.data.IterableDataset):
    """Endless batches of (uint8 clips, prompts); every worker draws from its own seeded stream."""

    def __init__(self, batch: int, seed: int, drop: float = 0.1):
        self.batch, self.seed, self.drop = batch, seed, drop

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, wid])
        from pipelines.toy import render_scene

        while True:
            scenes = [sample_scene(rng) for _ in range(self.batch)]
            clips = np.stack([render_scene(s, H, W, FRAMES) for s in scenes])
            prompts = ["" if rng.random() < self.drop else prompt_variant(s, rng) for s in scenes]
            yield torch.from_numpy(clips), prompts


def to_latents(clips: torch.Tensor, vae: SpaceToDepthAutoencoder) -> torch.Tensor:
    """uint8 ``(B, F, H, W, 3)`` -> un-normalised latents ``(B, 48, F, h, w)``."""
    x = clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    return vae.encode(x).latent_dist.mode()


@torch.no_grad()
def native_accuracy(toy_dir: Path, n: int, steps: int, guidance: float, device: str, seed: int) -> dict:
    """Sample ``n`` evaluation prompts at native size through the backend code renders use."""
    from pipelines import load_backend
    from pipelines.schedulers import make_scheduler
    from pipelines.toy import evaluation_prompts
    from supergen_dask.metrics import duplication

    backend = load_backend(str(toy_dir), device=device, dtype=torch.float32)
    prompts = evaluation_prompts(n, seed=seed)
    embeds = [backend.encode_prompt(p, "") for p in prompts]
    pos = torch.stack([e[0] for e in embeds]).to(device)
    neg = torch.stack([e[1] for e in embeds]).to(device)
    info = backend.info
    g = torch.Generator(device=device).manual_seed(seed)
    h, w = info.native_latent_hw
    x = torch.randn(n, info.latent_channels, FRAMES, h, w, generator=g, device=device)
    sched = make_scheduler(info.scheduler_class, info.scheduler_config)
    sched.set_timesteps(steps, device=device)
    for t in sched.timesteps:
        out = backend.predict(torch.cat([x, x]), t.expand(2 * n), torch.cat([neg, pos]))
        u, c = out.chunk(2)
        x = sched.step(u + guidance * (c - u), t, x, return_dict=False)[0]
    video = backend.vae_decode(x)
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
    results = []
    for p, clip in zip(prompts, frames, strict=True):
        d = duplication(clip, COLOURS[parse_prompt(p)["colour"]])
        results.append(
            {"prompt": p, "median_count": float(d["median"]), "exactly_one": bool(d["exactly_one"])}
        )
    acc = sum(r["exactly_one"] for r in results) / n
    return {
        "accuracy": acc,
        "n": n,
        "steps": steps,
        "guidance": guidance,
        "samples": results,
        "frames": frames,
    }


def save_grid(frames: np.ndarray, path: Path, cols: int = 8) -> None:
    """Middle frames of the samples as one PNG (for a human look)."""
    from PIL import Image

    mids = frames[:, frames.shape[1] // 2]
    rows = math.ceil(len(mids) / cols)
    h, w = mids.shape[1:3]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, m in enumerate(mids):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = m
    Image.fromarray(grid).save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the training loop")
    p.add_argument("--max-steps", type=int, default=10**9)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--workers", type=int, default=min(10, (os.cpu_count() or 2) - 2))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="continue from an existing toy directory (its EMA weights)")
    p.add_argument("--ckpt-minutes", type=float, default=2.0)
    p.add_argument("--ckpt-archive", help="also write each checkpoint as a .tar.gz here")
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--tiny", action="store_true", help="a 1-layer model for smoke tests on a CPU")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    if args.init:
        from diffusers import WanTransformer3DModel
        from transformers import UMT5EncoderModel

        transformer = WanTransformer3DModel.from_pretrained(
            args.init, subfolder="transformer", torch_dtype=torch.float32
        )
        text = UMT5EncoderModel.from_pretrained(
            args.init, subfolder="text_encoder", torch_dtype=torch.float32
        )
    else:
        transformer, text = build_transformer(args.seed), build_text_encoder(args.seed)
        if args.tiny:
            from diffusers import WanTransformer3DModel

            from pipelines.toy.model import TOY_TRANSFORMER_CONFIG

            cfg = {**TOY_TRANSFORMER_CONFIG, "num_layers": 1, "ffn_dim": 64, "num_attention_heads": 2}
            torch.manual_seed(args.seed)
            transformer = WanTransformer3DModel(**cfg)
    transformer.to(device).train()
    text.to(device).train()
    ema_tr, ema_te = copy.deepcopy(transformer).eval(), copy.deepcopy(text).eval()
    for m in (ema_tr, ema_te):
        m.requires_grad_(False)
    params = list(transformer.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)

    vae = SpaceToDepthAutoencoder(4, 3)
    stats_batch = next(iter(ProceduralBatches(min(512, 8 * args.batch), args.seed + 999)))[0]
    z = to_latents(stats_batch, vae)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    mean_b, std_b = mean.view(1, -1, 1, 1, 1).to(device), std.view(1, -1, 1, 1, 1).to(device)

    loader = torch.utils.data.DataLoader(
        ProceduralBatches(args.batch, args.seed),
        batch_size=None,
        num_workers=max(0, args.workers),
        pin_memory=device == "cuda",
        prefetch_factor=4 if args.workers > 0 else None,
        persistent_workers=args.workers > 0,
    )
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")
    warmup = 300
    log, t_start, last_ckpt = [], time.time(), time.time()
    step, losses = 0, []

    def checkpoint(tag: str) -> Path:
        d = save_toy_pipeline(
            out / "toy",
            ema_tr,
            ema_te,
            tokenizer,
            mean.tolist(),
            std.tolist(),
            extra={"trained_steps": step, "seed": args.seed},
        )
        if args.ckpt_archive:
            arch = Path(args.ckpt_archive)
            arch.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(arch, "w:gz") as tar:
                tar.add(d, arcname="toy")
        print(f"[{tag}] checkpoint at step {step} -> {d}", flush=True)
        return d

    for clips, prompts in loader:
        if step >= args.max_steps or time.time() - t_start > args.minutes * 60:
            break
        clips = clips.to(device, non_blocking=True)
        with torch.no_grad():
            x0 = (to_latents(clips, vae) - mean_b) / std_b
        b = x0.shape[0]
        t = torch.sigmoid(torch.randn(b, device=device))
        eps = torch.randn_like(x0)
        tt = t.view(b, 1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * eps
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / warmup)
        with amp:
            emb = encode_prompts(tokenizer, text, list(prompts), TOY_TEXT_TOKENS)
            pred = transformer(
                hidden_states=xt, timestep=t * 1000, encoder_hidden_states=emb, return_dict=False
            )[0]
        loss = torch.nn.functional.mse_loss(pred.float(), (eps - x0).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_tr, transformer), (ema_te, text)):
                for pe, pl in zip(ema.parameters(), live.parameters(), strict=True):
                    pe.lerp_(pl.detach(), 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % 200 == 0 or step == 1:
            elapsed = time.time() - t_start
            entry = {"step": step, "loss": float(np.mean(losses[-200:])), "seconds": round(elapsed, 1)}
            log.append(entry)
            print(f"step {step} loss {entry['loss']:.4f} {step / elapsed:.1f} it/s", flush=True)
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            checkpoint("periodic")
            last_ckpt = time.time()
    train_seconds = time.time() - t_start
    toy_dir = checkpoint("final")

    ev = native_accuracy(toy_dir, args.eval_prompts, args.eval_steps, args.guidance, device, seed=1234)
    save_grid(ev.pop("frames"), out / "native_samples.png")
    report = {
        "machine": {
            "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "clips_seen": step * args.batch,
        "params_transformer": sum(p.numel() for p in transformer.parameters()),
        "params_text_encoder": sum(p.numel() for p in text.parameters()),
        "loss_log": log,
        "native_eval": ev,
    }
    (out / "train_report.json").write_text(json.dumps(report, indent=2))
    print(
        f"native accuracy {ev['accuracy']:.3f} over {ev['n']} prompts; {step} steps in {train_seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
