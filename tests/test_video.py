"""Video files: lossless round trips, odd sizes, repeatable bytes, clear errors."""

from __future__ import annotations

import dataclasses
import io
from fractions import Fraction

import av
import dask
import numpy as np
import pytest

from storage import (
    encode_segment,
    encode_video,
    join_segments,
    probe_video,
    read_video,
    segment_ranges,
    video,
)


def _frames(n=5, h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_lossless_round_trip_is_exact(tmp_path):
    frames = _frames()
    info = encode_video(frames, tmp_path / "v.mp4", fps=8, codec="lossless")
    assert info.frames == 5
    np.testing.assert_array_equal(read_video(tmp_path / "v.mp4"), frames)


def test_h264_default_is_yuv420p_and_close(tmp_path):
    y, x = np.mgrid[0:64, 0:96]
    smooth = np.stack([(x * 2) % 256, (y * 3) % 256, np.full_like(x, 120)], -1).astype(np.uint8)
    frames = np.stack([smooth] * 4)
    encode_video(frames, tmp_path / "v.mp4", fps=16)
    info = probe_video(tmp_path / "v.mp4")
    assert (info.codec, info.pix_fmt, info.width, info.height, info.frames) == ("h264", "yuv420p", 96, 64, 4)
    back = read_video(tmp_path / "v.mp4").astype(float)
    mse = np.mean((back - frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30


def test_odd_sizes_are_padded_not_crashed(tmp_path):
    info = encode_video(_frames(3, 33, 45), tmp_path / "v.mp4", fps=8)
    assert (info.width, info.height) == (46, 34)
    assert read_video(tmp_path / "v.mp4").shape == (3, 34, 46, 3)


def test_same_frames_same_bytes_despite_memory_churn(tmp_path):
    # With x264's mbtree on, the bundled encoder read memory it had not written and the bytes
    # changed from run to run after other native code (a VAE decode) churned the heap.
    import torch

    from pipelines import load_backend

    vae = load_backend("tiny-random-wan")
    g = torch.Generator().manual_seed(0)
    video = vae.vae_decode(torch.randn(1, 16, 3, 12, 20, generator=g))
    frames = ((video[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    blobs = set()
    for i in range(8):
        vae.vae_decode(torch.randn(1, 16, 3, 8, 8, generator=g))
        encode_video(frames, tmp_path / f"{i}.mp4", fps=8)
        blobs.add((tmp_path / f"{i}.mp4").read_bytes())
    assert len(blobs) == 1


@pytest.mark.parametrize(
    "frames, kwargs, match",
    [
        (np.zeros((2, 8, 8), np.uint8), {}, r"\(H, W, 3\) uint8"),
        (np.zeros((2, 8, 8, 3), np.float32), {}, "uint8"),
        ([], {}, "no frames"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"codec": "prores"}, "unknown codec"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"fps": 0}, "fps"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_no_file(tmp_path, frames, kwargs, match):
    args = {"fps": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        encode_video(frames, tmp_path / "v.mp4", **args)
    assert not (tmp_path / "v.mp4").exists() and not list(tmp_path.glob("*.partial"))


# ------------------------------------------------------------------------- segments, joined losslessly

FPS = 8


def _moving(n=13, h=48, w=64, seed=1):
    """A textured frame sliding sideways: x264 uses B-frames on it (checked below)."""
    base = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    base = np.repeat(np.repeat(base[::4, ::4], 4, 0), 4, 1)[:h, :w]  # 4x4 blocks: motion, not noise
    return np.stack([np.roll(base, 3 * i, axis=1) for i in range(n)])


@pytest.fixture(params=["h264", "h264-no-bframes", "lossless"])
def codec(request, monkeypatch):
    """The shipped codecs, plus H.264 without B-frames (joining must not depend on either)."""
    if request.param == "h264-no-bframes":
        encoder, pix_fmt, options = video.CODECS["h264"]
        options = {**options, "x264-params": options["x264-params"] + ":bframes=0"}
        monkeypatch.setitem(video.CODECS, "h264-no-bframes", (encoder, pix_fmt, options))
    return request.param


def _encode_segments(frames, root, codec, segment_frames=5, order=None, **kw):
    ranges = segment_ranges(len(frames), segment_frames)
    paths = [root / f"seg{i}.mp4" for i in range(len(ranges))]
    for i in order or range(len(ranges)):
        a, b = ranges[i]
        info = encode_segment(frames[a:b], paths[i], fps=FPS, codec=codec, first_frame=a, **kw)
        assert info.frames == b - a
    return paths


def _packets(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(p.pts, p.dts, p.duration, p.is_keyframe) for p in c.demux(s) if p.size], s


def test_segment_ranges():
    assert segment_ranges(33, 11) == [(0, 11), (11, 22), (22, 33)]
    assert segment_ranges(13, 5) == [(0, 5), (5, 10), (10, 13)]
    assert segment_ranges(4, 10) == [(0, 4)]
    assert segment_ranges(3, 1) == [(0, 1), (1, 2), (2, 3)]
    for frames, size in [(0, 4), (4, 0), (-1, 2)]:
        with pytest.raises(ValueError):
            segment_ranges(frames, size)


def test_joined_video_decodes_to_the_segments_in_order(tmp_path, codec):
    # 13 frames in segments of 5, 5 and 3: the last one is shorter
    frames = _moving(13)
    paths = _encode_segments(frames, tmp_path, codec)
    info = join_segments(paths, tmp_path / "joined.mp4")
    assert info.frames == 13 and (info.width, info.height) == (64, 48)
    joined = read_video(tmp_path / "joined.mp4")
    expected = np.concatenate([read_video(p) for p in paths])
    assert joined.shape == (13, 48, 64, 3)
    np.testing.assert_array_equal(joined, expected)
    if codec == "lossless":
        np.testing.assert_array_equal(joined, frames)
    assert probe_video(tmp_path / "joined.mp4").frames == 13


def test_b_frames_are_where_the_fixture_says(tmp_path, codec):
    # the parametrisation means something: packets arrive out of presentation order only with
    # B-frames, which x264 uses for "h264" and never at crf 0 ("lossless")
    paths = _encode_segments(_moving(13), tmp_path, codec)
    packets, _ = _packets(paths[0])
    reordered = [p[0] for p in packets] != sorted(p[0] for p in packets)
    assert reordered == (codec == "h264")


def test_join_is_repeatable_and_independent_of_encoding_order(tmp_path, codec):
    frames = _moving(13)
    blobs = set()
    for run, order in enumerate([None, None, [2, 0, 1], [1, 2, 0]]):
        root = tmp_path / str(run)
        root.mkdir()
        paths = _encode_segments(frames, root, codec, order=order)
        join_segments(paths, root / "joined.mp4")
        blobs.add((root / "joined.mp4").read_bytes())
    assert len(blobs) == 1


def test_joined_timestamps_increase_and_duration_is_right(tmp_path, codec):
    frames = _moving(12)
    # a one-frame last segment too: the shortest stream x264 can make
    paths = _encode_segments(frames, tmp_path, codec, segment_frames=11)
    join_segments(paths, tmp_path / "joined.mp4")
    packets, stream = _packets(tmp_path / "joined.mp4")
    assert len(packets) == 12
    dts = [p[1] for p in packets]
    assert all(a < b for a, b in zip(dts, dts[1:], strict=False))
    assert all(p[1] <= p[0] for p in packets)  # no frame is shown before it is decoded
    tick = packets[0][2]
    assert tick > 0 and all(p[2] == tick for p in packets)
    assert sorted(p[0] for p in packets) == [k * tick for k in range(12)]  # every frame once, no gaps
    assert [p[3] for p in packets].count(True) == 2 and packets[11][3]  # an IDR opens each segment
    assert stream.frames == 12
    assert stream.duration * stream.time_base == Fraction(12, FPS)
    with av.open(str(tmp_path / "joined.mp4")) as c:
        pts = [f.pts for f in c.decode(video=0)]
        assert float(c.streams.video[0].average_rate) == FPS
    assert pts == [k * tick for k in range(12)]


def test_a_short_segment_first_still_joins(tmp_path):
    # x264 gives a 1- or 2-frame stream no B-frames: its decode times do not run ahead of its
    # presentation times, a longer segment's do (by 2 frames). Merely shifted, the decode times
    # would go backwards at the join; join_segments rewrites them.
    frames = _moving(9)
    encode_segment(frames[:1], tmp_path / "a.mp4", fps=FPS)
    encode_segment(frames[1:3], tmp_path / "b.mp4", fps=FPS, first_frame=1)
    encode_segment(frames[3:], tmp_path / "c.mp4", fps=FPS, first_frame=3)
    paths = [tmp_path / n for n in ("a.mp4", "b.mp4", "c.mp4")]
    delays = [p[0] - p[1] for p in (_packets(x)[0][0] for x in paths)]
    assert delays[0] == delays[1] == 0 < delays[2]
    join_segments(paths, tmp_path / "joined.mp4")
    packets, _ = _packets(tmp_path / "joined.mp4")
    dts = [p[1] for p in packets]
    assert all(a < b for a, b in zip(dts, dts[1:], strict=False)) and all(p[1] <= p[0] for p in packets)
    expected = np.concatenate([read_video(p) for p in paths])
    np.testing.assert_array_equal(read_video(tmp_path / "joined.mp4"), expected)


def test_one_segment_joins_to_itself(tmp_path):
    frames = _moving(6)
    encode_segment(frames, tmp_path / "s.mp4", fps=FPS, codec="lossless")
    join_segments([tmp_path / "s.mp4"], tmp_path / "j.mp4")
    np.testing.assert_array_equal(read_video(tmp_path / "j.mp4"), frames)


def test_join_reads_packets_only_and_writes_what_a_decoding_probe_would(tmp_path, codec, monkeypatch):
    # the join opens its segments without letting FFmpeg decode their first frames (0.3-1 s per
    # 4K segment, nearly all of a join's time); the parameters it copies must not change for it
    frames = _moving(13)
    paths = _encode_segments(frames, tmp_path, codec)
    info = join_segments(paths, tmp_path / "fast.mp4")
    assert info.pix_fmt == ("gbrp" if codec == "lossless" else "yuv420p")
    monkeypatch.setattr(video, "_open_for_packets", lambda p: av.open(str(p)))
    slow = join_segments(paths, tmp_path / "probed.mp4")
    assert (tmp_path / "fast.mp4").read_bytes() == (tmp_path / "probed.mp4").read_bytes()
    assert dataclasses.replace(slow, path=info.path) == info
    # an SPS the reader cannot follow: the pixel format is asked of a decoded frame instead
    monkeypatch.setattr(video, "_sps_pix_fmt", lambda extradata: None)
    assert join_segments(paths, tmp_path / "other.mp4").pix_fmt == info.pix_fmt


def _x264_extradata(encoder, pix_fmt, options=None):
    """A 3-frame stream's avcC extradata and the pixel format FFmpeg's decoder reports for it."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(encoder, rate=8, options=options or {})
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for frame in _frames(3):
            frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format=pix_fmt)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buf.seek(0)
    with av.open(buf) as inp:
        cc = inp.streams.video[0].codec_context
        return bytes(cc.extradata), cc.pix_fmt


@pytest.mark.parametrize(
    "encoder, pix_fmt, options",
    [
        ("libx264", "yuv420p", None),
        ("libx264", "yuvj420p", None),
        ("libx264", "yuv422p", None),
        ("libx264", "yuv444p", None),
        ("libx264", "gray", None),  # monochrome: FFmpeg decodes it as yuv420p
        ("libx264", "yuv420p", {"x264-params": "cqm=jvt:sar=4/3"}),  # scaling lists, aspect ratio
        ("libx264rgb", "rgb24", None),
    ],
)
def test_pixel_format_read_from_the_sps_is_the_decoders(encoder, pix_fmt, options):
    extradata, decoded = _x264_extradata(encoder, pix_fmt, options)
    assert video._sps_pix_fmt(extradata) == decoded


def test_unreadable_or_deep_sps_gives_no_pixel_format():
    assert video._sps_pix_fmt(b"") is None
    assert video._sps_pix_fmt(_x264_extradata("libx264", "yuv420p")[0][:12]) is None  # cut short
    if "yuv420p10le" in [f.name for f in av.codec.Codec("libx264", "w").video_formats]:
        assert video._sps_pix_fmt(_x264_extradata("libx264", "yuv420p10le")[0]) is None


def _drop_first_packet(src, dst):
    """A copy of an mp4 without its first (IDR) packet: a segment that starts mid-GOP."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        s = inp.streams.video[0]
        o = out.add_stream_from_template(s)
        for i, p in enumerate(p for p in inp.demux(s) if p.size):
            if i:
                p.stream = o
                out.mux(p)


@pytest.mark.parametrize(
    "second, match",
    [
        (dict(frames=_moving(5, 32, 64)), r"does not match segment 0 .*size"),
        (dict(codec="lossless"), r"does not match segment 0 .*pix_fmt"),
        (dict(fps=12), r"does not match segment 0 .*frame rate"),
        (dict(first_frame=4), r"starts at frame 4, but the segments before it end at frame 5"),
        (dict(first_frame=9), "in order, without gaps"),
        ("no-idr", "does not begin with an IDR keyframe"),
        ("empty", "no segments"),
    ],
)
def test_mismatched_segments_are_refused(tmp_path, second, match):
    frames = _moving(10)
    encode_segment(frames[:5], tmp_path / "a.mp4", fps=FPS)
    if second == "no-idr":
        encode_segment(frames[5:], tmp_path / "full.mp4", fps=FPS, first_frame=5)
        _drop_first_packet(tmp_path / "full.mp4", tmp_path / "b.mp4")
    elif second != "empty":
        kw = dict(frames=frames[5:], fps=FPS, first_frame=5) | second
        encode_segment(kw.pop("frames"), tmp_path / "b.mp4", **kw)
    paths = [] if second == "empty" else [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    with pytest.raises(ValueError, match=match):
        join_segments(paths, tmp_path / "joined.mp4")
    assert not (tmp_path / "joined.mp4").exists() and not list(tmp_path.glob("*.partial"))


def test_segment_bad_first_frame(tmp_path):
    with pytest.raises(ValueError, match="first_frame"):
        encode_segment(_moving(2), tmp_path / "s.mp4", fps=FPS, first_frame=-1)


def test_render_video_is_its_segments_joined(tmp_path, client):
    """A render encodes its video as segments in parallel tasks and joins them losslessly: the
    result equals the decoded pixels, and the segments are gone once joined."""
    from conftest import tiny_spec

    import supergen_dask as sd
    from storage import RenderStore

    with dask.config.set({"supergen.encode.segment-frames": 4}):
        spec = tiny_spec(output=sd.OutputSettings(codec="lossless"))
        result = sd.render(spec, output_dir=tmp_path / "r", client=client, progress=False)
    assert result.plan.encode_segments() == [(0, 3), (3, 6), (6, 9)]
    assert sum(r["name"].startswith("segment_") for r in result.receipts) == 3
    store = RenderStore.open(str(result.store_path), mode="r")
    np.testing.assert_array_equal(read_video(result.video_path), store.decoded_frames())
    assert not list((result.render_dir / "segments").glob("*.mp4"))


def test_two_writers_of_one_video_never_mix_their_files(tmp_path):
    """Two runs of one render may encode the same video at once: each writes its own temporary
    file and renames it, so the result is one of them, whole."""
    import threading

    rng = np.random.default_rng(5)
    clips = [rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8) for _ in range(2)]
    path = tmp_path / "v.mp4"
    threads = [
        threading.Thread(target=encode_video, args=(clip, path), kwargs={"fps": 8, "codec": "lossless"})
        for clip in clips
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = read_video(path)
    assert any(np.array_equal(got, clip) for clip in clips)
    assert not list(tmp_path.glob("*.partial"))
