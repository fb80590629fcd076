"""Kaggle EyePACS path offline end to end (archive -> manifest) and its error messages."""

import io
import shutil
import zipfile
from pathlib import Path

import cv2
import pandas as pd
import pytest
import requests

from retina_sr.config import params_from_dict
from retina_sr.data import kaggle as kg
from retina_sr.data.download import run_download
from retina_sr.data.phantom import generate_phantom

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _labels_zip(path: Path, names: list[str]) -> None:
    df = pd.DataFrame({"image": names, "level": [i % 5 for i in range(len(names))]})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("trainLabels.csv", df.to_csv(index=False))


class FakeServer:
    """Stands in for ``kaggle.fetch``: copies files from a folder, counts calls."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def __call__(self, api, competition, file_name, dest):
        assert competition == "diabetic-retinopathy-detection"
        self.calls.append(file_name)
        shutil.copy(self.root / file_name, Path(dest) / file_name)


def _params(tmp: Path, archive: str, n: int, **kw):
    return params_from_dict({"data": {"source": "kaggle", "n_images": n,
                                      "kaggle": {"archive": archive, "cache_dir": str(tmp / "cache"), **kw}}})


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "eyepacs_sample").is_dir(), reason="../shared/data/eyepacs_sample not present")
def test_sample_zip_end_to_end(tmp_path):
    srv = tmp_path / "server"
    srv.mkdir()
    files = sorted((SHARED / "eyepacs_sample").glob("*.jpeg"))
    with zipfile.ZipFile(srv / "sample.zip", "w", zipfile.ZIP_STORED) as z:
        for f in files:
            z.write(f, f"sample/{f.name}")
    _labels_zip(srv / "trainLabels.csv.zip", [f.stem for f in files])
    fake = FakeServer(srv)
    p = _params(tmp_path, "sample", 4)
    df = kg.download_kaggle(p.data, tmp_path / "raw", p.seed, fetcher=fake)
    assert len(df) == 4 and {r["source"] for r in df} == {"eyepacs"}
    for r in df:
        assert Path(r["path"]).is_file() and r["width"] >= 2592 and r["label"] in {"0", "1", "2", "3", "4"}
    assert sorted(fake.calls) == ["sample.zip", "trainLabels.csv.zip"]
    again = kg.download_kaggle(p.data, tmp_path / "raw", p.seed, fetcher=fake)  # resumable: no refetch
    assert again == df and len(fake.calls) == 2


def _make_7z_volumes(srv: Path, n_img: int = 6, n_parts: int = 5) -> list[str]:
    import py7zr

    names = [f"{10 + i}_{'left' if i % 2 else 'right'}" for i in range(n_img)]
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        for i, n in enumerate(names):
            img = generate_phantom(128, seed=i).image
            z.writestr(cv2.imencode(".jpeg", img[..., ::-1])[1].tobytes(), f"train/{n}.jpeg")
    data = buf.getvalue()
    step = -(-len(data) // n_parts)
    for k in range(n_parts):
        (srv / f"train.zip.{k + 1:03d}").write_bytes(data[k * step:(k + 1) * step])
    return names


SEVEN_ZIP = kg.seven_zip_binary()


@pytest.mark.parametrize("extractor", [
    pytest.param("binary", marks=pytest.mark.skipif(SEVEN_ZIP is None, reason="no 7-Zip program (7zz/7z/7za) on PATH: "
                                                    "apt-get install 7zip (or p7zip-full) to test the binary path")),
    "py7zr",
])
def test_multivolume_7z_end_to_end(tmp_path, monkeypatch, caplog, extractor):
    """The volumes' selected members are extracted by a 7-Zip program when there is one (py7zr then never
    extracts), else by py7zr; the stage log says which."""
    import py7zr

    caplog.set_level("INFO", logger=kg.__name__)
    if extractor == "py7zr":
        monkeypatch.setattr(kg, "seven_zip_binary", lambda: None)
    else:
        monkeypatch.setattr(py7zr.SevenZipFile, "extract", lambda *a, **k: pytest.fail("py7zr must not extract"))
    srv = tmp_path / "server"
    srv.mkdir()
    names = _make_7z_volumes(srv)
    _labels_zip(srv / "trainLabels.csv.zip", names + ["999_left"])
    fake = FakeServer(srv)
    p = _params(tmp_path, "train", 3, min_free_gb=0.0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(kg, "fetch", fake)  # the one network call
    df = run_download(p, tmp_path / "raw", kaggle_api="authenticated-api-stand-in")
    assert list(df.columns) == ["id", "source", "path", "width", "height", "label", "vessel_mask", "fov_mask"]
    assert (tmp_path / "raw" / "manifest.csv").is_file() and (tmp_path / "raw" / "source.json").is_file()
    rows = df.to_dict("records")
    assert len(rows) == 3 and len({r["id"] for r in rows}) == 3
    assert all(r["id"] in names and int(r["width"]) == 128 and r["source"] == "eyepacs" for r in rows)
    assert all(r["label"] == str(names.index(r["id"]) % 5) for r in rows)  # DR grade joined
    assert sorted(fake.calls) == sorted(["trainLabels.csv.zip"] + [f"train.zip.{i:03d}" for i in range(1, 6)])
    used = [r.getMessage() for r in caplog.records if r.getMessage().startswith("extracted 3 members of train.zip.001")]
    assert len(used) == 1 and (f"with {SEVEN_ZIP} (7-Zip" in used[0] if extractor == "binary" else "with py7zr" in used[0])
    # only the selected members were extracted
    assert sorted(f.stem for f in (tmp_path / "cache" / "extracted" / "train" / "train").iterdir()) == sorted(df["id"])
    # deterministic selection for the seed; nothing re-downloaded or re-extracted
    ext = tmp_path / "cache" / "extracted" / "train" / "train"
    mtimes = {f.name: f.stat().st_mtime_ns for f in ext.iterdir()}
    again = kg.download_kaggle(p.data, tmp_path / "raw2", p.seed, fetcher=fake)
    assert [r["id"] for r in again] == [r["id"] for r in rows] and len(fake.calls) == 6
    assert {f.name: f.stat().st_mtime_ns for f in ext.iterdir()} == mtimes
    # an interrupted (marker-less) part is fetched again
    (tmp_path / "cache" / ".done" / "train.zip.003").unlink()
    kg.download_kaggle(p.data, tmp_path / "raw3", p.seed, fetcher=fake)
    assert fake.calls[-1] == "train.zip.003" and len(fake.calls) == 7


@pytest.mark.skipif(SEVEN_ZIP is None, reason="no 7-Zip program (7zz/7z/7za) on PATH")
def test_7z_program_failure_is_a_clear_error(tmp_path):
    """Damaged data in a volume (the header, read by py7zr for the listing, intact): the 7-Zip program's
    failure becomes a KaggleError that says what to delete."""
    srv = tmp_path / "server"
    srv.mkdir()
    names = _make_7z_volumes(srv)
    part = srv / "train.zip.002"
    part.write_bytes(bytes(len(part.read_bytes())))  # zeros instead of compressed data
    _labels_zip(srv / "trainLabels.csv.zip", names)
    p = _params(tmp_path, "train", 6, min_free_gb=0.0)
    with pytest.raises(kg.KaggleError, match=r"could not extract from .*train\.zip\.001 \(exit [1-9].*delete it"):
        kg.download_kaggle(p.data, tmp_path / "raw", p.seed, fetcher=FakeServer(srv))
    assert not list((tmp_path / "cache" / "extracted").glob("*.txt"))  # the member list is removed


def test_concat_reader_seeks_across_parts(tmp_path):
    data = bytes(range(256)) * 10
    parts = []
    for i, k in enumerate(range(0, len(data), 700)):
        p = tmp_path / f"x.{i:03d}"
        p.write_bytes(data[k:k + 700])
        parts.append(p)
    r = kg.ConcatReader(parts)
    r.seek(650)
    assert r.read(100) == data[650:750]
    r.seek(-5, io.SEEK_END)
    assert r.read(10) == data[-5:]
    r.close()


@pytest.mark.parametrize("head", [b"PK\x03\x04", b"7z\xbc\xaf\x27\x1c", b"junk!!"])
def test_corrupt_archive_is_a_clear_error_and_closes_its_files(tmp_path, monkeypatch, head):
    parts = []
    for i in range(2):
        p = tmp_path / f"train.zip.{i + 1:03d}"
        p.write_bytes((head if i == 0 else b"") + bytes(200))
        parts.append(p)
    opened = []
    real_open = open

    def tracking_open(*a, **kw):
        f = real_open(*a, **kw)
        opened.append(f)
        return f

    monkeypatch.setattr("builtins.open", tracking_open)
    with pytest.raises(kg.KaggleError, match="delete"):
        kg.open_archive(parts)
    assert opened and all(f.closed for f in opened)


def test_disk_space_check(tmp_path, monkeypatch):
    p = _params(tmp_path, "train", 3, min_free_gb=80.0)
    monkeypatch.setattr(kg.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(100e9, 90e9, 10e9))
    with pytest.raises(kg.KaggleError, match="only 10 GB free"):
        kg.download_kaggle(p.data, tmp_path / "raw", 0, fetcher=lambda *a: pytest.fail("must not download"))


def test_disk_space_check_counts_the_parts_already_downloaded(tmp_path, monkeypatch):
    """min_free_gb is the whole archive's need: volumes already in the cache (complete, or the partial one
    the client resumes) count towards it. Here 10 kB are needed, 3 kB are free and 8 kB are downloaded."""
    srv = tmp_path / "server"
    srv.mkdir()
    names = _make_7z_volumes(srv)
    _labels_zip(srv / "trainLabels.csv.zip", names)
    p = _params(tmp_path, "train", 3, min_free_gb=10e-6)
    monkeypatch.setattr(kg.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(100e3, 97e3, 3e3))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "train.zip.001").write_bytes(bytes(5000))  # interrupted: no .done marker
    with pytest.raises(kg.KaggleError, match=r"\(data.kaggle.min_free_gb\), 0 GB of it already downloaded"):
        kg.download_kaggle(p.data, tmp_path / "raw", 0, fetcher=lambda *a: pytest.fail("must not download"))
    (cache / "train.zip.002").write_bytes(bytes(3000))  # 8 kB in the cache: 2 kB more needed, 3 kB free
    fake = FakeServer(srv)
    rows = kg.download_kaggle(p.data, tmp_path / "raw", 0, fetcher=fake)
    assert len(rows) == 3 and "train.zip.001" in fake.calls


def test_no_credentials_message(tmp_path, monkeypatch):
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kg.KaggleError, match=r"no Kaggle credentials.*kaggle\.json.*KAGGLE_USERNAME"):
        kg.check_credentials()
    p = _params(tmp_path, "sample", 3)
    with pytest.raises(kg.KaggleError, match="no Kaggle credentials"):
        run_download(p, tmp_path / "raw")
    kg.check_credentials(env={"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home=tmp_path)  # accepted


def _raiser(err):
    def f(*_):
        raise err
    return f


def test_rules_not_accepted_403(tmp_path):
    resp = requests.Response()
    resp.status_code = 403
    err = requests.HTTPError("403 Client Error: Forbidden for url", response=resp)
    with pytest.raises(kg.KaggleError, match=r"HTTP 403.*accept the rules at https://www\.kaggle\.com/competitions/diabetic-retinopathy-detection/rules"):
        kg.ensure_file(None, "diabetic-retinopathy-detection", "sample.zip", tmp_path, fetcher=_raiser(err))


def test_offline_message(tmp_path):
    err = requests.ConnectionError("HTTPSConnectionPool(host='www.kaggle.com'): Max retries exceeded "
                                   "(Failed to establish a new connection: [Errno -3] Temporary failure in name resolution)")
    with pytest.raises(kg.KaggleError, match=r"cannot reach kaggle\.com.*offline"):
        kg.ensure_file(None, "diabetic-retinopathy-detection", "sample.zip", tmp_path, fetcher=_raiser(err))
    assert not (tmp_path / ".done" / "sample.zip").exists()


def test_fetch_is_one_thin_api_call(tmp_path):
    calls = []

    class Api:
        def competition_download_file(self, competition, file_name, path=None, force=False, quiet=False, unzip=False):
            calls.append((competition, file_name, path, force, unzip))
            (Path(path) / file_name).write_bytes(b"PK")

    out = kg.ensure_file(Api(), "diabetic-retinopathy-detection", "sample.zip", tmp_path)
    assert out == tmp_path / "sample.zip" and (tmp_path / ".done" / "sample.zip").read_text() == "2"
    assert calls == [("diabetic-retinopathy-detection", "sample.zip", str(tmp_path), False, True)]
    kg.ensure_file(Api(), "diabetic-retinopathy-detection", "sample.zip", tmp_path)  # complete: skipped
    assert len(calls) == 1


# --------------------------------------------------------------------------- hostile archives
def _jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpeg", generate_phantom(96, seed=seed).image[..., ::-1])[1].tobytes()


def _outside_photo(tmp: Path) -> Path:
    """A local file (not in any archive) that an absolute member name points at."""
    f = tmp / "elsewhere" / "666_left.jpeg"
    f.parent.mkdir()
    f.write_bytes(_jpeg(66))
    return f


def _assert_only_archive_photos(rows, raw: Path, outside: Path, caplog, *bad_members):
    assert sorted(r["id"] for r in rows) == ["10_left", "10_right", "11_left"]
    linked = {f.read_bytes() for f in raw.iterdir()}
    assert outside.read_bytes() not in linked and len(linked) == 3
    err = caplog.text  # a warning, logged
    for m in bad_members:
        assert f"member {m!r}" in err and "skipped" in err, err


def test_zip_members_with_absolute_or_parent_names_are_skipped(tmp_path, caplog):
    """Members named '/abs/path.jpeg' or '../x.jpeg' are never joined to the extraction folder (an
    absolute name replaces it: a local file would be linked into data/raw as a photograph)."""
    srv = tmp_path / "server"
    srv.mkdir()
    outside = _outside_photo(tmp_path)
    dotdot = tmp_path / "cache" / "extracted" / "667_left.jpeg"  # where 'sample/../../667_left.jpeg' points
    dotdot.parent.mkdir(parents=True)
    dotdot.write_bytes(_jpeg(67))
    good = ["10_left", "10_right", "11_left"]
    with zipfile.ZipFile(srv / "sample.zip", "w") as z:
        for i, n in enumerate(good):
            z.writestr(f"sample/{n}.jpeg", _jpeg(i))
        z.writestr(str(outside), b"not the local file")
        z.writestr("sample/../../667_left.jpeg", _jpeg(68))
    _labels_zip(srv / "trainLabels.csv.zip", good + ["666_left", "667_left"])
    p = _params(tmp_path, "sample", 5)
    rows = kg.download_kaggle(p.data, tmp_path / "raw", p.seed, fetcher=FakeServer(srv))
    _assert_only_archive_photos(rows, tmp_path / "raw", outside, caplog, str(outside), "sample/../../667_left.jpeg")
    assert dotdot.read_bytes() == _jpeg(67)  # untouched, and (above) not linked


def _patch_7z_name(data: bytes, old: str, new: str) -> bytes:
    """Rename a member of a 7z archive written with a plain (not encoded) header, fixing its CRCs:
    py7zr refuses to write absolute names, real archives from elsewhere need not."""
    import struct
    import zlib

    assert len(old) == len(new)
    buf = bytearray(data)
    i = buf.index(old.encode("utf-16-le"))
    buf[i:i + 2 * len(old)] = new.encode("utf-16-le")
    off, size = struct.unpack("<QQ", buf[12:28])
    buf[28:32] = struct.pack("<I", zlib.crc32(buf[32 + off:32 + off + size]))
    buf[8:12] = struct.pack("<I", zlib.crc32(buf[12:32]))
    return bytes(buf)


def test_7z_member_with_absolute_name_is_skipped(tmp_path, caplog):
    import py7zr

    srv = tmp_path / "server"
    srv.mkdir()
    outside = _outside_photo(tmp_path)
    good = ["10_left", "10_right", "11_left"]
    placeholder = "train/" + "x" * (len(str(outside)) - len("train/.jpeg")) + ".jpeg"
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.encoded_header_mode = False
        for i, n in enumerate(good):
            z.writestr(_jpeg(i), f"train/{n}.jpeg")
        z.writestr(outside.read_bytes(), placeholder)  # same size: the old code would not even extract it
    data = _patch_7z_name(buf.getvalue(), placeholder, str(outside))
    step = -(-len(data) // 5)
    for k in range(5):
        (srv / f"train.zip.{k + 1:03d}").write_bytes(data[k * step:(k + 1) * step])
    _labels_zip(srv / "trainLabels.csv.zip", good + ["666_left"])
    p = _params(tmp_path, "train", 4, min_free_gb=0.0)
    rows = kg.download_kaggle(p.data, tmp_path / "raw", p.seed, fetcher=FakeServer(srv))
    _assert_only_archive_photos(rows, tmp_path / "raw", outside, caplog, str(outside))


def test_extracted_member_linking_out_of_the_cache_is_refused(tmp_path):
    """A member extracted as a link (7z can hold symlinks) to a file outside the extraction folder is
    never linked into data/raw."""
    srv = tmp_path / "server"
    srv.mkdir()
    outside = _outside_photo(tmp_path)
    good = ["10_left", "10_right", "11_left"]
    with zipfile.ZipFile(srv / "sample.zip", "w") as z:
        for i, n in enumerate(good):
            z.writestr(f"sample/{n}.jpeg", outside.read_bytes() if i == 0 else _jpeg(i))
    _labels_zip(srv / "trainLabels.csv.zip", good)
    ext = tmp_path / "cache" / "extracted" / "sample" / "sample"
    ext.mkdir(parents=True)
    (ext / "10_left.jpeg").symlink_to(outside)  # as an extracted symlink member would be (same size: kept)
    p = _params(tmp_path, "sample", 3)
    with pytest.raises(kg.KaggleError, match=r"10_left\.jpeg.*outside"):
        kg.download_kaggle(p.data, tmp_path / "raw", p.seed, fetcher=FakeServer(srv))
    assert not (tmp_path / "raw" / "10_left.jpeg").exists()
