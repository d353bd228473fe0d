"""Video segmentation (segformer.video, segformer.video_source) on clips made here with PyAV: frame count, size and
rate kept, label frames equal ``Segmenter.predict`` on the decoded frames, overlays close to ``visualize.overlay``,
confidence and smoothing against NumPy, errors naming the file, and the live queue's dropping."""

import threading
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

import segformer
from reference import decoded, numpy_confidence, write_clip, write_sound
from segformer.config import TestProtocol
from segformer.inference import Segmenter
from segformer.video import overlay_size, predict_video
from segformer.video_source import FrameQueue, read_ahead
from segformer.visualize import model_palette, overlay

RATE = Fraction(30000, 1001)
HEIGHT, WIDTH, FRAMES = 64, 96, 12
NAMES = ["sky", "road", "tree"]


def scene(k: int) -> np.ndarray:
    """Frame k: smooth gradients and a moving square (easy for H.264, varied for the network)."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    image = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, np.full_like(x, 40 + 15 * k)], axis=-1)
    image[10:34, 6 * k : 6 * k + 24] = [230, 200, 30]
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def segmenter(one_thread):
    torch.manual_seed(0)
    model = segformer.create_model("b0", num_classes=3, class_names=NAMES)
    return Segmenter(model, TestProtocol(mode="whole", scale=None))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A lossless (FFV1 RGB) .mkv: decoded frames are the frames written."""
    path = tmp_path_factory.mktemp("clip") / "clip.mkv"
    write_clip(path, [scene(k) for k in range(FRAMES)], RATE)
    frames, _ = decoded(path)
    assert all(np.array_equal(a, scene(k)) for k, a in enumerate(frames))
    return path


@pytest.fixture(scope="module")
def frames(clip):
    return decoded(clip)[0]


@pytest.fixture(scope="module")
def labels(segmenter, frames):
    return [segmenter.predict(image) for image in frames]


@pytest.fixture(scope="module")
def outputs(segmenter, clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    stats = predict_video(segmenter, clip, out / "overlay.mp4", labels_out=out / "labels.mkv", batch_size=5)
    return out, stats


def check_stream(info: dict, width: int, height: int) -> None:
    assert (info["size"], info["rate"]) == ((width, height), RATE)


def through_yuv420(picture: np.ndarray) -> np.ndarray:
    """``picture`` after the encoder's colour conversion (4:2:0 chroma), without the codec's loss."""
    height, width = picture.shape[:2]
    even = np.pad(picture, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    frame = av.VideoFrame.from_ndarray(even, format="rgb24").reformat(format="yuv420p")
    return frame.to_ndarray(format="rgb24")[:height, :width]


def labels_of_blend(picture: np.ndarray, image: np.ndarray, palette: np.ndarray, alpha: float) -> np.ndarray:
    """Per pixel, the class whose blend (1 − α)·photo + α·colour is nearest to the decoded overlay pixel."""
    blends = (1 - alpha) * image[None].astype(float) + alpha * palette[:, None, None].astype(float)
    return np.abs(picture[None, :HEIGHT, :WIDTH].astype(float) - blends).sum(axis=-1).argmin(axis=0)


def check_overlays(stored, frames, labels, palette, alpha, canvas) -> None:
    """Each decoded overlay frame is close to visualize.overlay (passed through 4:2:0) on the white canvas, and
    its colours give the predicted classes (a neighbouring frame's labels match only 75 to 96 % of pixels)."""
    for k, (picture, image, label) in enumerate(zip(stored, frames, labels, strict=True)):
        drawn = np.asarray(overlay(image, label, palette, NAMES, alpha=alpha))
        assert drawn.shape[1] <= canvas[1] and (drawn.shape[0] <= canvas[0] or canvas == (HEIGHT, WIDTH))
        drawn = drawn[: canvas[0]]  # without the legend: the blended photo
        expected = np.full((*canvas, 3), 255, np.uint8)
        expected[: drawn.shape[0], : drawn.shape[1]] = drawn
        error = np.abs(picture[: canvas[0], : canvas[1]].astype(int) - through_yuv420(expected)).mean()
        assert error < 3, f"frame {k}: mean difference {error:.2f} from visualize.overlay"
        agreement = (labels_of_blend(picture, image, palette, alpha) == label).mean()
        assert agreement > 0.985, f"frame {k}: the overlay's colours give the label of {agreement:.1%} of pixels"


def test_label_video_equals_predict_on_every_frame(outputs, labels):
    out, stats = outputs
    stored, info = decoded(out / "labels.mkv", format="gray")
    check_stream(info, WIDTH, HEIGHT)
    assert len(stored) == FRAMES == stats.frames and stats.dropped == 0
    for k, (label, expected) in enumerate(zip(stored, labels, strict=True)):
        np.testing.assert_array_equal(label, expected, err_msg=f"frame {k}")
    assert len(np.unique(np.concatenate(labels))) == 3  # all classes occur: a wrong label would show
    assert sorted(p.name for p in out.iterdir()) == ["labels.mkv", "overlay.mp4"]  # no temporary files left


def test_overlay_video_is_visualize_overlay_of_each_frame(outputs, segmenter, frames, labels):
    out, _ = outputs
    palette = model_palette(segmenter.model.config)
    height, width = overlay_size(HEIGHT, WIDTH, palette, NAMES)
    assert height > HEIGHT  # room for the legend
    stored, info = decoded(out / "overlay.mp4")
    check_stream(info, width + width % 2, height + height % 2)
    assert len(stored) == FRAMES and info["codec"] == "h264"
    check_overlays(stored, frames, labels, palette, 0.5, (height, width))


def test_mpeg4_without_legend_keeps_the_input_size(segmenter, clip, frames, labels, tmp_path):
    predict_video(segmenter, clip, tmp_path / "plain.avi", legend=False, codec="mpeg4", alpha=0.3, progress=False)
    stored, info = decoded(tmp_path / "plain.avi")
    check_stream(info, WIDTH, HEIGHT)
    assert len(stored) == FRAMES and info["codec"] == "mpeg4"
    check_overlays(stored, frames, labels, model_palette(segmenter.model.config), 0.3, (HEIGHT, WIDTH))


def test_odd_sides_are_padded_to_even(segmenter, tmp_path):
    write_clip(tmp_path / "odd.mkv", [scene(k)[:63, :95] for k in range(3)], RATE)
    predict_video(segmenter, tmp_path / "odd.mkv", tmp_path / "odd.mp4", labels_out=tmp_path / "l.mkv", legend=False)
    stored, info = decoded(tmp_path / "odd.mp4")
    assert (info["size"], len(stored)) == ((96, 64), 3)
    assert decoded(tmp_path / "l.mkv", format="gray")[1]["size"] == (95, 63)


def test_confidence_video_equals_numpy_from_predict_logits(segmenter, clip, frames, labels, tmp_path):
    predict_video(segmenter, clip, None, labels_out=tmp_path / "l.mkv", scores_out=tmp_path / "s.mkv")
    top, info = decoded(tmp_path / "s.mkv", 0, "gray16le")
    entropy, _ = decoded(tmp_path / "s.mkv", 1, "gray16le")
    check_stream(info, WIDTH, HEIGHT)
    for k, image in enumerate(frames):
        expected_top, expected_entropy = numpy_confidence(segmenter.predict_logits(image).numpy())
        np.testing.assert_array_equal(top[k], expected_top.astype(np.uint16))
        np.testing.assert_array_equal(entropy[k], expected_entropy.astype(np.uint16))
    stored = decoded(tmp_path / "l.mkv", format="gray")[0]
    assert all(np.array_equal(a, b) for a, b in zip(stored, labels, strict=True))  # probabilities' argmax


def numpy_softmax(logits: torch.Tensor) -> np.ndarray:
    logits = logits.numpy().astype(np.float64)
    exp = np.exp(logits - logits.max(axis=0))
    return exp / exp.sum(axis=0)


def test_smoothing_is_a_moving_average_of_the_probabilities(segmenter, clip, frames, labels, tmp_path):
    predict_video(segmenter, clip, None, labels_out=tmp_path / "zero.mkv", smooth=0.0)
    predict_video(segmenter, clip, None, labels_out=tmp_path / "ema.mkv", smooth=0.6, batch_size=3)
    zero, ema = (decoded(tmp_path / name, format="gray")[0] for name in ("zero.mkv", "ema.mkv"))
    assert all(np.array_equal(a, b) for a, b in zip(zero, labels, strict=True))
    average = None
    for k, image in enumerate(frames):
        p = numpy_softmax(segmenter.predict_logits(image))
        average = p if average is None else 0.6 * average + 0.4 * p
        np.testing.assert_array_equal(ema[k], average.argmax(axis=0), err_msg=f"frame {k}")
    assert any(not np.array_equal(a, b) for a, b in zip(ema, labels, strict=True))  # smoothing changed labels


def test_truncated_file_is_reported_by_name_and_nothing_is_written(segmenter, clip, tmp_path):
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size * 6 // 10])
    with pytest.raises(ValueError, match=r"cut\.mkv: decoding stopped at frame \d+ .* lasts for 12 frames"):
        predict_video(segmenter, cut, tmp_path / "o.mp4", labels_out=tmp_path / "l.mkv", batch_size=2)
    mp4 = tmp_path / "cut.mp4"
    write_clip(mp4, [scene(k) for k in range(4)], RATE, codec="libx264", pix_fmt="yuv420p")
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size * 6 // 10])  # the index (moov) comes last
    with pytest.raises(ValueError, match=r"cut\.mp4: cannot open as a video"):
        predict_video(segmenter, mp4, tmp_path / "o.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mkv", "cut.mp4"]


def test_inputs_without_video_are_reported(segmenter, tmp_path):
    sound = tmp_path / "sound.mka"
    write_sound(sound)
    with pytest.raises(ValueError, match=r"sound\.mka: no video stream \(it has 1 audio stream\)"):
        predict_video(segmenter, sound, tmp_path / "o.mp4")
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ValueError, match=r"notes\.mp4: cannot open as a video"):
        predict_video(segmenter, tmp_path / "notes.mp4", tmp_path / "o.mp4")
    with pytest.raises(ValueError, match=r"missing\.mp4: no such video file"):
        predict_video(segmenter, tmp_path / "missing.mp4", tmp_path / "o.mp4")
    with pytest.raises(ValueError, match=r"rtsp://127\.0\.0\.1:1/cam: cannot open as a video"):
        predict_video(segmenter, "rtsp://127.0.0.1:1/cam", tmp_path / "o.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4", "sound.mka"]


def test_output_names_are_checked(segmenter, clip, tmp_path):
    with pytest.raises(ValueError, match=r"o\.gif: unknown overlay video type '\.gif'; expected \.mp4"):
        predict_video(segmenter, clip, tmp_path / "o.gif")
    with pytest.raises(ValueError, match=r"l\.mp4: the label video is lossless FFV1 in Matroska; name it \.mkv"):
        predict_video(segmenter, clip, tmp_path / "o.mp4", labels_out=tmp_path / "l.mp4")
    with pytest.raises(ValueError, match="smooth is the weight of the past frames, in \\[0, 1\\); got 1.0"):
        predict_video(segmenter, clip, tmp_path / "o.mp4", smooth=1.0)
    with pytest.raises(ValueError, match="must differ"):
        predict_video(segmenter, clip, tmp_path / "o.mp4", labels_out=clip)


def test_live_queue_drops_all_but_the_newest_frame_for_a_slow_consumer():
    first_taken, produced_all = threading.Event(), threading.Event()

    def camera():  # a fake frame source: frame 0, then (once frame 0 is taken) frames 1 to 9 at once
        yield 0
        first_taken.wait()
        yield from range(1, 10)
        produced_all.set()  # reached once frame 9 is queued

    queue = FrameQueue(capacity=1, drop_oldest=True)
    thread = read_ahead(camera(), queue)
    assert queue.take(4, wait_for_all=False) == [0]
    first_taken.set()
    produced_all.wait()  # the consumer is slow: the whole stream arrives while it works
    assert queue.take(4, wait_for_all=False) == [9]  # the newest frame, not the oldest
    assert queue.take(4, wait_for_all=False) == []
    thread.join()
    assert queue.dropped == 8  # frames 1 to 8


def test_file_queue_waits_instead_of_dropping():
    queue = FrameQueue(capacity=4, drop_oldest=False)
    thread = read_ahead(iter(range(11)), queue)
    taken = []
    while batch := queue.take(3, wait_for_all=True):
        assert len(batch) == 3 or taken == list(range(9))  # full batches but the last
        taken += batch
    thread.join()
    assert (taken, queue.dropped) == (list(range(11)), 0)


def test_decode_errors_reach_the_consumer_after_the_frames_before_them():
    def broken():
        yield from range(3)
        raise ValueError("clip.mkv: cannot decode frame 3")

    queue = FrameQueue(capacity=8, drop_oldest=False)
    read_ahead(broken(), queue).join()
    assert queue.take(8, wait_for_all=True) == [0, 1, 2]
    with pytest.raises(ValueError, match="cannot decode frame 3"):
        queue.take(8, wait_for_all=True)


def test_live_run_on_a_file_writes_the_frames_it_kept_at_their_times(segmenter, clip, labels, tmp_path):
    stats = predict_video(segmenter, clip, None, labels_out=tmp_path / "l.mkv", live=True, batch_size=2)
    with av.open(str(tmp_path / "l.mkv")) as container:
        stream = container.streams.video[0]
        kept = [(round(frame.pts * stream.time_base * RATE), frame.to_ndarray()) for frame in container.decode(stream)]
    assert stats.frames == len(kept) and stats.frames + stats.dropped == FRAMES
    assert kept[-1][0] == FRAMES - 1  # the stream's last frame is never dropped
    for index, label in kept:
        np.testing.assert_array_equal(label, labels[index], err_msg=f"frame {index}")
