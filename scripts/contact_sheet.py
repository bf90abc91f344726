"""A contact sheet of finished renders: one row per render (first, middle and last frame), labelled
with its prompt, as one small PNG a reader can open.

    python scripts/contact_sheet.py renders/a renders/b --out reports/contact-sheet.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def contact_sheet(rows: list[tuple[str, np.ndarray]], size: int = 128, label_h: int = 14):
    """``rows`` of (label, uint8 video ``(F, H, W, 3)``) -> a PIL image: each row's label, then its
    first, middle and last frame scaled to ``size`` pixels high."""
    from PIL import Image, ImageDraw

    tiles = []
    for label, video in rows:
        frames = [video[0], video[len(video) // 2], video[-1]]
        scaled = [
            Image.fromarray(f).resize((round(size * f.shape[1] / f.shape[0]), size), Image.NEAREST)
            for f in frames
        ]
        width = sum(im.width for im in scaled) + 4 * (len(scaled) - 1)
        row = Image.new("RGB", (max(width, 6 * len(label)), size + label_h), "white")
        ImageDraw.Draw(row).text((2, 1), label, fill="black")
        x = 0
        for im in scaled:
            row.paste(im, (x, label_h))
            x += im.width + 4
        tiles.append(row)
    sheet = Image.new("RGB", (max(t.width for t in tiles), sum(t.height + 4 for t in tiles)), "white")
    y = 0
    for t in tiles:
        sheet.paste(t, (0, y))
        y += t.height + 4
    return sheet


def main(argv: list[str] | None = None) -> int:
    from storage import RenderStore
    from supergen_dask.plan import RenderPlan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("renders", nargs="+", help="render directories (each holding render.zarr)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args(argv)
    rows = []
    for d in a.renders:
        store = RenderStore.open(str(Path(d) / "render.zarr"), mode="r")
        plan = RenderPlan.from_dict(store.attrs["plan"])
        seam = "seam pass" if plan.seam is not None else "no seam pass"
        label = f"{plan.spec.prompt} | {plan.spec.width}x{plan.spec.height}, {seam}"
        rows.append((label, store.decoded_frames()))
    contact_sheet(rows, a.size).quantize(256).save(a.out, optimize=True)  # small enough to commit
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
