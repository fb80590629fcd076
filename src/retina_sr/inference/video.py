"""Streaming video enhancement: decode, enhance and encode overlap in a three-stage pipeline.

A reader thread pulls frames from a source (a file or stream decoded with PyAV, a camera, or any
frame iterable; :mod:`~retina_sr.inference.video_io`) into a bounded queue, the calling thread
enhances them (and shows them in an optional preview window), and a writer thread encodes them
(H.264 through PyAV, audio packets and timestamps copied from the input) from a second bounded
queue. FFmpeg's decoders/encoders and the PyTorch/ONNX Runtime kernels release the GIL, so the
three stages run concurrently, and the bounded queues keep memory flat for any length. A live
source keeps only the newest frame when inference falls behind (the skipped frames are counted).

The report gives the achieved throughput against the input's frame rate and the end-to-end
latency of each frame (decoded -> encoded/shown; p50 and p99), which is what a surgeon watching a
microscope feed notices, as well as the enhancement time alone.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .base import BaseEnhancer
from .video_io import Frame, Preview, VideoReadError, open_sink, open_source, percentile_ms

__all__ = ["VIDEO_EXTENSIONS", "VideoReadError", "VideoReport", "probe_video", "enhance_video"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
_END = object()


@dataclass
class VideoReport:
    """Outcome of :func:`enhance_video`."""

    input: str
    output: str | None
    frames: int
    in_size: tuple[int, int]  # (width, height)
    out_size: tuple[int, int]
    input_fps: float
    achieved_fps: float  # frames / wall-clock seconds of the whole pipeline
    seconds: float
    realtime: bool  # achieved_fps >= input_fps
    mode: str
    latency_p50_ms: float = math.nan  # decoded/captured -> encoded (or shown), per frame
    latency_p99_ms: float = math.nan
    enhance_p50_ms: float = math.nan  # the enhancement alone
    enhance_p99_ms: float = math.nan
    encoder: str = ""
    dropped: int = 0  # live sources: frames skipped because inference was behind
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        keeps = "keeps" if self.realtime else "does NOT keep"
        text = (f"{self.frames} frames {self.in_size[0]}x{self.in_size[1]} -> {self.out_size[0]}x{self.out_size[1]} "
                f"in {self.seconds:.2f} s: {self.achieved_fps:.2f} FPS achieved vs {self.input_fps:.2f} FPS input "
                f"-> {keeps} real time; latency p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms "
                f"(enhance p50 {self.enhance_p50_ms:.1f} ms) ({self.mode}; {self.encoder or 'no output file'})")
        if self.dropped:
            text += f"; {self.dropped} live frames dropped"
        return text


def probe_video(path: str | Path) -> tuple[float, int, int, int]:
    """``(fps, frame_count, width, height)`` of a readable video file (count 0 when the container
    does not say); :class:`VideoReadError` otherwise."""
    from .video_io import PyAVSource

    src = PyAVSource(path, live=False)
    try:
        first = next((item for item in src if isinstance(item, Frame)), None)
        if first is None:
            raise VideoReadError(f"{path}: no decodable frame (corrupt, empty or unsupported video)")
        return (src.fps if src.fps_known else 0.0), int(src.frames or 0), first.image.shape[1], first.image.shape[0]
    finally:
        src.close()


class _Pipeline:
    """The three stages and what they share (queues, stop flag, first error, timings)."""

    def __init__(self, source: Any, queue_size: int) -> None:
        self.source = source
        self.q_in: queue.Queue = queue.Queue(maxsize=1 if source.live else queue_size)
        self.q_out: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.latencies: list[float] = []
        self.dropped = 0
        self.sink: Any = None

    def put(self, q: queue.Queue, item: Any) -> bool:
        """Blocking put that gives up once the pipeline is stopped (no thread waits forever)."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def put_latest(self, item: Any) -> None:
        """Live sources: replace a frame inference has not taken yet (bounded latency)."""
        while True:
            try:
                self.q_in.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.q_in.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, q: queue.Queue) -> Any:
        """The next item, or ``_END`` once stopped (a timeout, never a blocking wait)."""
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return _END

    def read(self) -> None:
        try:
            for item in self.source:
                if self.stop.is_set():
                    return
                if self.source.live and isinstance(item, Frame):
                    self.put_latest(item)
                elif not self.put(self.q_in, item):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.errors.append(err)
            self.stop.set()
        finally:
            self.put(self.q_in, _END)

    def write(self, open_output: Any) -> None:
        pending: list[Any] = []  # audio that arrives before the first frame opens the encoder
        try:
            while (item := self.get(self.q_out)) is not _END:
                if not isinstance(item, Frame):
                    if self.sink is None:
                        pending.append(item)
                    elif self.sink:
                        self.sink.mux_audio(item)
                    continue
                if self.sink is None:
                    self.sink = open_output(item)
                    for packet in pending:
                        self.sink.mux_audio(packet)
                if self.sink is not False:
                    self.sink.write(item)
                self.latencies.append(time.perf_counter() - item.t_in)
            if self.sink:
                self.sink.close()  # flushes the encoder: may still fail (disk full)
        except BaseException as err:  # noqa: BLE001
            self.errors.append(err)
            self.stop.set()
            if self.sink:
                with contextlib.suppress(Exception):
                    self.sink.close()


@dataclass
class _Counts:
    frames: int = 0
    in_size: tuple[int, int] = (0, 0)
    out_size: tuple[int, int] = (0, 0)
    times: list[float] = field(default_factory=list)  # seconds of each enhancement


def _frame_loop(pipe: _Pipeline, enhance: Any, preview: Preview | None, max_frames: int | None,
                progress: Any) -> _Counts:
    """The calling thread's stage: enhance every frame, preview it, pass it on. Ctrl-C ends a live
    source normally (what was recorded is kept); it aborts a file."""
    c = _Counts()
    try:
        _loop(pipe, enhance, preview, max_frames, progress, c)
    except KeyboardInterrupt:
        if not pipe.source.live:
            raise
    return c


def _loop(pipe: _Pipeline, enhance: Any, preview: Preview | None, max_frames: int | None, progress: Any,
          c: _Counts) -> None:
    while (item := pipe.get(pipe.q_in)) is not _END and not pipe.stop.is_set():
        if not isinstance(item, Frame):  # audio: straight to the encoder
            if not pipe.put(pipe.q_out, item):
                break
            continue
        t0 = time.perf_counter()
        out = Frame(enhance(item.image), item.pts, item.time_base, item.t_in)
        c.times.append(time.perf_counter() - t0)
        go_on = preview.show(out.image) if preview is not None else True
        if not pipe.put(pipe.q_out, out):
            break
        c.frames += 1
        c.in_size, c.out_size = item.image.shape[1::-1], out.image.shape[1::-1]
        progress.update(1)
        if not go_on or (max_frames is not None and c.frames >= max_frames):
            break


def _same_file(a: Any, b: Any) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (or is a URL / camera)
        return False


@dataclass
class _Options:
    zoom: float
    roi: tuple[int, int, int, int] | None
    tile: int | None
    overlap: int | None
    queue_size: int
    progress: bool
    crf: int
    preset: str
    codec: str
    preview: bool
    max_frames: int | None


def enhance_video(
    enhancer: BaseEnhancer,
    src: Any,
    dst: str | Path | None,
    zoom: float,
    roi: tuple[int, int, int, int] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    queue_size: int = 8,
    progress: bool = True,
    fallback_fps: float = 30.0,
    crf: int = 18,
    preset: str = "veryfast",
    codec: str = "libx264",
    preview: bool = False,
    max_frames: int | None = None,
) -> VideoReport:
    """Enhance every frame of ``src`` at ``zoom`` (optionally only ``roi``) into ``dst``.

    Args:
        src: a video file, a stream URL, a camera index (``0``), or a source object
            (:class:`~retina_sr.inference.video_io.IterSource` for frames you grab yourself).
        dst: the output video (H.264 via PyAV with ``crf``/``preset``/``codec``; mp4v via OpenCV
            only if that fails, said in ``report.warnings``), or None (preview/measure only).
        preview: show each enhanced frame in a window (``q``/Esc stops; ignored without a display).
        max_frames: stop after this many frames (a live source otherwise runs until it ends).

    When the container reports no frame rate, ``fallback_fps`` is used for the output and the
    real-time verdict (and said so in a warning).
    """
    source = open_source(src, fallback_fps)
    try:
        if dst is not None and isinstance(src, (str, Path)) and _same_file(src, dst):
            raise VideoReadError(f"{dst}: is the input video itself; write the result to another file")
        if not source.fps_known:
            warnings.warn(f"{source.name}: no frame rate in the container; assuming {fallback_fps} FPS", stacklevel=2)
        opts = _Options(zoom, roi, tile, overlap, queue_size, progress, crf, preset, codec, preview, max_frames)
        return _run(enhancer, source, dst, opts)
    finally:
        source.close()


def _run(enhancer: BaseEnhancer, source: Any, dst: str | Path | None, o: _Options) -> VideoReport:
    from tqdm import tqdm

    pipe = _Pipeline(source, o.queue_size)
    if dst is not None:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)

    def open_output(first: Frame) -> Any:
        if dst is None:
            return False
        return open_sink(dst, (first.image.shape[1], first.image.shape[0]), source, o.crf, o.preset, o.codec)

    if getattr(enhancer, "needs_warmup", False) and source.size:  # compile / capture CUDA graphs before the clock starts
        enhancer.warmup(source.size, [o.zoom], roi=o.roi)
    window = Preview(f"retina-sr x{o.zoom:g}") if o.preview else None
    threads = [threading.Thread(target=pipe.read, name="video-decode", daemon=True),
               threading.Thread(target=pipe.write, args=(open_output,), name="video-encode", daemon=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    bar = tqdm(total=source.frames or None, unit="frame", desc=Path(str(source.name)).name, disable=not o.progress)
    try:
        counts = _frame_loop(
            pipe, lambda img: enhancer.enhance(img, o.zoom, roi=o.roi, tile=o.tile, overlap=o.overlap), window,
            o.max_frames, bar)
    except BaseException:
        pipe.stop.set()
        raise
    finally:
        bar.close()
        pipe.put(pipe.q_out, _END)  # normal end: the writer drains the queue; after an error `stop` ends it
        threads[1].join()
        pipe.stop.set()
        threads[0].join(timeout=5)
        if window is not None:
            window.close()
    seconds = time.perf_counter() - t0
    if pipe.errors:
        raise pipe.errors[0]
    if counts.frames == 0:
        raise VideoReadError(f"{source.name}: no frame could be decoded")
    return _report(enhancer, source, dst, pipe, window, counts, seconds)


def _report(enhancer: BaseEnhancer, source: Any, dst: Any, pipe: _Pipeline, window: Preview | None, c: _Counts,
            seconds: float) -> VideoReport:
    achieved = c.frames / seconds if seconds > 0 else float("inf")
    notes = list(getattr(pipe.sink, "warnings", None) or [])
    if window is not None and window.warning:
        notes.append(window.warning)
    if not source.fps_known:
        notes.append(f"no frame rate in the input; assumed {source.fps:g} FPS")
    return VideoReport(
        str(source.name), str(dst) if dst is not None else None, c.frames, c.in_size, c.out_size,
        source.fps, achieved, seconds, achieved >= source.fps, getattr(enhancer, "mode", type(enhancer).__name__),
        percentile_ms(pipe.latencies, 50), percentile_ms(pipe.latencies, 99), percentile_ms(c.times, 50),
        percentile_ms(c.times, 99), pipe.sink.name if pipe.sink else "", pipe.dropped, notes)
