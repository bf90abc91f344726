"""Video files with PyAV: encode frames streamed in order, read them back."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["VideoInfo", "encode_video", "read_video", "probe_video"]

log = logging.getLogger(__name__)

CODECS = {
    # name: (encoder, pixel format, default options)
    # mbtree off: with it on, x264 (as bundled with PyAV) gave different bytes for the same frames
    # from run to run (it reads memory it did not write); off, every run is bit-identical.
    "h264": ("libx264", "yuv420p", {"preset": "medium", "x264-params": "mbtree=0"}),
    "lossless": ("libx264rgb", "rgb24", {"preset": "medium", "crf": "0", "x264-params": "mbtree=0"}),
}


@dataclass(frozen=True)
class VideoInfo:
    path: str
    codec: str
    pix_fmt: str
    width: int
    height: int
    frames: int
    fps: float


def encode_video(
    frames: Iterable[np.ndarray],
    path: str | Path,
    fps: int | float,
    codec: str = "h264",
    crf: int = 18,
    threads: int = 2,
) -> VideoInfo:
    """Encode ``(H, W, 3)`` uint8 RGB frames, streamed in order, to ``path``.

    ``codec="h264"`` writes H.264 in yuv420p (``crf`` sets quality, BT.709 tags); ``"lossless"``
    writes RGB H.264 at crf 0, which decodes to exactly the input. yuv420p needs even sizes: an odd
    height or width is padded by repeating the last row/column (logged), never an encoder crash.
    The same frames give the same bytes for a given ``threads`` (fixed, never "auto").
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; allowed: {sorted(CODECS)}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    encoder, pix_fmt, options = CODECS[codec]
    options = {**options, "threads": str(int(threads))}
    if codec == "h264":
        options["crf"] = str(int(crf))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    stream = None
    pad = (0, 0)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            for frame in frames:
                frame = np.asarray(frame)
                if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                    raise ValueError(f"frames must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
                if stream is None:
                    h, w = frame.shape[:2]
                    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
                        pad = (h % 2, w % 2)
                        log.warning(
                            "padding %dx%d frames to even size %dx%d for yuv420p",
                            w,
                            h,
                            w + pad[1],
                            h + pad[0],
                        )
                    stream = container.add_stream(
                        encoder, rate=Fraction(fps).limit_denominator(1001), options=options
                    )
                    stream.width, stream.height = w + pad[1], h + pad[0]
                    stream.pix_fmt = pix_fmt
                    if pix_fmt == "yuv420p":
                        cc = stream.codec_context
                        cc.color_primaries = 1  # BT.709
                        cc.color_trc = 1
                        cc.colorspace = 1
                        cc.color_range = 1  # limited ("tv") range
                    shape = (h, w)
                elif frame.shape[:2] != shape:
                    raise ValueError(f"frame {count} is {frame.shape[:2]}, earlier frames were {shape}")
                if pad != (0, 0):
                    frame = np.pad(frame, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                if pix_fmt == "yuv420p":
                    vf = vf.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
                for packet in stream.encode(vf):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError("no frames to encode")
            for packet in stream.encode():
                container.mux(packet)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return VideoInfo(str(path), encoder, pix_fmt, stream.width, stream.height, count, float(fps))


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video as ``(F, H, W, 3)`` uint8 RGB."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return np.stack(frames)


def probe_video(path: str | Path) -> VideoInfo:
    """Codec, size, frame count and rate of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        frames = sum(1 for _ in container.decode(video=0))
        return VideoInfo(
            str(path), cc.name, cc.pix_fmt, cc.width, cc.height, frames, float(stream.average_rate or 0)
        )
