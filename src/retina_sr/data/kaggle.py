"""EyePACS (Kaggle "diabetic-retinopathy-detection") through the official ``kaggle`` package.

- ``archive: sample``: ``sample.zip`` (10 JPEGs under ``sample/``).
- ``archive: train``: ``train.zip.001`` .. ``train.zip.005``, one multi-volume 7-Zip archive
  (~35 GB), read through :class:`ConcatReader` (the volumes are byte-wise parts of one archive).

Both join the diabetic-retinopathy grade from ``trainLabels.csv.zip`` (column ``level``) into the
manifest's ``label``. A seeded random choice of ``data.n_images`` members is extracted, only those.

Extraction: the selected members lie spread over the solid 7z (the whole ~35 GB is decompressed to reach
them), which py7zr does on one thread, reading the volumes through Python. A 7-Zip program on PATH
(``7zz``, ``7z`` or ``7za``: ``apt install 7zip`` / ``p7zip-full``, ``brew install sevenzip``) extracts
them instead, in one ``7z x -i@list`` pass over the volumes with its own decoder (multithreaded where the
archive's LZMA2 blocks allow); py7zr is the fallback. Measured on 2 busy CPU cores, 3 members of a 48 MiB
solid LZMA 7z in 2 volumes: 7zz 26.02 2.3-2.5 s, py7zr 1.1.4 2.7-3.7 s. The stage log says which one ran
(``extracted N members ... with ...``). Zip archives (``sample.zip``) use :mod:`zipfile`.

Resumable: a completed download is recorded in ``<cache>/.done/<file>`` (with its size) and is
skipped on a rerun; an interrupted file is resumed by the Kaggle client itself (HTTP Range);
extracted members with the right size are not extracted again.

Members named absolutely (``/etc/x.jpeg``) or with ``..`` are skipped with a warning (joined to the
extraction folder they would name a local file), and only regular files extracted inside that folder
are linked into ``data/raw`` (a 7z symlink member pointing out of it stops the stage).

The network is touched only by :func:`fetch` (one call of ``KaggleApi.competition_download_file``),
so tests monkeypatch it. ``import kaggle`` authenticates at import time and prints help without
credentials, so it is imported lazily, after our own credential check.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig
from .io import link_file

log = logging.getLogger(__name__)

__all__ = [
    "KaggleError",
    "RULES_URL",
    "check_credentials",
    "get_api",
    "fetch",
    "ensure_file",
    "ConcatReader",
    "open_archive",
    "seven_zip_binary",
    "download_kaggle",
]

RULES_URL = "https://www.kaggle.com/competitions/diabetic-retinopathy-detection/rules"
TRAIN_PARTS = tuple(f"train.zip.{i:03d}" for i in range(1, 6))
LABELS = "trainLabels.csv.zip"
_SEVENZ_MAGIC = b"7z\xbc\xaf\x27\x1c"


class KaggleError(RuntimeError):
    """Kaggle download failed (credentials, rules, network, disk); the message says what to do."""

    exit_code = 2  # the user acts (credentials, accepting the rules, space, network): see runtime.exit_code


def check_credentials(env: Mapping[str, str] | None = None, home: Path | None = None) -> None:
    """Raise :class:`KaggleError` unless some Kaggle credential is configured."""
    environ: Mapping[str, str] = os.environ if env is None else env
    home = Path.home() if home is None else home
    cfg_dir = Path(environ.get("KAGGLE_CONFIG_DIR", home / ".kaggle"))
    if (environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY")) or environ.get("KAGGLE_API_TOKEN"):
        return
    if (cfg_dir / "kaggle.json").is_file() or (cfg_dir / "access_token").is_file():
        return
    raise KaggleError(
        "no Kaggle credentials: create an API token at https://www.kaggle.com/settings/api and save it as "
        f"{cfg_dir / 'kaggle.json'} (chmod 600), or export KAGGLE_USERNAME and KAGGLE_KEY "
        "(or KAGGLE_API_TOKEN); then accept the competition rules at " + RULES_URL
    )


def get_api():
    """An authenticated ``KaggleApi`` (imported lazily: ``import kaggle`` authenticates on import)."""
    check_credentials()
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - kaggle raises SystemExit/ValueError/IOError
        raise KaggleError(f"Kaggle authentication failed ({err}): check ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY") from None
    return api


def fetch(api, competition: str, file_name: str, dest: Path) -> None:
    """The one network call: download ``file_name`` of ``competition`` into folder ``dest``.

    The client resumes a partial file (HTTP Range) and, with ``unzip=True``, unwraps files the
    server delivers zipped (``foo.csv`` arriving as ``foo.csv.zip``) so ``dest/file_name`` exists.
    """
    api.competition_download_file(competition, file_name, path=str(dest), quiet=False, unzip=True)


def _status(err: BaseException) -> int | None:
    for obj in (err, getattr(err, "response", None)):
        for attr in ("status", "status_code"):
            v = getattr(obj, attr, None)
            if isinstance(v, int):
                return v
    text = str(err)
    for code in (401, 403, 404):
        if f"{code}" in text and ("Forbidden" in text or "Unauthorized" in text or "Not Found" in text
                                  or f" {code}" in text or f"{code} " in text):
            return code
    return None


def _is_offline(err: BaseException) -> bool:
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    text = str(err).lower()
    return bool(names & {"ConnectionError", "ConnectTimeout", "NewConnectionError", "MaxRetryError",
                         "NameResolutionError", "gaierror", "ReadTimeout", "Timeout"}) or any(
        s in text for s in ("name resolution", "failed to establish", "network is unreachable",
                            "temporary failure", "connection refused", "max retries exceeded"))


def ensure_file(api, competition: str, file_name: str, cache: Path, *, fetcher=None) -> Path:
    """Download one competition file into ``cache`` unless a completed copy is recorded there."""
    fetcher = fetcher or fetch
    cache.mkdir(parents=True, exist_ok=True)
    target, marker = cache / file_name, cache / ".done" / file_name
    if target.is_file() and marker.is_file() and marker.read_text().strip() == str(target.stat().st_size):
        return target
    try:
        fetcher(api, competition, file_name, cache)
    except KaggleError:
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001 - map the client's errors to clear messages
        code = _status(err)
        if code == 403:
            raise KaggleError(
                f"Kaggle refused {file_name} (HTTP 403): accept the rules at {RULES_URL} "
                "with the account of your API token, then rerun"
            ) from None
        if code == 401:
            raise KaggleError("Kaggle rejected the credentials (HTTP 401): create a new API token at "
                              "https://www.kaggle.com/settings/api") from None
        if _is_offline(err):
            raise KaggleError(
                f"cannot reach kaggle.com to download {file_name} (offline?): connect to the internet, or "
                "use data.source: demo / folder; a rerun resumes the download"
            ) from None
        raise KaggleError(f"downloading {file_name} from Kaggle failed: {type(err).__name__}: {err}") from None
    if not target.is_file():
        raise KaggleError(f"the Kaggle client reported success but {target} is missing")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(target.stat().st_size))
    return target


class ConcatReader(io.RawIOBase):
    """A read-only seekable file over byte-wise volumes (``x.001``, ``x.002``, ...) of one archive."""

    def __init__(self, parts: list[Path]):
        super().__init__()
        self._files = []
        try:
            for p in parts:
                self._files.append(open(p, "rb"))  # noqa: SIM115 - closed in close()
        except BaseException:
            for f in self._files:
                f.close()
            raise
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)]).tolist()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        n = 0
        while n < len(view) and self._pos < self._starts[-1]:
            i = int(np.searchsorted(self._starts, self._pos, side="right") - 1)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            k = f.readinto(view[n: n + min(len(view) - n, self._starts[i + 1] - self._pos)])
            if not k:
                break
            n += k
            self._pos += k
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


SEVEN_ZIP_NAMES = ("7zz", "7z", "7za")  # 7-Zip (Linux/macOS builds), p7zip's full and standalone programs


def seven_zip_binary() -> str | None:
    """The path of a 7-Zip program on PATH (:data:`SEVEN_ZIP_NAMES`, in that order), else None."""
    for name in SEVEN_ZIP_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _extract_with_binary(binary: str, parts: list[Path], members: list[str], dest: Path) -> None:
    """``7z x -i@list`` of ``members`` from the archive whose first volume is ``parts[0]`` into ``dest``.

    Volumes ``x.001``, ``x.002`` ... are found by 7-Zip from the first one's name. ``-spd``: member names
    are literal, not wildcards; ``-aoa``: a member left half-written by an interrupted run is replaced.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", dir=dest.parent, delete=False) as f:
        f.write("\n".join(members) + "\n")
        listfile = Path(f.name)
    cmd = [binary, "x", str(parts[0]), f"-o{dest}", "-aoa", "-y", "-spd", "-scsUTF-8", f"-i@{listfile}", "-bso0", "-bsp0"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    finally:
        listfile.unlink()
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).split())[-500:]
        raise KaggleError(
            f"{Path(binary).name} could not extract from {parts[0]} (exit {proc.returncode}: {tail}): the archive is "
            f"incomplete or corrupt; delete it and {parts[0].parent / '.done'} and rerun"
        )


def _version(binary: str) -> str:
    """``7-Zip (z) 24.09`` / ``p7zip Version 16.02``: the banner line of the program (``-h``)."""
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, errors="replace", timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "version unknown"
    line = next((ln.strip() for ln in out.splitlines() if "7-Zip" in ln or "p7zip" in ln), "")
    return line.split(":")[0].strip() or "version unknown"


class _Archive:
    """Uniform member listing/extraction over zip and 7z (single file or volumes).

    ``extractor`` names what extracted the members: for 7z a 7-Zip program (:func:`seven_zip_binary`)
    when one is on PATH, else py7zr.
    """

    def __init__(self, parts: list[Path]):
        self.parts = parts
        self.extractor = ""
        self.stream = ConcatReader(parts) if len(parts) > 1 else open(parts[0], "rb")  # noqa: SIM115
        try:
            self._open()
        except KaggleError:
            self.stream.close()  # a bad archive must not leave its volumes open
            raise
        except Exception as err:  # zipfile.BadZipFile, py7zr.Bad7zFile, ...
            self.stream.close()
            raise KaggleError(
                f"cannot read the archive {', '.join(p.name for p in parts)} ({type(err).__name__}: {err}): it is "
                f"incomplete or corrupt; delete it and {parts[0].parent / '.done'} and rerun"
            ) from err

    def _open(self) -> None:
        parts = self.parts
        head = self.stream.read(6)
        self.stream.seek(0)
        if head == _SEVENZ_MAGIC:
            import py7zr

            self.kind = "7z"
            self._z = py7zr.SevenZipFile(io.BufferedReader(self.stream) if len(parts) > 1 else self.stream, "r")
            self.sizes = {i.filename: i.uncompressed for i in self._z.list() if not i.is_directory}
        elif head[:2] == b"PK":
            self.kind = "zip"
            self._z = zipfile.ZipFile(self.stream)
            self.sizes = {i.filename: i.file_size for i in self._z.infolist() if not i.is_dir()}
        else:
            raise KaggleError(f"{parts[0]}: neither a zip nor a 7z archive (incomplete download? delete it and rerun)")

    def extract(self, members: list[str], dest: Path) -> None:
        if not members:
            return
        binary = seven_zip_binary() if self.kind == "7z" else None
        if self.kind == "zip":
            self.extractor = "zipfile"
            for m in members:
                self._z.extract(m, dest)
        elif binary:
            self.extractor = f"{binary} ({_version(binary)})"
            _extract_with_binary(binary, self.parts, members, dest)
        else:
            import py7zr

            self.extractor = f"py7zr {py7zr.__version__} (one thread; a 7-Zip program on PATH is faster)"
            self._z.reset()
            self._z.extract(path=dest, targets=members)

    def close(self) -> None:
        self._z.close()
        self.stream.close()


def open_archive(parts: list[Path]) -> _Archive:
    """Open a zip or 7z archive given as one file or its ordered volumes."""
    return _Archive([Path(p) for p in parts])


def _unsafe_name(member: str) -> bool:
    """An absolute name (``/x``, ``\\x``, ``C:x``) or one with a ``..`` part leaves the extraction folder."""
    parts = re.split(r"[\\/]", member)
    return member.startswith(("/", "\\")) or ".." in parts or bool(re.match(r"[A-Za-z]:", member))


def _image_members(arc: _Archive, archive: str) -> list[str]:
    """The archive's image members with safe names, sorted; unsafe ones are skipped with a warning."""
    images = []
    for m in sorted(arc.sizes):
        if not m.lower().endswith((".jpeg", ".jpg", ".png")):
            continue
        if _unsafe_name(m):
            log.warning("warning: %s: member %r is named outside the archive's folder (absolute or '..'); skipped: "
                        "a genuine Kaggle archive has none, check where this file came from", archive, m)
            continue
        images.append(m)
    return images


def _extracted(ext: Path, member: str, size: int) -> Path:
    """The regular file ``member`` was extracted to, inside ``ext`` (links resolved); else KaggleError."""
    f = (ext / member).resolve()
    if not f.is_relative_to(ext.resolve()):
        raise KaggleError(f"{ext / member}: extracted as a link to {f}, outside {ext}; delete {ext} and the archive "
                          "and download it again (a genuine Kaggle archive holds no links)")
    if not f.is_file() or f.stat().st_size != size:
        raise KaggleError(f"{ext / member}: missing or of the wrong size after extraction; delete {ext} and rerun")
    return f


def _read_labels(path: Path) -> pd.DataFrame:
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(".csv")]
        if not names:
            raise KaggleError(f"{path}: no CSV inside; delete it and rerun")
        with z.open(names[0]) as f:
            df = pd.read_csv(f, dtype={"image": str})
    if not {"image", "level"} <= set(df.columns):
        raise KaggleError(f"{path}: expected columns image, level; got {list(df.columns)}")
    return df


def _check_space(cache: Path, min_free_gb: float, files: list[str], pending: list[str]) -> None:
    """``min_free_gb`` is what the whole archive needs (volumes and extraction): the bytes of ``files``
    already in ``cache`` (complete volumes, and the part of an interrupted one the client resumes) count
    towards it, so a resumed download needs only the rest free."""
    if not pending:
        return
    have = sum((cache / f).stat().st_size for f in files if (cache / f).is_file()) / 1e9
    need = max(0.0, min_free_gb - have)
    free = shutil.disk_usage(cache).free / 1e9
    if free < need:
        raise KaggleError(
            f"only {free:.0f} GB free at {cache}; the training archive needs {min_free_gb:.0f} GB "
            f"(data.kaggle.min_free_gb), {have:.0f} GB of it already downloaded, so {need:.0f} GB more: free disk "
            "space, point data.kaggle.cache_dir elsewhere, or use archive: sample"
        )


def download_kaggle(cfg: DataConfig, out: str | Path, seed: int, *, api=None, fetcher=None) -> list[dict]:
    """Download (resumably), select ``cfg.n_images`` seeded members, extract them, return manifest rows."""

    kc = cfg.kaggle
    cache = Path(kc.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(out)
    if api is None and fetcher is None:
        api = get_api()
    files = ["sample.zip"] if kc.archive == "sample" else list(TRAIN_PARTS)
    if kc.archive == "train":
        done = [f for f in files if (cache / ".done" / f).is_file()]
        _check_space(cache, kc.min_free_gb, files, [f for f in files if f not in done])
    labels = _read_labels(ensure_file(api, kc.competition, LABELS, cache, fetcher=fetcher))
    parts = [ensure_file(api, kc.competition, f, cache, fetcher=fetcher) for f in files]
    level = dict(zip(labels["image"], labels["level"].astype(str)))
    arc = open_archive(parts)
    try:
        images = _image_members(arc, parts[0].name)
        if not images:
            raise KaggleError(f"{parts[0]}: no images in the archive")
        labelled = [m for m in images if Path(m).stem in level]
        if not labelled:
            raise KaggleError(f"no image of {parts[0].name} has a grade in {LABELS}: delete {cache} and rerun")
        n = min(cfg.n_images, len(labelled))
        if n < cfg.n_images:
            log.warning("warning: the %s archive holds %d images, fewer than data.n_images=%d", kc.archive, len(labelled),
                        cfg.n_images)
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(labelled, size=n, replace=False).tolist())
        ext = cache / "extracted" / kc.archive
        todo = [m for m in chosen if not ((ext / m).is_file() and (ext / m).stat().st_size == arc.sizes[m])]
        arc.extract(todo, ext)
        if todo:
            log.info("extracted %d members of %s with %s", len(todo), parts[0].name, arc.extractor)
        extracted = {m: _extracted(ext, m, arc.sizes[m]) for m in chosen}
    finally:
        arc.close()
    rows = []
    for m in chosen:
        stem = Path(m).stem
        dst = out / f"{stem}{Path(m).suffix.lower()}"
        link_file(extracted[m], dst)
        w: int | str = ""
        h: int | str = ""
        try:
            from PIL import Image

            with Image.open(dst) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - unreadable files are rejected by preprocess
            pass
        rows.append(dict(id=stem, source="eyepacs", path=str(dst), width=w, height=h,
                         label=level.get(stem, ""), vessel_mask="", fov_mask=""))
    return rows
