"""Time one mp4 encode against the same frames encoded as segments and joined losslessly.

    python benchmarks/encode_segments.py [--height 1080 --width 1920 --frames 33 --segments 3]

Segments are encoded one after another here (the parallel critical path is the slowest segment
plus the join); prints JSON with the machine's CPU count. Content: a toy-grammar scene with
Gaussian grain (sigma 3), so the encoder has texture to spend bits on, as in a real render.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pipelines.toy import Scene, render_scene
from storage import encode_segment, encode_video, join_segments, read_video, segment_ranges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fps", type=int, default=16)
    a = ap.parse_args()

    scene = Scene("circle", "red", "large", "right", "gray", "textured", seed=3)
    frames = render_scene(scene, a.height, a.width, a.frames)
    grain = np.random.default_rng(0).normal(0, 3, frames.shape)
    frames = np.clip(np.rint(frames + grain), 0, 255).astype(np.uint8)
    size = -(-a.frames // a.segments)
    ranges = segment_ranges(a.frames, size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        encode_video(frames, root / "one.mp4", fps=a.fps, threads=a.threads)
        one = time.perf_counter() - t0
        seg_seconds, paths = [], []
        for i, (s, e) in enumerate(ranges):
            paths.append(root / f"seg{i}.mp4")
            t0 = time.perf_counter()
            encode_segment(frames[s:e], paths[-1], fps=a.fps, threads=a.threads, first_frame=s)
            seg_seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        join_segments(paths, root / "joined.mp4")
        join = time.perf_counter() - t0
        joined = read_video(root / "joined.mp4")
        assert np.array_equal(joined, np.concatenate([read_video(p) for p in paths]))
        report = {
            "device": f"CPU, {os.cpu_count()} cores visible",
            "video": [a.frames, a.height, a.width],
            "threads": a.threads,
            "one_stream_seconds": round(one, 3),
            "segment_frames": [e - s for s, e in ranges],
            "segment_seconds": [round(x, 3) for x in seg_seconds],
            "segments_serial_seconds": round(sum(seg_seconds), 3),
            "join_seconds": round(join, 4),
            "parallel_critical_path_seconds": round(max(seg_seconds) + join, 3),
            "bytes_one_stream": (root / "one.mp4").stat().st_size,
            "bytes_joined": (root / "joined.mp4").stat().st_size,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
