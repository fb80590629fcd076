"""Where ``retina-sr zoom`` writes: output names (``--out``, ``--suffix``, ``--ext``) and the checks
made before any work (never the input, never an existing file without ``--overwrite``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["input_kind", "check_naming", "default_out", "file_out", "folder_plan", "same_file"]


def zoom_tag(zoom: float) -> str:
    return f"_x{zoom:g}".replace(".", "p")


def output_ext(args: argparse.Namespace, inp: Path, kind: str) -> str:
    """The output extension: ``--ext`` (``same``: the input's), else .png / .mp4 / the input's (folder)."""
    ext = getattr(args, "ext", None)
    if ext is None:
        return {"image": ".png", "video": ".mp4", "live": ".mp4"}.get(kind, inp.suffix)
    return inp.suffix if ext == "same" else "." + ext.lstrip(".").lower()


def default_out(inp: Path, args: argparse.Namespace, kind: str) -> Path:
    """``<stem><suffix><ext>`` beside the input (``--suffix``, default ``_x<zoom>``; ``--ext``); a
    folder -> ``<folder>_x<zoom>``; a live source -> ``live_x<zoom>.mp4`` in the working directory."""
    suffix = args.suffix if getattr(args, "suffix", None) is not None else zoom_tag(args.zoom)
    if kind == "folder":
        return inp.with_name(f"{inp.name}{zoom_tag(args.zoom)}")
    if kind == "live":
        return Path(f"live{suffix}{output_ext(args, inp, kind)}")
    return inp.with_name(f"{inp.stem}{suffix}{output_ext(args, inp, kind)}")


def same_file(a: Path, b: Path) -> bool:
    """The same file or folder (symlinks, hard links, ``./``, case on case-insensitive disks)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def input_kind(spec: str) -> str:
    """``image``, ``folder``, ``video`` or ``live`` (a camera index or a stream URL)."""
    from ..data.io import IMAGE_EXTENSIONS
    from .video import VIDEO_EXTENSIONS
    from .video_io import is_live_spec

    inp = Path(spec)
    if not inp.exists() and is_live_spec(spec):
        return "live"
    if not inp.exists():
        raise FileNotFoundError(f"{inp}: input not found (an image, a folder of images, a video, a camera index "
                                "or a stream URL)")
    kind = "folder" if inp.is_dir() else "video" if inp.suffix.lower() in VIDEO_EXTENSIONS else "image"
    if kind == "image" and inp.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"{inp}: unknown file type {inp.suffix!r}; images: {', '.join(IMAGE_EXTENSIONS)}; "
                         f"videos: {', '.join(VIDEO_EXTENSIONS)}")
    return kind


def check_naming(args: argparse.Namespace, kind: str) -> None:
    """--suffix/--ext name outputs that --out does not name itself; --ext must suit the kind."""
    from ..data.io import IMAGE_EXTENSIONS
    from .video import VIDEO_EXTENSIONS

    naming = args.suffix is not None or args.ext is not None
    if naming and args.out and kind != "folder" and not (Path(args.out).is_dir() or args.out.endswith(("/", os.sep))):
        raise ValueError(f"--out {args.out} names the output file itself; --suffix/--ext only name outputs "
                         "placed beside the input or in an --out folder: drop one of them")
    if args.ext not in (None, "same"):
        exts = VIDEO_EXTENSIONS if kind in ("video", "live") else IMAGE_EXTENSIONS
        if "." + args.ext.lstrip(".").lower() not in exts:
            what = "a video" if kind in ("video", "live") else "an image"
            raise ValueError(f"--ext {args.ext}: not {what} extension; use one of "
                             f"{', '.join(e.lstrip('.') for e in exts)} or 'same'")


def file_out(inp: Path, kind: str, args: argparse.Namespace) -> Path:
    """The output of one image or video, checked before any work: extension, not the input, not an
    existing file unless --overwrite. An existing folder (or a path ending in /) gets the default name."""
    from ..data.io import IMAGE_EXTENSIONS
    from .video import VIDEO_EXTENSIONS

    default = default_out(inp, args, kind)
    out = Path(args.out) if args.out else default
    if args.out and (out.is_dir() or args.out.endswith(("/", os.sep))):
        out = out / default.name
    exts = IMAGE_EXTENSIONS if kind == "image" else VIDEO_EXTENSIONS
    if out.suffix.lower() not in exts:
        raise ValueError(f"{out}: cannot write {kind}s with extension {out.suffix or '(none)'!r}; "
                         f"use one of {', '.join(exts)}")
    if same_file(inp, out):
        raise ValueError(f"{out}: is the input {kind} itself; choose another --out (nothing was written)")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it, or choose another --out")
    return out


def folder_item(out: Path, rel: Path, args: argparse.Namespace) -> Path:
    """An image's output in the --out folder: the same relative path, renamed by --suffix/--ext."""
    suffix = args.suffix or ""
    return out / rel.with_name(f"{rel.stem}{suffix}{output_ext(args, rel, 'folder')}")


def folder_plan(inp: Path, args: argparse.Namespace) -> tuple[Path, list[tuple[Path, Path]]]:
    """``(out folder, [(image, output), ...])``, checked before any work (see :func:`_file_out`)."""
    from ..data.io import IMAGE_EXTENSIONS

    out = Path(args.out) if args.out else default_out(inp, args, "folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder; give a folder as --out for a folder of images")
    if any(same_file(inp, p) for p in (out, *out.absolute().parents)):
        raise ValueError(f"{out}: is the input folder or inside it, where outputs would mix with or replace "
                         f"the originals; choose an --out outside {inp}")
    files = sorted(p for p in inp.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{inp}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    pairs = [(f, folder_item(out, f.relative_to(inp), args)) for f in files]
    existing = [o for _, o in pairs if o.exists()]
    inputs = {os.stat(f)[1:3] for f in files}  # (inode, device)
    for o in existing:
        if os.stat(o)[1:3] in inputs:
            raise ValueError(f"{o}: is one of the input images; choose an --out that holds no inputs")
    if existing and not args.overwrite:
        raise ValueError(f"{out}: {len(existing)} of {len(pairs)} output files already exist (e.g. "
                         f"{existing[0].relative_to(out)}); pass --overwrite to replace them, or choose another --out")
    return out, pairs
