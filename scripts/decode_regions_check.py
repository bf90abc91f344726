"""Region decode vs whole decode vs diffusers' tiled decode at the real Wan2.1 VAE shape.

Random weights in ``AutoencoderKLWan``'s default (Wan2.1) configuration, random latents; decodes
the same latents three ways and writes max and mean |difference| (/255) to JSON. Meant for a GPU
(the whole decode of a 2x canvas is large); ``--device cpu --height 24 --width 24 --frames 1
--base-dim 8`` runs a small check anywhere.

    python scripts/decode_regions_check.py --out reports/decode-regions-gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supergen_dask.decode_check import compare_decodes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=120, help="latent rows (120: 2x Wan2.1's 480 px)")
    ap.add_argument("--width", type=int, default=208, help="latent columns (208: 2x its 832 px)")
    ap.add_argument("--frames", type=int, default=3, help="latent frames")
    ap.add_argument("--core", type=int, nargs=2, default=[60, 104], help="region core (latent cells)")
    ap.add_argument("--tile-px", type=int, default=256, help="diffusers' tile (its default 256)")
    ap.add_argument("--stride-px", type=int, default=192, help="diffusers' stride (its default 192)")
    ap.add_argument(
        "--settings",
        default="4:none,8:8,8:none,12:12,16:16",
        help="margin:blend pairs to measure (blend 'none' = whole overlap)",
    )
    ap.add_argument("--base-dim", type=int, default=96, help="VAE width (96 = Wan2.1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="decode-regions-check.json")
    a = ap.parse_args(argv)
    try:
        settings = [
            (int(m), None if b.lower() == "none" else int(b))
            for m, b in (pair.split(":") for pair in a.settings.split(","))
        ]
    except ValueError:
        ap.error(f"--settings: expected margin:blend pairs like 8:8,4:none, got {a.settings!r}")

    from diffusers import AutoencoderKLWan

    torch.manual_seed(a.seed)
    vae = AutoencoderKLWan(base_dim=a.base_dim).eval().to(a.device)
    gen = torch.Generator().manual_seed(a.seed + 1)
    z = torch.randn(1, vae.config.z_dim, a.frames, a.height, a.width, generator=gen).to(a.device)
    t0 = time.perf_counter()
    result = compare_decodes(vae, z, tuple(a.core), settings, a.tile_px, a.stride_px)
    result.update(
        seconds=round(time.perf_counter() - t0, 1),
        device=torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu",
        vae=dict(vae.config),
        seed=a.seed,
    )
    Path(a.out).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("latents", "core", "tiled", "regions", "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
