"""Lazy frame sources, letterbox and its inverse, and VideoSink's atomic writing."""

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from rain_core.io.video import (
    DecodedVideoCache,
    VideoReadError,
    VideoSink,
    VideoSinkError,
    VideoSourceError,
    letterbox,
    open_pose_source,
    probe_video,
    read_video_frames,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
POSE_VIDEO = EXAMPLES / "anyone-video-1_kps.mp4"  # 64 frames, 30 fps, 512x704 (examples/README.md)
POSE_VIDEO_2 = EXAMPLES / "anyone-video-2_kps.mp4"  # 48 frames, 30 fps, 512x768


def gradient_frames(count, height=48, width=64):
    base = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    return [np.broadcast_to(base * (i + 1) / count, (height, width, 3)).copy() for i in range(count)]


def test_example_pose_video_is_decoded_lazily_with_64_frames():
    source = open_pose_source(POSE_VIDEO)
    assert len(source) == 64 and source.fps == pytest.approx(30.0)
    frames = iter(source)
    first = next(frames)  # the first frame arrives before the rest are decoded: a generator, not a list
    assert first.dtype == np.float32 and first.shape == (704, 512, 3)
    assert 0.0 <= first.min() and first.max() <= 1.0 and first.max() > 0.5  # a skeleton on black
    assert 1 + sum(1 for _ in frames) == 64


def test_probe_reads_the_container_of_both_examples():
    first, second = probe_video(POSE_VIDEO), probe_video(POSE_VIDEO_2)
    assert (first.frame_count, first.exact, first.fps, first.width, first.height) == (64, True, 30.0, 512, 704)
    assert (second.frame_count, second.fps, second.width, second.height) == (48, 30.0, 512, 768)
    assert (first.codec, first.pix_fmt) == ("h264", "yuv420p")


def test_read_video_frames_seeks_and_wraps_around_when_looping():
    whole = np.stack(list(open_pose_source(POSE_VIDEO, as_uint8=True)))
    assert len(whole) == 64 and len({frame.tobytes() for frame in whole}) == 64  # the dancer moves every frame
    middle, next_start, total = read_video_frames(POSE_VIDEO, 30, 5)
    assert total == 64 and next_start == 35 and np.array_equal(middle, whole[30:35])
    wrapped, next_start, _ = read_video_frames(POSE_VIDEO, 62, 4, loop=True)
    assert next_start == 2 and np.array_equal(wrapped, np.concatenate([whole[62:], whole[:2]]))
    tail, next_start, _ = read_video_frames(POSE_VIDEO, 62, 4, loop=False)
    assert len(tail) == 2 and next_start == 0 and np.array_equal(tail, whole[62:])
    everything, next_start, _ = read_video_frames(POSE_VIDEO, 0, 0)
    assert next_start == 0 and np.array_equal(everything, whole)
    with pytest.raises(VideoSourceError, match="start_frame: 250 is past the end"):
        read_video_frames(POSE_VIDEO, 250, 4)


def test_decoded_video_cache_answers_exactly_as_reading_the_file(tmp_path):
    cache = DecodedVideoCache()
    for start, count, loop in [(0, 4, True), (30, 5, False), (62, 4, True), (62, 4, False), (0, 0, False),
                               (10, 0, True), (60, 200, True), (64, 4, True), (130, 3, True)]:
        cached = cache.read(POSE_VIDEO, start, count, loop)
        direct = read_video_frames(POSE_VIDEO, start, count, loop)
        assert np.array_equal(cached[0], direct[0]) and cached[1:] == direct[1:], (start, count, loop)
    with pytest.raises(VideoSourceError, match="start_frame: 250 is past the end"):
        cache.read(POSE_VIDEO, 250, 4)
    frames, _, _ = cache.read(POSE_VIDEO, 0, 2)
    frames[:] = 0  # a caller writing into its frames must not change the cache
    assert np.array_equal(cache.read(POSE_VIDEO, 0, 2)[0], read_video_frames(POSE_VIDEO, 0, 2)[0])

    # A file replaced in place (new size and time) is decoded again, not served from the old entry.
    path = tmp_path / "poses.mp4"
    path.write_bytes(POSE_VIDEO.read_bytes())
    assert np.array_equal(cache.read(path, 5, 2)[0], read_video_frames(POSE_VIDEO, 5, 2)[0])
    path.write_bytes(POSE_VIDEO_2.read_bytes())
    assert cache.read(path, 5, 2)[2] == 48
    assert np.array_equal(cache.read(path, 5, 2)[0], read_video_frames(POSE_VIDEO_2, 5, 2)[0])

    # A video larger than the budget is read from the file, with the same answers.
    small = DecodedVideoCache(max_bytes=512 * 704 * 3 * 10)
    assert np.array_equal(small.read(POSE_VIDEO, 62, 4, True)[0], read_video_frames(POSE_VIDEO, 62, 4, True)[0])
    assert np.array_equal(small.read(POSE_VIDEO, 3, 2)[0], read_video_frames(POSE_VIDEO, 3, 2)[0])
    assert not small._entries and len(small._too_large) == 1  # probed once, then read from the file as before


def test_a_clip_is_decoded_chunk_by_chunk_with_the_frames_of_a_read_from_the_cache_or_the_file():
    kept, from_file = DecodedVideoCache(), DecodedVideoCache(max_bytes=512 * 704 * 3 * 10)
    for start, count, loop in [(0, 0, False), (10, 0, True), (60, 200, True), (62, 4, False), (5, 7, False)]:
        direct, next_start, total = read_video_frames(POSE_VIDEO, start, count, loop)
        for cache in (kept, from_file):
            clip = cache.clip(POSE_VIDEO, start, count, loop)
            assert (len(clip), clip.next_start, clip.total) == (len(direct), next_start, total)
            chunks = list(clip.chunks(3))
            assert all(len(chunk) == 3 for chunk in chunks[:-1]) and 1 <= len(chunks[-1]) <= 3
            assert np.array_equal(np.concatenate(chunks), direct), (start, count, loop)
    assert kept._entries and not from_file._entries  # the long one never decoded whole


def test_a_clip_of_a_video_too_large_to_keep_decodes_only_as_it_is_read(monkeypatch):
    import rain_core.io.video.reading as video  # where VideoClip looks its decoder up

    decoded = []
    real = video._decode_rgb

    def counting(*args, **kwargs):
        for frame in real(*args, **kwargs):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(video, "_decode_rgb", counting)
    clip = DecodedVideoCache(max_bytes=1).clip(POSE_VIDEO, 0, 0)
    assert len(clip) == 64 and not decoded  # the length comes from the container, not from decoding
    chunks = clip.chunks(4)
    next(chunks)
    assert len(decoded) == 4  # one chunk decoded, not the video
    chunks.close()


def truncated_copy(source: Path, folder: Path, keep: float) -> Path:
    """The first `keep` of the bytes of a video written moov-first: the container still lists every frame."""
    path = folder / "truncated.mp4"
    with VideoSink(path, fps=30) as sink:
        for frame in open_pose_source(source, as_uint8=True):
            sink.write(frame)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_a_truncated_video_raises_video_read_error_with_both_counts(tmp_path):
    path = truncated_copy(POSE_VIDEO, tmp_path, 0.5)
    source = open_pose_source(path)
    assert len(source) == 64  # the header is intact and still promises 64 frames
    with pytest.raises(VideoReadError, match="container lists 64") as error:
        list(source)
    assert error.value.expected == 64 and 0 < error.value.decoded < 64
    with pytest.raises(VideoReadError, match="video_path: .*truncated") as error:
        read_video_frames(path, 0, 0, name="video_path")
    assert error.value.expected == 64 and error.value.decoded < 64
    readable, _, _ = read_video_frames(path, 0, 4)  # the frames before the damage still read
    assert len(readable) == 4
    clip = DecodedVideoCache(max_bytes=1).clip(path, 0, 0, name="video_path")  # read lazily: fails where it breaks
    with pytest.raises(VideoReadError, match="video_path: .*truncated") as error:
        for _ in clip.chunks(4):
            pass
    assert error.value.expected == 64 and error.value.decoded < 64


def test_a_video_cut_before_its_index_cannot_be_opened(tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(POSE_VIDEO.read_bytes()[:4000])  # the example keeps its index at the end: now missing
    with pytest.raises(VideoSourceError, match="cannot"):
        open_pose_source(cut)


def test_a_webm_without_a_frame_index_is_counted_from_its_duration(tmp_path):
    path = tmp_path / "levels.webm"  # VP8 in WebM: the container keeps a duration, no frame count
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe_video(path)
    assert (info.frame_count, info.exact, info.fps, info.codec) == (12, False, 10.0, "vp8")
    frames, next_start, total = read_video_frames(path, 10, 4, loop=True)
    levels = [int(frame.mean()) for frame in frames]
    assert total == 12 and next_start == 2 and [round(level / 20) for level in levels] == [10, 11, 0, 1]


def test_read_video_frames_names_the_input_of_an_unreadable_file(tmp_path):
    bad = tmp_path / "poses.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoSourceError, match="video_path: cannot open"):
        read_video_frames(bad, 0, 4, name="video_path")


def test_source_letterboxes_to_the_model_size_as_uint8():
    source = open_pose_source(POSE_VIDEO, as_uint8=True, size=(512, 512))
    frame = next(iter(source))
    assert frame.dtype == np.uint8 and frame.shape == (512, 512, 3)
    # 704x512 fits as 512x372 centred: 70 black columns each side
    assert not frame[:, :69].any() and not frame[:, -69:].any()


def test_image_folder_source_yields_frames_in_name_order(tmp_path):
    for i, frame in enumerate(gradient_frames(3)):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), (frame * 255).astype(np.uint8))
    source = open_pose_source(tmp_path, as_uint8=True, fps=12)
    frames = list(source)
    assert len(source) == 3 and source.fps == 12
    assert [int(f[0, -1, 0]) for f in frames] == [85, 170, 255]


def test_missing_and_unreadable_inputs_raise_value_errors(tmp_path):
    with pytest.raises(VideoSourceError, match="no such file"):
        open_pose_source(tmp_path / "nothing.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoSourceError, match="cannot open .* as a video"):
        open_pose_source(tmp_path / "broken.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        open_pose_source(tmp_path / "empty")


def test_letterbox_fits_without_distortion_and_inverts():
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    frame[:, :100] = 255  # left half white
    boxed, info = letterbox(frame, 256, 256)
    assert boxed.shape == (256, 256, 3) and (info.top, info.content_height, info.content_width) == (64, 128, 256)
    assert not boxed[:64].any() and not boxed[-64:].any()
    assert boxed[64:192, :120].min() == 255 and not boxed[64:192, 136:].any()  # interpolated only at the edge
    x, y = info.to_canvas(np.array([0, 200]), np.array([0, 100]))
    assert x.tolist() == [0, 256] and y.tolist() == [64, 192]
    assert [v.tolist() for v in info.to_source(x, y)] == [[0, 200], [0, 100]]
    restored = info.restore(boxed)
    assert restored.shape == frame.shape and np.abs(restored.astype(int) - frame).mean() < 3


def test_video_sink_writes_h264_yuv420p_that_reads_back(tmp_path):
    path = tmp_path / "out.mp4"
    frames = np.stack(gradient_frames(5))
    with VideoSink(path, fps=8) as sink:
        sink.write(frames)
    assert sink.output_path == path and path.exists() and not sink.padded
    with av.open(str(path)) as container:  # decoded by FFmpeg directly, not through our reader
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert stream.frames == 5 and stream.average_rate == 8
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(decoded) == 5 and decoded[0].shape == (48, 64, 3)
    error = np.abs(np.stack(decoded).astype(int) - (frames * 255).round().astype(int))
    assert error.mean() < 2.0  # crf 18 on smooth gradients
    assert path.read_bytes()[4:8] == b"ftyp" and b"moov" in path.read_bytes()[:64]  # index first: streams at once
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temp file left


def test_video_sink_pads_odd_sizes_for_yuv420p(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoSink(path, fps=30000 / 1001) as sink:
        sink.write(np.full((3, 33, 45, 3), 200, np.uint8))
    assert sink.padded
    info = probe_video(path)
    assert (info.width, info.height, info.frame_count) == (46, 34, 3)
    assert info.fps == pytest.approx(29.97, abs=0.01)


def test_video_sink_round_trips_the_example_pose_video(tmp_path):
    path = tmp_path / "copy.mp4"
    original = [frame for frame in open_pose_source(POSE_VIDEO_2, as_uint8=True)]
    with VideoSink(path, fps=30) as sink:
        for frame in original:
            sink.write(frame)
    copy, _, total = read_video_frames(path, 0, 0)
    assert total == 48 and copy.shape == (48, 768, 512, 3)
    assert np.abs(copy.astype(int) - np.stack(original)).mean() < 2.0


def test_video_sink_png_sequence_for_a_folder_path(tmp_path):
    with VideoSink(tmp_path / "frames") as sink:
        for frame in gradient_frames(3):
            sink.write(frame)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_{i:06d}.png" for i in range(3)]


def test_video_sink_error_keeps_the_previous_good_file_and_removes_the_partial(tmp_path):
    path = tmp_path / "out.mp4"
    with VideoSink(path) as sink:
        sink.write(np.stack(gradient_frames(2)))
    good = path.read_bytes()
    with pytest.raises(RuntimeError), VideoSink(path) as sink:
        sink.write(np.stack(gradient_frames(4)))
        raise RuntimeError("stream interrupted")
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_video_sink_rejects_missing_folder_and_mixed_frame_sizes(tmp_path):
    with pytest.raises(VideoSinkError, match="does not exist"):
        VideoSink(tmp_path / "missing" / "out.mp4")
    sink = VideoSink(tmp_path / "out.mp4")
    sink.write(gradient_frames(1)[0])
    with pytest.raises(VideoSinkError, match="same size"):
        sink.write(np.zeros((10, 10, 3), np.uint8))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_written_video_and_png_folder_get_the_users_umask(tmp_path):
    import os

    from rain_core.io.video import VideoSink

    old = os.umask(0o022)
    try:
        frames = np.zeros((4, 16, 16, 3), dtype=np.float32)
        for target in (tmp_path / "clip.mp4", tmp_path / "frames"):
            sink = VideoSink(target, fps=10)
            sink.write(frames)
            written = Path(sink.close())
            assert (written.stat().st_mode & 0o777) == (0o755 if written.is_dir() else 0o644), written
    finally:
        os.umask(old)
