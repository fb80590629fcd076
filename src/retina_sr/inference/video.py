"""Streaming video enhancement: decode, enhance and encode overlap in a three-stage pipeline.

A reader thread decodes frames (OpenCV ``VideoCapture``) into a bounded queue, the calling thread
enhances them, and a writer thread encodes the results (``VideoWriter``, ``mp4v``) from a second
bounded queue. OpenCV's decode/encode and PyTorch/ONNX Runtime kernels release the GIL, so the
three stages run concurrently; the bounded queues keep memory flat (back-pressure) for any length.
The achieved throughput is compared with the input's frame rate to say whether the setup keeps up
in real time.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2

from .enhancer import BaseEnhancer

__all__ = ["VIDEO_EXTENSIONS", "VideoReadError", "VideoReport", "probe_video", "enhance_video"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
_END = object()


class VideoReadError(ValueError):
    """A video file is missing, cannot be opened or holds no decodable frame."""


@dataclass
class VideoReport:
    """Outcome of :func:`enhance_video`."""

    input: str
    output: str
    frames: int
    in_size: tuple[int, int]  # (width, height)
    out_size: tuple[int, int]
    input_fps: float
    achieved_fps: float  # frames / wall-clock seconds of the whole pipeline
    seconds: float
    realtime: bool  # achieved_fps >= input_fps
    mode: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        keeps = "keeps" if self.realtime else "does NOT keep"
        return (f"{self.frames} frames {self.in_size[0]}x{self.in_size[1]} -> {self.out_size[0]}x{self.out_size[1]} "
                f"in {self.seconds:.2f} s: {self.achieved_fps:.2f} FPS achieved vs {self.input_fps:.2f} FPS input "
                f"-> {keeps} real time ({self.mode})")


def probe_video(path: str | Path) -> tuple[float, int, int, int]:
    """``(fps, frame_count, width, height)`` of a readable video; :class:`VideoReadError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: video file not found")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoReadError(f"{path}: cannot open as a video (corrupt file or codec not supported by OpenCV)")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise VideoReadError(f"{path}: no decodable frame (corrupt, empty or unsupported video)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return fps, count, frame.shape[1], frame.shape[0]
    finally:
        cap.release()


def enhance_video(
    enhancer: BaseEnhancer,
    src: str | Path,
    dst: str | Path,
    zoom: float,
    roi: tuple[int, int, int, int] | None = None,
    tile: int | None = None,
    overlap: int = 32,
    queue_size: int = 8,
    progress: bool = True,
    fallback_fps: float = 30.0,
) -> VideoReport:
    """Enhance every frame of ``src`` at ``zoom`` (optionally only ``roi``) into ``dst`` (mp4v).

    When the container reports no frame rate, ``fallback_fps`` is used for the output and the
    real-time verdict (and said so in a warning).
    """
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    fps, count, _, _ = probe_video(src)
    if dst.exists() and os.path.samefile(src, dst):  # the encoder would truncate the file being decoded
        raise VideoReadError(f"{dst}: is the input video itself; write the result to another file")
    if not (math.isfinite(fps) and fps > 0):
        import warnings

        warnings.warn(f"{src}: no frame rate in the container; assuming {fallback_fps} FPS", stacklevel=2)
        fps = fallback_fps
    dst.parent.mkdir(parents=True, exist_ok=True)
    q_in: queue.Queue = queue.Queue(maxsize=queue_size)
    q_out: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    errors: list[BaseException] = []

    def put(q: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        cap = cv2.VideoCapture(str(src))
        try:
            while not stop.is_set():
                ok, frame = cap.read()
                if not ok:
                    break
                if not put(q_in, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)
        finally:
            cap.release()
            put(q_in, _END)

    state: dict[str, Any] = {"writer": None, "size": None}

    def writer() -> None:
        try:
            while True:
                try:
                    item = q_out.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():  # aborted by an error elsewhere
                        return
                    continue
                if item is _END:
                    return
                if state["writer"] is None:
                    h, w = item.shape[:2]
                    vw = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not vw.isOpened():
                        raise OSError(f"{dst}: cannot open a video writer (mp4v, {w}x{h} @ {fps:.2f} FPS)")
                    state["writer"], state["size"] = vw, (w, h)
                state["writer"].write(cv2.cvtColor(item, cv2.COLOR_RGB2BGR))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
            stop.set()
        finally:
            if state["writer"] is not None:
                state["writer"].release()

    t_read = threading.Thread(target=reader, name="video-decode", daemon=True)
    t_write = threading.Thread(target=writer, name="video-encode", daemon=True)
    frames = 0
    in_size = (0, 0)
    t0 = time.perf_counter()
    t_read.start()
    t_write.start()
    bar = tqdm(total=count or None, unit="frame", desc=src.name, disable=not progress)
    try:
        while True:
            try:
                # a timeout, not a blocking get: after a writer error the reader stops without
                # queueing _END (its put gives up once `stop` is set), so a blocking get would hang
                item = q_in.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    break
                continue
            if item is _END or stop.is_set():
                break
            in_size = (item.shape[1], item.shape[0])
            out = enhancer.enhance(item, zoom, roi=roi, tile=tile, overlap=overlap)
            if not put(q_out, out):
                break
            frames += 1
            bar.update(1)
    except BaseException:
        stop.set()
        raise
    finally:
        bar.close()
        put(q_out, _END)  # normal end: the writer drains the queue; after an error `stop` ends it
        t_write.join()
        stop.set()
        t_read.join(timeout=5)
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    if frames == 0:
        raise VideoReadError(f"{src}: no frame could be decoded")
    achieved = frames / seconds if seconds > 0 else float("inf")
    return VideoReport(str(src), str(dst), frames, in_size, tuple(state["size"] or (0, 0)), fps, achieved,
                       seconds, achieved >= fps, getattr(enhancer, "mode", type(enhancer).__name__))
