"""Image reading and writing (OpenCV), RGB uint8 in memory, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class ImageReadError(ValueError):
    """A file is missing, not an image, truncated or otherwise unreadable."""


def read_image(path: str | Path, *, allow_gray: bool = False) -> np.ndarray:
    """Read an image as RGB ``uint8`` (H, W, 3); 16-bit images are scaled to 8 bit.

    Grayscale files raise :class:`ImageReadError` unless ``allow_gray`` (then (H, W) is returned).
    An alpha channel is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    buf = np.fromfile(path, dtype=np.uint8)  # works with any file name, unlike cv2.imread
    if buf.size == 0:
        raise ImageReadError(f"{path}: empty file")
    if buf[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in buf[-4096:].tobytes():
        # OpenCV decodes a cut JPEG into a grey-filled image with only a warning: refuse it
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker); download or copy it again")
    img = _decode(buf)
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        img = img.reshape(img.shape[:2])
        if allow_gray:
            return img
        raise ImageReadError(f"{path}: grayscale image; a colour (RGB) fundus photograph is needed")
    if img.shape[2] == 4:
        img = img[:, :, :3]
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if not allow_gray and img.max() < 15:
        raise ImageReadError(f"{path}: all black (no pixel brighter than 15/255)")
    if not allow_gray and _is_gray(img):
        raise ImageReadError(f"{path}: grayscale image stored as RGB; a colour fundus photograph is needed")
    return np.ascontiguousarray(img)


def _is_gray(img: np.ndarray) -> bool:
    sub = img[:: max(1, img.shape[0] // 256), :: max(1, img.shape[1] // 256)].astype(np.int16)
    return bool(np.abs(sub[..., 0] - sub[..., 1]).max() <= 2 and np.abs(sub[..., 1] - sub[..., 2]).max() <= 2)


def _decode(buf: np.ndarray) -> np.ndarray | None:
    """``cv2.imdecode`` that answers ``None`` instead of raising (OpenCV asserts on an empty buffer)."""
    if buf.size == 0:
        return None
    try:
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask (any non-zero pixel is foreground) as ``bool`` (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: mask file not found")
    img = _decode(np.fromfile(path, dtype=np.uint8))
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
    """Write an RGB (or grayscale/bool) ``uint8`` image; the format follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    if not ok:
        raise OSError(f"could not encode {path}")
    buf.tofile(path)
