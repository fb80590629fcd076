"""Frame sources (decoders) and sinks (encoders) of the video pipeline, and the preview window.

Sources yield :class:`Frame` objects (RGB uint8, presentation timestamp, decode time) and, for
files with sound, the audio packets to copy unchanged:

* :class:`PyAVSource`: a file or a stream URL (``rtsp://``, ``http://``, ``udp://``, ...) decoded
  with PyAV (FFmpeg), multi-threaded; timestamps and audio are passed through;
* :class:`CameraSource`: a capture device by index (OpenCV ``VideoCapture``), e.g. a surgical
  microscope's video output on a capture card; timestamps are the capture times;
* :class:`IterSource`: frames from any Python iterable (tests, applications that grab frames
  themselves).

Sinks: :class:`PyAVSink` encodes H.264 (``libx264``, constant quality ``crf``; any FFmpeg encoder by
name, e.g. ``h264_nvenc``) and muxes the copied audio; :class:`OpenCVSink` writes MPEG-4 Part 2
(``mp4v``) and is only the fallback when PyAV cannot open the output (the reason is recorded).
Live sources keep only the newest frame when inference falls behind (the pipeline drops the
rest and counts them), so latency stays bounded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Frame", "PyAVSource", "CameraSource", "IterSource", "open_source", "PyAVSink", "OpenCVSink",
           "open_sink", "Preview", "is_live_spec", "VideoReadError"]


class VideoReadError(ValueError):
    """A video file is missing, cannot be opened or holds no decodable frame."""


@dataclass
class Frame:
    """One decoded frame."""

    image: np.ndarray  # RGB uint8 (H, W, 3)
    pts: int | None  # presentation timestamp in ``time_base`` units
    time_base: Fraction | None
    t_in: float  # time.perf_counter() when it was decoded / captured


def is_live_spec(spec: Any) -> bool:
    """A camera index (``0``, ``"1"``) or a stream URL (``rtsp://...``) rather than a file."""
    if isinstance(spec, int):
        return True
    text = str(spec)
    return text.isdigit() or "://" in text


def _fraction(value: Any, fallback: float) -> Fraction:
    try:
        f = Fraction(value) if value else Fraction(0)
    except (TypeError, ValueError):
        f = Fraction(0)
    return f if f > 0 else Fraction(fallback).limit_denominator(1001)


class PyAVSource:
    """Decode a file or stream URL with PyAV; audio packets are yielded for copying."""

    def __init__(self, spec: str | Path, fallback_fps: float = 30.0, live: bool | None = None) -> None:
        import av

        self.name = str(spec)
        self.live = is_live_spec(spec) if live is None else live
        if not self.live and not Path(spec).is_file():
            raise VideoReadError(f"{spec}: video file not found")
        try:
            self._c = av.open(str(spec))
            self._v = self._c.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as err:
            raise VideoReadError(f"{spec}: cannot open as a video ({type(err).__name__}: {err})") from None
        self._v.thread_type = "AUTO"  # frame + slice threads: 4K decoding keeps up
        self.audio = self._c.streams.audio[0] if self._c.streams.audio else None
        rate = self._v.average_rate or self._v.guessed_rate
        self.fps_known = bool(rate)
        self.rate = _fraction(rate, fallback_fps)
        self.fps = float(self.rate)
        self.time_base = self._v.time_base or 1 / self.rate
        self.frames = int(self._v.frames or 0) or None
        ctx = self._v.codec_context
        self.size = (int(ctx.width), int(ctx.height))

    def __iter__(self) -> Iterator[Frame | Any]:
        import av

        streams = [self._v] + ([self.audio] if self.audio is not None else [])
        index = 0
        try:
            for packet in self._c.demux(*streams):
                if packet.stream is self._v:
                    for fr in packet.decode():
                        if not isinstance(fr, av.VideoFrame):  # the video stream decodes video frames only
                            continue
                        pts = fr.pts if fr.pts is not None else round(index / self.rate / self.time_base)
                        index += 1
                        yield Frame(fr.to_ndarray(format="rgb24"), pts, self.time_base, time.perf_counter())
                elif packet.dts is not None:  # audio, copied as it is (the flush packet has no dts)
                    yield packet
        except av.FFmpegError as err:
            raise VideoReadError(f"{self.name}: decoding failed after {index} frames ({err})") from None

    def close(self) -> None:
        self._c.close()


class CameraSource:
    """A capture device (OpenCV ``VideoCapture``): live, timestamps from the capture clock."""

    live = True
    audio = None

    def __init__(self, index: int | str, fallback_fps: float = 30.0) -> None:
        import cv2

        self.name = f"camera {index}"
        self._cap = cv2.VideoCapture(int(index))
        if not self._cap.isOpened():
            raise VideoReadError(f"camera {index}: cannot open the capture device (index, permissions, "
                                 "or a headless machine without it)")
        self.rate = _fraction(self._cap.get(cv2.CAP_PROP_FPS), fallback_fps)
        self.fps_known = bool(self._cap.get(cv2.CAP_PROP_FPS))
        self.fps = float(self.rate)
        self.time_base = Fraction(1, 1000)  # capture times in ms: variable frame rate kept
        self.frames = None
        self.size = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        t0 = None
        while True:
            ok, bgr = self._cap.read()
            if not ok:
                return
            t = time.perf_counter()
            t0 = t if t0 is None else t0
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), round((t - t0) * 1000), self.time_base, t)

    def close(self) -> None:
        self._cap.release()


class IterSource:
    """Frames (RGB uint8 arrays) from an iterable; ``live=True`` treats it as a camera (frames may
    be dropped when inference falls behind)."""

    audio = None

    def __init__(self, frames: Iterable[np.ndarray], fps: float, size: tuple[int, int] | None = None,
                 live: bool = False, name: str = "frames") -> None:
        self._frames, self.live, self.name = frames, live, name
        self.rate = _fraction(fps, 30.0)
        self.fps, self.fps_known = float(self.rate), True
        self.time_base = 1 / self.rate
        self.frames = len(frames) if isinstance(frames, Sized) else None
        self.size = size

    def __iter__(self) -> Iterator[Frame]:
        for i, img in enumerate(self._frames):
            yield Frame(np.asarray(img), i, self.time_base, time.perf_counter())

    def close(self) -> None:
        pass


def open_source(spec: Any, fallback_fps: float = 30.0):
    """A source for a file path, a camera index, a stream URL, or an existing source object."""
    if hasattr(spec, "__iter__") and hasattr(spec, "close") and not isinstance(spec, (str, Path)):
        return spec
    if isinstance(spec, int) or str(spec).isdigit():
        return CameraSource(int(spec), fallback_fps)
    return PyAVSource(spec, fallback_fps)


def _even(image: np.ndarray) -> np.ndarray:
    """Edge-pad to even width and height (H.264 4:2:0 chroma is subsampled 2x2)."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class PyAVSink:
    """Encode RGB frames with an FFmpeg encoder (H.264 ``libx264`` by default) and copy audio.

    Args:
        dst: output file (the container follows the extension: .mp4, .mkv, .mov, ...).
        size: (width, height) of the frames to come (odd sizes are padded by one edge pixel).
        rate: nominal frame rate; ``time_base``: of the timestamps the frames carry.
        audio: an input audio stream to copy packets of (None: no audio).
        crf: constant-rate-factor quality (x264: 0 lossless, 18 visually lossless, 23 default).
        preset: x264 speed preset (``veryfast`` keeps up with 4K on a workstation).
        codec: FFmpeg encoder name (``libx264``, ``libx265``, ``h264_nvenc``, ...).
    """

    def __init__(self, dst: str | Path, size: tuple[int, int], rate: Fraction, time_base: Fraction,
                 audio: Any = None, crf: int = 18, preset: str = "veryfast", codec: str = "libx264") -> None:
        import av

        self.warnings: list[str] = []
        w, h = size
        self.size = (w + w % 2, h + h % 2)
        if self.size != (w, h):
            self.warnings.append(f"H.264 4:2:0 needs even sizes: frames padded from {w}x{h} to {self.size[0]}x"
                                 f"{self.size[1]} (one replicated edge pixel)")
        self._c = av.open(str(dst), "w")
        try:
            v = self._c.add_stream(codec, rate=rate)
            if not isinstance(v, av.VideoStream):
                raise ValueError(f"{codec} is not a video encoder")
            self._v = v
            self._v.width, self._v.height = self.size
            self._v.pix_fmt = "yuv420p"
            self._v.time_base = self._v.codec_context.time_base = time_base  # the input's clock, not 1/fps
            quality: dict[str, object] = ({"crf": str(crf), "preset": preset} if codec.startswith("libx26")
                                          else {"cq": str(crf)})
            self._v.options = quality
            self._a = self._add_audio(audio)
            self._c.start_encoding()  # opens the file and writes the header: a bad path fails here
        except BaseException:
            self._c.close()
            raise
        self.name = f"{codec} (PyAV/FFmpeg, {', '.join(f'{k} {v}' for k, v in quality.items())}, yuv420p)"

    def _add_audio(self, audio: Any):
        if audio is None:
            return None
        try:
            return self._c.add_stream_from_template(audio)
        except Exception as err:  # noqa: BLE001 - e.g. a codec the container does not take
            self.warnings.append(f"audio not copied ({audio.codec_context.name} into this container: {err})")
            return None

    def write(self, frame: Frame) -> None:
        import av

        vf = av.VideoFrame.from_ndarray(_even(frame.image), format="rgb24")
        vf.pts, vf.time_base = frame.pts, frame.time_base
        for packet in self._v.encode(vf):
            self._c.mux(packet)

    def mux_audio(self, packet: Any) -> None:
        if self._a is not None:
            packet.stream = self._a
            self._c.mux(packet)

    def close(self) -> None:
        try:
            for packet in self._v.encode():
                self._c.mux(packet)
        finally:
            self._c.close()


class OpenCVSink:
    """The fallback encoder: OpenCV ``VideoWriter`` with ``mp4v`` (no audio, constant frame rate)."""

    def __init__(self, dst: str | Path, size: tuple[int, int], fps: float) -> None:
        import cv2

        self.warnings: list[str] = []
        self._vw = cv2.VideoWriter(str(dst), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
        if not self._vw.isOpened():
            raise OSError(f"{dst}: cannot open a video writer (mp4v, {size[0]}x{size[1]} @ {fps:.2f} FPS)")
        self.name = "mp4v (OpenCV fallback)"

    def write(self, frame: Frame) -> None:
        import cv2

        self._vw.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))

    def mux_audio(self, packet: Any) -> None:
        pass

    def close(self) -> None:
        self._vw.release()


def open_sink(dst: str | Path, size: tuple[int, int], source: Any, crf: int = 18, preset: str = "veryfast",
              codec: str = "libx264"):
    """:class:`PyAVSink` with ``codec`` for ``dst``; when that encoder cannot open (e.g. no NVENC),
    ``libx264``; when PyAV cannot open the output at all, :class:`OpenCVSink`. Every fallback is
    recorded in the sink's ``warnings``; :class:`OSError` naming ``dst`` when nothing can write it."""
    reasons: list[str] = []
    sink: PyAVSink | OpenCVSink
    for name in dict.fromkeys([codec, "libx264"]):
        try:
            sink = PyAVSink(dst, size, source.rate, source.time_base, source.audio, crf, preset, name)
        except Exception as err:  # noqa: BLE001 - any PyAV/FFmpeg failure -> the documented fallback
            reasons.append(f"{name} via PyAV failed ({type(err).__name__}: {err})")
            continue
        sink.warnings[:0] = [f"{r}; wrote {name} instead" for r in reasons]
        return sink
    try:
        sink = OpenCVSink(dst, size, source.fps)
    except OSError as err:
        raise OSError(f"{err}; {'; '.join(reasons)}") from None
    sink.warnings.append("; ".join(reasons) + "; wrote mp4v with OpenCV instead"
                         + ("; audio dropped" if source.audio is not None else ""))
    return sink


class Preview:
    """An optional preview window (``cv2.imshow``). On a headless OpenCV (the ``-headless`` wheels,
    no display) it disables itself with a warning and the pipeline runs on."""

    def __init__(self, title: str = "retina-sr") -> None:
        self.title, self.enabled = title, True
        self.warning: str | None = None
        self._shown = False

    def show(self, rgb: np.ndarray) -> bool:
        """Show a frame; False when the user pressed ``q`` or Esc (stop)."""
        import cv2

        if not self.enabled:
            return True
        try:
            cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as err:
            self.enabled = False
            first = (str(err).strip().splitlines() or [""])[-1][:160]
            self.warning = f"preview window unavailable ({first}); running without it"
            return True
        self._shown = True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self._shown:
            import cv2

            cv2.destroyWindow(self.title)


def percentile_ms(values: list[float], q: float) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds (NaN when empty)."""
    return float(np.percentile(values, q) * 1e3) if values else math.nan
