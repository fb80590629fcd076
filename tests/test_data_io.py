"""Image reading and writing: EXIF orientation, truncated JPEGs, decompression bombs, 16-bit, clear errors."""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from retina_sr.data.io import ImageReadError, read_image, read_mask, write_image


def _photo(h: int = 24, w: int = 40) -> np.ndarray:
    """An asymmetric colour image (big blocks, so JPEG loss cannot hide a flip or a rotation)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 60
    img[: h // 2, : w // 4] = (250, 40, 40)
    img[h // 2:, w // 2:] = (40, 200, 90)
    img[: h // 3, w - w // 5:] = (30, 60, 240)
    return img


def _jpeg(img: np.ndarray, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    Image.fromarray(img).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    """Checked against Pillow's ``ImageOps.exif_transpose`` (an independent implementation)."""
    p = tmp_path / f"o{orientation}.jpg"
    p.write_bytes(_jpeg(_photo(), orientation))
    got = read_image(p)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 2


def test_jpeg_with_bytes_after_its_end_marker_reads(tmp_path):
    p = tmp_path / "trailing.jpg"
    data = _jpeg(_photo())
    p.write_bytes(data + b"camera maker notes\x00" * 540)  # ~10 kB after FFD9
    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(read_image(p), ref)


def test_jpeg_cut_in_half_is_truncated(tmp_path):
    p = tmp_path / "half.jpg"
    data = _jpeg(cv2.resize(_photo(), (400, 240)), orientation=1)  # EXIF block before the scan
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"half\.jpg: truncated JPEG"):
        read_image(p)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    """A PNG whose header says 30000 x 30000 is refused before decoding (it used to cost 45 s, 5.4 GB)."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    p = tmp_path / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"bomb\.png: 30000x30000 pixels .*RETINA_SR_MAX_PIXELS"):
        read_image(p)
    with pytest.raises(ImageReadError, match="RETINA_SR_MAX_PIXELS"):
        read_mask(p)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp"])
def test_pixel_limit_is_read_from_the_environment(tmp_path, monkeypatch, ext):
    p = tmp_path / f"eye{ext}"
    write_image(p, _photo(30, 40))
    monkeypatch.setenv("RETINA_SR_MAX_PIXELS", "1000")
    with pytest.raises(ImageReadError, match=r"40x30 pixels .* limit"):
        read_image(p)
    monkeypatch.setenv("RETINA_SR_MAX_PIXELS", "1200")
    assert read_image(p).shape == (30, 40, 3)
    monkeypatch.setenv("RETINA_SR_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="RETINA_SR_MAX_PIXELS"):
        read_image(p)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_round_trip(tmp_path, ext):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65536, (12, 16, 3), dtype=np.uint16)
    p = tmp_path / f"deep{ext}"
    write_image(p, img)
    assert np.array_equal(read_image(p, allow_gray=True, keep_16bit=True), img)
    eight = read_image(p, allow_gray=True)  # the default stays 8-bit (data stages)
    assert eight.dtype == np.uint8 and np.abs(eight.astype(int) - img / 257.0).max() <= 0.5 + 1e-9


def test_16bit_to_an_8bit_format_warns(tmp_path):
    img = np.full((8, 8, 3), 40000, np.uint16)
    with pytest.warns(UserWarning, match=r"deep\.jpg: .*8 bits"):
        write_image(tmp_path / "deep.jpg", img)
    assert abs(int(read_image(tmp_path / "deep.jpg", allow_gray=True).mean()) - round(40000 / 257)) <= 1


def test_write_unknown_extension_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"x\.xyz: .*\.xyz.*\.png"):
        write_image(tmp_path / "x.xyz", _photo())
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_write_replaces_atomically(tmp_path):
    p = tmp_path / "a.png"
    write_image(p, _photo())
    write_image(p, _photo()[::-1].copy())
    assert np.array_equal(read_image(p), _photo()[::-1]) and [q.name for q in tmp_path.iterdir()] == ["a.png"]
