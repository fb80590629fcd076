"""Image reading and writing (OpenCV), RGB in memory, with errors that name the file.

Before decoding, the file header is read (PNG IHDR, JPEG SOF/APP1, TIFF IFD0, BMP) for the pixel
count, refused above :func:`max_pixels` (decompression bombs), and for the EXIF orientation, which
is applied after decoding (``cv2.IMREAD_UNCHANGED`` ignores it; ``IMREAD_COLOR`` would but drops 16 bit).
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
SIXTEEN_BIT_EXTENSIONS = (".png", ".tif", ".tiff")  # OpenCV writes uint16 only to these
#: default ceiling on width x height of one image (a 16k x 15k scan); env RETINA_SR_MAX_PIXELS overrides
MAX_PIXELS = 250_000_000

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)
# EXIF orientation -> the numpy transform that shows the image upright (as Pillow's exif_transpose)
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


class ImageReadError(ValueError):
    """A file is missing, not an image, truncated, too large or otherwise unreadable."""


def max_pixels() -> int:
    """The pixel-count ceiling: ``RETINA_SR_MAX_PIXELS`` when set, else :data:`MAX_PIXELS`."""
    raw = os.environ.get("RETINA_SR_MAX_PIXELS", "").strip().replace("_", "")
    if not raw:
        return MAX_PIXELS
    if not raw.isdigit():
        raise ValueError(f"RETINA_SR_MAX_PIXELS={raw!r} must be a whole number of pixels (e.g. 500000000)")
    return int(raw)


def read_image(path: str | Path, *, allow_gray: bool = False, keep_16bit: bool = False) -> np.ndarray:
    """Read an image as RGB (H, W, 3), upright (EXIF orientation applied).

    ``uint8`` by default (16-bit scaled to 8 bit); ``keep_16bit`` returns 16-bit files as ``uint16``.
    Grayscale files raise :class:`ImageReadError` unless ``allow_gray`` (then (H, W) is returned).
    An alpha channel is dropped.
    """
    path = Path(path)
    img = _load(path, "file")
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    if img.dtype == np.uint16 and not keep_16bit:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype not in (np.uint8, np.uint16):
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        img = img.reshape(img.shape[:2])
        if allow_gray:
            return np.ascontiguousarray(img)
        raise ImageReadError(f"{path}: grayscale image; a colour (RGB) fundus photograph is needed")
    img = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_BGR2RGB)
    if not allow_gray:
        _check_colour(path, img if img.dtype == np.uint8 else (img >> 8).astype(np.uint8))
    return img


def _check_colour(path: Path, img8: np.ndarray) -> None:
    if img8.max() < 15:
        raise ImageReadError(f"{path}: all black (no pixel brighter than 15/255)")
    if _is_gray(img8):
        raise ImageReadError(f"{path}: grayscale image stored as RGB; a colour fundus photograph is needed")


def _is_gray(img: np.ndarray) -> bool:
    sub = img[:: max(1, img.shape[0] // 256), :: max(1, img.shape[1] // 256)].astype(np.int16)
    return bool(np.abs(sub[..., 0] - sub[..., 1]).max() <= 2 and np.abs(sub[..., 1] - sub[..., 2]).max() <= 2)


def _load(path: Path, what: str) -> np.ndarray | None:
    """Checked decode: missing/empty file, pixel limit and truncated JPEG raise; ``None`` if undecodable."""
    if not path.is_file():
        raise ImageReadError(f"{path}: {what} not found")
    buf = np.fromfile(path, dtype=np.uint8)  # works with any file name, unlike cv2.imread
    if buf.size == 0:
        raise ImageReadError(f"{path}: empty file")
    data = buf.tobytes()
    width, height, orientation = _header(data) or (0, 0, 1)
    limit = max_pixels()
    if width * height > limit:
        raise ImageReadError(f"{path}: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is above the "
                             f"{limit / 1e6:g} MP limit for one image; set RETINA_SR_MAX_PIXELS to raise it")
    if data[:2] == b"\xff\xd8" and _jpeg_truncated(data):
        # OpenCV decodes a cut JPEG into a grey-filled image with only a warning: refuse it
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker); download or copy it again")
    img = _decode(buf)
    if img is not None and orientation in _ORIENT:
        img = _ORIENT[orientation](img)
    return img


def _decode(buf: np.ndarray) -> np.ndarray | None:
    """``cv2.imdecode`` that answers ``None`` instead of raising (OpenCV asserts on an empty buffer)."""
    if buf.size == 0:
        return None
    try:
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None


# ------------------------------------------------------------------------------------ file headers
def _header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, EXIF orientation)`` from the header alone; ``None`` for an unknown/odd header."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return (*struct.unpack_from(">II", data, 16), 1)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            tags = _tiff_tags(data, 0)
            return tags.get(256, 0), tags.get(257, 0), tags.get(274, 1)
        if data[:2] == b"BM":
            fmt = "<hh" if struct.unpack_from("<I", data, 14)[0] == 12 else "<ii"  # OS/2 or Windows header
            w, h = struct.unpack_from(fmt, data, 18)
            return abs(w), abs(h), 1
        if data[:2] == b"\xff\xd8":
            w, h, orientation, _ = _jpeg_segments(data)
            return w, h, orientation
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _tiff_tags(data: bytes, base: int) -> dict[int, int]:
    """SHORT/LONG tags of the first IFD of a TIFF structure at ``base`` (a TIFF file or an EXIF block)."""
    order = {b"II": "<", b"MM": ">"}[data[base:base + 2]]
    (ifd,) = struct.unpack_from(order + "I", data, base + 4)
    (n,) = struct.unpack_from(order + "H", data, base + ifd)
    tags = {}
    for i in range(n):
        tag, kind, _, value = struct.unpack_from(order + "HHI4s", data, base + ifd + 2 + 12 * i)
        if kind in (3, 4):  # SHORT, LONG
            tags[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), value)[0]
    return tags


def _jpeg_segments(data: bytes) -> tuple[int, int, int, int]:
    """Walk the JPEG markers up to the first scan: ``(width, height, orientation, SOS offset or -1)``."""
    i, w, h, orientation = 2, 0, 0, 1
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("not at a JPEG marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:
            return w, h, orientation, i
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        seg = i + 4
        if marker in _JPEG_SOF:
            h, w = struct.unpack_from(">HH", data, seg + 1)
        elif marker == 0xE1 and data[seg:seg + 6] == b"Exif\x00\x00":
            with contextlib.suppress(struct.error, KeyError):  # a damaged EXIF block does not make the picture unreadable
                orientation = _tiff_tags(data, seg + 6).get(274, 1)
        i += 2 + length
    return w, h, orientation, -1


def _jpeg_truncated(data: bytes) -> bool:
    """No end-of-image marker after the first scan starts (entropy-coded data never holds FFD9, and an
    EXIF thumbnail's FFD9 comes before the scan); bytes after the marker are fine."""
    try:
        sos = _jpeg_segments(data)[3]
    except (struct.error, IndexError, ValueError):
        sos = 2  # odd header: let any end marker do
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


# ------------------------------------------------------------------------------------ masks, writing
def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask (any non-zero pixel is foreground) as ``bool`` (H, W)."""
    path = Path(path)
    img = _load(path, "mask file")
    if img is None:
        # e.g. GIF masks (DRIVE) - fall back to scikit-image's reader
        try:
            from skimage import io as skio

            img = skio.imread(path)
        except Exception as err:  # noqa: BLE001 - report any reader failure with the path
            raise ImageReadError(f"{path}: not a readable mask ({err})") from None
    if img.ndim == 3:
        img = img[..., :3].max(axis=2)
    return img > (img.max() / 2 if img.max() > 1 else 0)


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write an RGB (or grayscale/bool) ``uint8`` or ``uint16`` image; the format follows the extension.

    16 bit is kept for PNG/TIFF; other formats get 8 bit with a warning. The file is written to a
    temporary name and renamed, so a failed write never leaves a half file or destroys an old one.
    """
    path = Path(path)
    ext = (path.suffix or ".png").lower()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype == np.uint16 and ext not in SIXTEEN_BIT_EXTENSIONS:
        warnings.warn(f"{path}: {ext} holds 8 bits per channel, so the 16-bit image is written as 8-bit; "
                      f"use .png or .tif to keep 16 bits", stacklevel=2)
        img = (img / 257.0).round().astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(ext, img)
    except cv2.error:  # no encoder for this extension
        raise ValueError(f"{path}: cannot write {ext!r} images; use one of {', '.join(IMAGE_EXTENSIONS)}") from None
    if not ok:
        raise OSError(f"{path}: could not encode the image as {ext}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        buf.tofile(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- stage outputs
class OutputConflictError(FileExistsError):
    """A file the stage did not write is where it must write one; nothing was deleted."""


def claim_output(dst: Path, src: Path | None = None) -> None:
    """Make way for an output at ``dst``. A file there is replaced only if it holds the bytes of ``src``
    (e.g. left by an interrupted run); any other is someone's: raise, delete nothing."""
    if not (dst.exists() or dst.is_symlink()):
        return
    if src is not None and dst.is_file() and (os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False)):
        dst.unlink()
        return
    raise OutputConflictError(f"{dst}: not written by the last download run (not in its manifest), and the stage "
                              f"must write a file there; move it out of {dst.parent}, the download stage's output, "
                              "and rerun")


def link_file(src: Path, dst: Path) -> None:
    """Hard-link (across file systems: copy) the file ``src`` resolves to, never a symlink itself (a
    relative link would point to another file from ``dst``); ``dst`` is claimed (:func:`claim_output`)."""
    src = Path(src).resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    claim_output(dst, src)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def safe_id(stem: str) -> str:
    """A file stem as an image id: characters other than letters, digits, ``-_.`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
