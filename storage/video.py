"""Video files with PyAV: encode frames streamed in order, read them back.

Long videos can be encoded in parallel: ``segment_ranges`` splits the frames, ``encode_segment``
encodes each contiguous run to its own file (anywhere, in any order), and ``join_segments`` remuxes
the segments into one mp4 without re-encoding.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = [
    "VideoInfo",
    "encode_video",
    "encode_segment",
    "join_segments",
    "segment_ranges",
    "read_video",
    "probe_video",
]

log = logging.getLogger(__name__)

CODECS = {
    # name: (encoder, pixel format, default options)
    # mbtree off: with it on, x264 (as bundled with PyAV) gave different bytes for the same frames
    # from run to run (it reads memory it did not write); off, every run is bit-identical.
    # h264 uses `veryfast`: `medium` encoded 4K at 0.45 frames/s per 2 threads (84 s of a 220 s
    # render on 2 H200s); on 8 grainy 1080p frames at crf 18 (2 threads, a 2-core CPU) veryfast
    # took 1.25 s against medium's 11.1 s, at the same PSNR (38.45 vs 38.39 dB) and 11% fewer bytes.
    # x264's defaults also make segments joinable (see join_segments): every stream starts with an
    # IDR frame, and GOPs are closed (open-gop off), so no frame of a segment references another.
    "h264": ("libx264", "yuv420p", {"preset": "veryfast", "x264-params": "mbtree=0"}),
    "lossless": ("libx264rgb", "rgb24", {"preset": "medium", "crf": "0", "x264-params": "mbtree=0"}),
}

SEGMENT_TAG = "supergen-segment"
"""Prefix of the ``comment`` an ``encode_segment`` file carries: ``supergen-segment first_frame=N``."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    codec: str
    pix_fmt: str
    width: int
    height: int
    frames: int
    fps: float


def _partial(path: Path) -> Path:
    """A temporary name beside ``path`` that no other writer uses (two runs of one render must not
    write into each other's half-finished file; the rename into place is atomic)."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.partial")


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
    return _encode(frames, path, fps, codec, crf, threads, comment=None)


def encode_segment(
    frames: Iterable[np.ndarray],
    path: str | Path,
    *,
    fps: int | float,
    codec: str = "h264",
    crf: int = 18,
    threads: int = 2,
    first_frame: int = 0,
) -> VideoInfo:
    """Encode one contiguous run of a video's frames to its own mp4, for ``join_segments``.

    Same streams and options as ``encode_video`` (the file plays on its own); ``first_frame`` is
    the index of the run's first frame in the whole video, recorded in the file's ``comment`` so
    that ``join_segments`` can refuse segments given out of order, with gaps or overlapping.
    Segments may be encoded independently, on different machines and in any order: each file's
    bytes depend only on its frames and arguments.
    """
    if int(first_frame) != first_frame or first_frame < 0:
        raise ValueError(f"first_frame must be a non-negative integer, got {first_frame}")
    comment = f"{SEGMENT_TAG} first_frame={int(first_frame)}"
    return _encode(frames, path, fps, codec, crf, threads, comment=comment)


def segment_ranges(frames: int, segment_frames: int) -> list[tuple[int, int]]:
    """Split ``frames`` frames into ``[start, stop)`` runs of ``segment_frames`` (the last may be
    shorter), in order.

    >>> segment_ranges(33, 12)
    [(0, 12), (12, 24), (24, 33)]
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    return [(s, min(s + segment_frames, frames)) for s in range(0, frames, segment_frames)]


def _encode(
    frames: Iterable[np.ndarray],
    path: str | Path,
    fps: int | float,
    codec: str,
    crf: int,
    threads: int,
    comment: str | None,
) -> VideoInfo:
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
    tmp = _partial(path)
    count = 0
    stream = None
    pad = (0, 0)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            if comment is not None:
                container.metadata["comment"] = comment
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


# ------------------------------------------------------------------------------------------ joining


def _nal_types(data: bytes, length_size: int) -> list[int]:
    """NAL unit types of one H.264 packet in mp4 (length-prefixed) form."""
    types, i = [], 0
    while i + length_size <= len(data):
        n = int.from_bytes(data[i : i + length_size], "big")
        i += length_size
        if n == 0 or i + n > len(data):
            break
        types.append(data[i] & 0x1F)
        i += n
    return types


def _open_for_packets(path: Path):
    """``path`` opened to read its packets, never to decode them.

    Opening a file, FFmpeg probes each stream by decoding its first frames (``pix_fmt`` and the
    like are not in an mp4's headers); a 4K IDR frame takes 0.3-1 s to decode on one core, which
    was nearly all of a join's time (two opens per segment). Told to skip every frame, the probe
    reads the headers only: the codec parameters a remux copies, and the packets, are the same.
    """
    return av.open(str(path), options={"skip_frame": "all"})


class _Bits:
    """Big-endian bit reader over an H.264 RBSP (Exp-Golomb codes, H.264 section 9.1)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            if self.pos >= 8 * len(self.data):
                raise ValueError("SPS ends early")
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _sps_pix_fmt(extradata: bytes) -> str | None:
    """FFmpeg's pixel format for the H.264 stream whose ``avcC`` extradata this is, read from its
    first SPS (H.264 section 7.3.2.1.1) as FFmpeg's decoder picks it; None when it is not 8-bit or
    cannot be read (the caller then decodes a frame to ask)."""
    try:
        if len(extradata) < 8 or extradata[0] != 1 or not extradata[5] & 0x1F:
            return None
        n = int.from_bytes(extradata[6:8], "big")
        nal = extradata[8 : 8 + n]
        rbsp = re.sub(b"\x00\x00\x03", b"\x00\x00", nal[1:])  # drop emulation prevention
        b = _Bits(rbsp)
        profile = b.u(8)
        b.u(16)  # constraint flags, level
        b.ue()  # seq_parameter_set_id
        chroma, depth = 1, 8
        if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
            chroma = b.ue()
            if chroma == 3:
                b.u(1)  # separate_colour_plane_flag
            depth = b.ue() + 8
            b.ue()  # bit_depth_chroma_minus8
            b.u(1)  # qpprime_y_zero_transform_bypass_flag
            if b.u(1):  # seq_scaling_matrix_present_flag
                for i in range(8 if chroma != 3 else 12):
                    if b.u(1):
                        last = following = 8
                        for _ in range(16 if i < 6 else 64):
                            if following:
                                following = (last + b.se() + 256) % 256
                            last = following or last
        if depth != 8:
            return None
        b.ue()  # log2_max_frame_num_minus4
        poc = b.ue()
        if poc == 0:
            b.ue()
        elif poc == 1:
            b.u(1)
            b.se()
            b.se()
            for _ in range(b.ue()):
                b.se()
        b.ue()  # max_num_ref_frames
        b.u(1)
        b.ue()  # width and height in macroblocks
        b.ue()
        if not b.u(1):  # frame_mbs_only_flag
            b.u(1)
        b.u(1)  # direct_8x8_inference_flag
        if b.u(1):  # frame cropping
            for _ in range(4):
                b.ue()
        full_range, matrix = False, 2  # unspecified
        if b.u(1):  # VUI
            if b.u(1) and b.u(8) == 255:  # aspect ratio, extended SAR
                b.u(32)
            if b.u(1):  # overscan_info_present_flag
                b.u(1)
            if b.u(1):  # video_signal_type_present_flag
                b.u(3)
                full_range = bool(b.u(1))
                if b.u(1):
                    b.u(16)  # colour primaries, transfer
                    matrix = b.u(8)
    except ValueError:
        return None
    if chroma == 3 and matrix == 0:  # matrix 0: the planes are G, B, R (libx264rgb)
        return "gbrp"
    base = {0: "420p", 1: "420p", 2: "422p", 3: "444p"}[chroma]  # monochrome decodes as 4:2:0
    return f"yuvj{base}" if full_range else f"yuv{base}"


def _first_frame_pix_fmt(path: Path) -> str | None:
    """The pixel format of a video's first frame, decoded (slow at 4K: the SPS fallback)."""
    with av.open(str(path)) as inp:
        return inp.streams.video[0].codec_context.pix_fmt


def _segment_params(stream) -> dict:
    """What must be identical in every segment for their packets to form one valid stream (the
    SPS/PPS carry the pixel format; it is read from them, the file being opened without
    decoding)."""
    cc = stream.codec_context
    return {
        "codec": cc.name,
        "size": f"{cc.width}x{cc.height}",
        "pix_fmt": cc.pix_fmt or _sps_pix_fmt(bytes(cc.extradata or b"")),
        "profile": cc.profile,
        "time_base": stream.time_base,
        "frame rate": stream.average_rate,
        "SPS/PPS": bytes(cc.extradata or b""),
    }


@dataclass(frozen=True)
class _Segment:
    params: dict
    frames: int
    tick: int  # frame duration, in the stream's time base
    start: int  # presentation time of the first frame
    delay: int  # how far decoding runs ahead of presentation (B-frame reordering), in ticks


def _check_segment(i: int, seg: Path, ref: _Segment | None, first_frame: int) -> _Segment:
    """Read one segment's parameters and packet timing, and refuse what cannot be joined."""
    where = f"segment {i} ({seg})"
    with _open_for_packets(seg) as inp:
        if len(inp.streams) != 1 or len(inp.streams.video) != 1:
            raise ValueError(f"{where} must hold exactly one video stream")
        stream = inp.streams.video[0]
        params = _segment_params(stream)
        if params["codec"] != "h264":
            raise ValueError(f"{where} is {params['codec']}, not h264")
        if ref is not None:
            diff = [k for k in ref.params if params[k] != ref.params[k]]
            if diff:
                shown = [f"{k}: {params[k]} vs {ref.params[k]}" for k in diff if k != "SPS/PPS"]
                raise ValueError(
                    f"{where} does not match segment 0 in {', '.join(diff)}"
                    + (f" ({'; '.join(shown)})" if shown else "")
                    + ": segments must be encoded with the same size, codec and settings"
                )
        match = re.fullmatch(rf"{SEGMENT_TAG} first_frame=(\d+)", inp.metadata.get("comment", ""))
        if match and int(match.group(1)) != first_frame:
            raise ValueError(
                f"{where} starts at frame {match.group(1)}, but the segments before it end at frame "
                f"{first_frame}: segments must be given in order, without gaps or overlaps"
            )
        extradata = params["SPS/PPS"]
        length_size = (extradata[4] & 3) + 1 if len(extradata) > 4 else 4
        pts, dts, durations = [], [], set()
        for packet in inp.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            if not pts and (not packet.is_keyframe or 5 not in _nal_types(bytes(packet), length_size)):
                raise ValueError(
                    f"{where} does not begin with an IDR keyframe: only closed, self-contained "
                    "segments can be joined"
                )
            pts.append(packet.pts)
            dts.append(packet.dts)
            durations.add(packet.duration)
    if not pts:
        raise ValueError(f"{where} has no frames")
    shown = sorted(pts)
    tick = shown[1] - shown[0] if len(pts) > 1 else durations.pop()
    start = pts[0]
    if tick <= 0 or [p - start for p in shown] != [k * tick for k in range(len(pts))]:
        raise ValueError(
            f"{where} is not constant frame rate or shows frames before its first keyframe "
            "(its presentation times are not 0, 1, 2, ... frames)"
        )
    if ref is not None and tick != ref.tick:
        raise ValueError(f"{where} has frames of {tick} ticks, segment 0 of {ref.tick}")
    return _Segment(params, len(pts), tick, start, start - dts[0])


def join_segments(segment_paths: Sequence[str | Path], path: str | Path) -> VideoInfo:
    """Join mp4 segments (``encode_segment``, in video order) into one mp4, losslessly.

    No re-encode: the packets of every segment are copied, their presentation times moved by the
    segment's start (the frames before it), so the result decodes to exactly the frames of the
    segments decoded one after the other, and its bytes depend only on the segments' bytes.
    The stream's codec parameters (extradata: SPS/PPS) come from the first segment. No frame is
    decoded either, not even by FFmpeg's probe when a segment is opened, so the join costs the
    copy of the bytes (0.3-0.8 s for 81 frames of 4K on a 2-core CPU; 4-12 s with the probe).

    This is sound only for closed, self-contained H.264 segments with the same parameters, which
    is checked before anything is written (``ValueError`` otherwise): each segment holds one video
    stream, begins with an IDR frame, shows no frame before it (no open GOP) and is constant frame
    rate, with the first segment's codec, size, pixel format, profile, time base, frame rate and
    SPS/PPS; segments that record their ``first_frame`` must follow on without gap or overlap.

    Decode timestamps are rewritten, not shifted: x264 gives a segment of one or two frames no
    B-frames, so its decode times do not run ahead of its presentation times, while longer
    segments' run 2 frames ahead. Shifted, such segments would leave holes in the decode times
    or (a short segment first) make them go backwards. The joined stream's decode times are one
    frame apart, running ahead by the largest delay of any segment, which keeps every packet's
    decode time at or before its presentation time.

    Written to a uniquely named ``.partial`` file beside ``path`` and renamed, like ``encode_video``.
    """
    paths = [Path(p) for p in segment_paths]
    if not paths:
        raise ValueError("no segments to join")
    segments: list[_Segment] = []
    total = 0
    for i, seg in enumerate(paths):
        segments.append(_check_segment(i, seg, segments[0] if segments else None, total))
        total += segments[-1].frames
    ref = segments[0]
    delay = max(s.delay for s in segments)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(path)
    index = 0  # packets (frames) written so far
    try:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            out_stream = None
            for seg, info in zip(paths, segments, strict=True):
                with _open_for_packets(seg) as inp:
                    stream = inp.streams.video[0]
                    if out_stream is None:
                        out_stream = out.add_stream_from_template(stream)
                    shift = index * ref.tick - info.start
                    for packet in inp.demux(stream):
                        if packet.size == 0:
                            continue
                        packet.pts += shift
                        packet.dts = index * ref.tick - delay
                        if packet.dts > packet.pts:
                            raise ValueError(f"{seg}: frame {index} would be decoded after it is shown")
                        packet.duration = ref.tick
                        packet.stream = out_stream
                        out.mux(packet)
                        index += 1
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    w, h = (int(x) for x in ref.params["size"].split("x"))
    pix_fmt = ref.params["pix_fmt"] or _first_frame_pix_fmt(path)
    return VideoInfo(str(path), ref.params["codec"], pix_fmt, w, h, total, float(ref.params["frame rate"]))


# ------------------------------------------------------------------------------------------ reading


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
