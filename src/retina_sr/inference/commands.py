"""``retina-sr zoom``, ``retina-sr export-onnx`` and ``retina-sr bench``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["register", "parse_roi", "load_enhancer"]


def parse_roi(text: str | None) -> tuple[int, int, int, int] | None:
    """``"x,y,w,h"`` -> ``(x, y, w, h)``."""
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--roi {text!r} must be x,y,width,height in input pixels (e.g. 100,80,320,240)") from None
    return x, y, w, h


def load_enhancer(model: str, zoom: float, device: str = "auto", onnx: bool = False, fast: bool = False,
                  threads: int | None = None, workdir: str | None = None, compile: bool | None = None):
    """An :class:`Enhancer` for a checkpoint/MLflow URI, or an :class:`OnnxEnhancer` for ``.onnx`` files
    and for ``onnx=True`` (the checkpoint is exported to ``workdir`` for ``zoom`` first)."""
    from .enhancer import Enhancer
    from .onnx import OnnxEnhancer, export_onnx

    if model.endswith(".onnx"):
        return OnnxEnhancer(model, threads=threads)
    if onnx:
        out = Path(workdir or tempfile.mkdtemp(prefix="retina-sr-onnx-")) / "model.onnx"
        info = export_onnx(model, out, zoom)
        print(f"exported {model} -> {out} ({info.exporter} exporter, parity max abs {info.parity_max_abs:.2e})",
              file=sys.stderr)
        return OnnxEnhancer(out, threads=threads)
    return Enhancer.from_checkpoint(model, device=device, fast=fast, compile=compile)


def _default_out(inp: Path, zoom: float, kind: str) -> Path:
    tag = f"x{zoom:g}".replace(".", "p")
    if kind == "folder":
        return inp.with_name(f"{inp.name}_{tag}")
    if kind == "video":
        return inp.with_name(f"{inp.stem}_{tag}.mp4")
    return inp.with_name(f"{inp.stem}_{tag}.png")


def _same_file(a: Path, b: Path) -> bool:
    """The same file or folder (symlinks, hard links, ``./``, case on case-insensitive disks)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _input_kind(inp: Path) -> str:
    from ..data.io import IMAGE_EXTENSIONS
    from .video import VIDEO_EXTENSIONS

    if not inp.exists():
        raise FileNotFoundError(f"{inp}: input not found (an image, a folder of images or a video)")
    kind = "folder" if inp.is_dir() else "video" if inp.suffix.lower() in VIDEO_EXTENSIONS else "image"
    if kind == "image" and inp.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"{inp}: unknown file type {inp.suffix!r}; images: {', '.join(IMAGE_EXTENSIONS)}; "
                         f"videos: {', '.join(VIDEO_EXTENSIONS)}")
    return kind


def _file_out(inp: Path, kind: str, args: argparse.Namespace) -> Path:
    """The output of one image or video, checked before any work: extension, not the input, not an
    existing file unless --overwrite. An existing folder (or a path ending in /) gets the default name."""
    from ..data.io import IMAGE_EXTENSIONS
    from .video import VIDEO_EXTENSIONS

    default = _default_out(inp, args.zoom, kind)
    out = Path(args.out) if args.out else default
    if args.out and (out.is_dir() or args.out.endswith(("/", os.sep))):
        out = out / default.name
    exts = IMAGE_EXTENSIONS if kind == "image" else VIDEO_EXTENSIONS
    if out.suffix.lower() not in exts:
        raise ValueError(f"{out}: cannot write {kind}s with extension {out.suffix or '(none)'!r}; "
                         f"use one of {', '.join(exts)}")
    if _same_file(inp, out):
        raise ValueError(f"{out}: is the input {kind} itself; choose another --out (nothing was written)")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it, or choose another --out")
    return out


def _folder_plan(inp: Path, args: argparse.Namespace) -> tuple[Path, list[tuple[Path, Path]]]:
    """``(out folder, [(image, output), ...])``, checked before any work (see :func:`_file_out`)."""
    from ..data.io import IMAGE_EXTENSIONS

    out = Path(args.out) if args.out else _default_out(inp, args.zoom, "folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder; give a folder as --out for a folder of images")
    if any(_same_file(inp, p) for p in (out, *out.absolute().parents)):
        raise ValueError(f"{out}: is the input folder or inside it, where outputs would mix with or replace "
                         f"the originals; choose an --out outside {inp}")
    files = sorted(p for p in inp.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{inp}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    pairs = [(f, out / f.relative_to(inp)) for f in files]
    existing = [o for _, o in pairs if o.exists()]
    inputs = {os.stat(f)[1:3] for f in files}  # (inode, device)
    for o in existing:
        if os.stat(o)[1:3] in inputs:
            raise ValueError(f"{o}: is one of the input images; choose an --out that holds no inputs")
    if existing and not args.overwrite:
        raise ValueError(f"{out}: {len(existing)} of {len(pairs)} output files already exist (e.g. "
                         f"{existing[0].relative_to(out)}); pass --overwrite to replace them, or choose another --out")
    return out, pairs


def _check_device(device: str, model: str = "", onnx: bool = False) -> None:
    if device == "cuda" and not (onnx or model.endswith(".onnx")):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible; use --device auto or --device cpu")


def _oom(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def _reason(err: BaseException, src: Path) -> str:
    """One line for a failed image (the path is printed before it)."""
    text = (str(err).strip().splitlines() or [""])[0].removeprefix(f"{src}: ")
    if _oom(err) and not text.startswith("out of memory"):
        return f"out of memory ({text or type(err).__name__}); try --tile 512 (or a smaller tile)"
    return text or type(err).__name__


def _enhance_file(enh, src: Path, dst: Path, args: argparse.Namespace, kw: dict, progress=None):
    """Read, enhance, write one image (16 bit kept); ``(input, result)``. Errors name the file."""
    from ..data.io import read_image, write_image
    from .image import NonFiniteOutputError

    img = read_image(src, allow_gray=True, keep_16bit=True)
    try:
        res = enh.enhance(img, args.zoom, progress=progress, **kw)
    except NonFiniteOutputError as err:
        raise NonFiniteOutputError(f"{args.model}: {err} (input {src}, nothing written)") from None
    except (MemoryError, RuntimeError) as err:
        if not _oom(err):
            raise
        raise MemoryError(f"{src}: {_reason(err, src)}") from None
    write_image(dst, res)
    return img, res


@contextlib.contextmanager
def _tile_bar(desc: str, enabled: bool):
    """A ``(done, total)`` callback that draws a tqdm bar on stderr once a tiled run starts."""
    from tqdm import tqdm

    bars: list = []

    def update(done: int, total: int) -> None:
        if enabled and not bars and total > 1:
            bars.append(tqdm(total=total, unit="tile", desc=desc, file=sys.stderr))
        if bars:
            bars[0].update(done - bars[0].n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


def _zoom(args: argparse.Namespace) -> int:
    from ..runtime import set_threads

    inp = Path(args.input)
    kind = _input_kind(inp)
    roi = parse_roi(args.roi)
    if args.model is None:
        from ..models.bundled import default_model_name

        args.model = default_model_name()  # shipped with the package, sha256-checked when loaded
    _check_device(args.device, args.model, args.onnx)
    if kind == "folder":  # every path is checked before the model is loaded
        out, pairs = _folder_plan(inp, args)
    else:
        out = _file_out(inp, kind, args)
    threads = set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="retina-sr-onnx-") as work:
        enh = load_enhancer(args.model, args.zoom, args.device, args.onnx, args.fast, threads, work,
                            compile=False if args.no_compile else None)
        kw = {"roi": roi, "tile": args.tile, "overlap": args.overlap}
        if kind == "image":
            with _tile_bar(inp.name, not args.quiet) as bar:
                img, res = _enhance_file(enh, inp, out, args, kw, bar)
            print(f"{inp} ({img.shape[1]}x{img.shape[0]}) -> {out} ({res.shape[1]}x{res.shape[0]}), "
                  f"zoom {args.zoom:g}, {enh.mode}")
            return 0
        if kind == "folder":
            return _zoom_folder(enh, inp, out, pairs, args, kw)
        return _zoom_video(enh, inp, out, args, kw)


def _zoom_folder(enh, inp: Path, out: Path, pairs: list[tuple[Path, Path]], args: argparse.Namespace,
                 kw: dict) -> int:
    """Every image is tried (a failure is recorded, not fatal); the summary is printed even on Ctrl-C."""
    from tqdm import tqdm

    failed: list[str] = []
    ok = 0
    try:
        for src, dst in tqdm(pairs, unit="image", desc=inp.name, disable=args.quiet):
            try:
                _enhance_file(enh, src, dst, args, kw)
                ok += 1
            except (ValueError, RuntimeError, MemoryError, OSError) as err:  # unreadable, ROI outside, OOM, ...
                failed.append(f"{src}: {_reason(err, src)}")
    finally:
        rest = len(pairs) - ok - len(failed)
        print(f"{ok} ok, {len(failed)} failed of {len(pairs)} images -> {out} (zoom {args.zoom:g}, {enh.mode})"
              + (f"; {rest} not done (interrupted)" if rest else ""))
        for line in failed:
            print(f"  failed: {line}", file=sys.stderr)
    return 1 if failed else 0


def _zoom_video(enh, inp: Path, out: Path, args: argparse.Namespace, kw: dict) -> int:
    """Encoded to a hidden partial file renamed at the end: a failure leaves no half video and keeps
    an old output (--overwrite) intact."""
    from .image import NonFiniteOutputError
    from .video import enhance_video

    part = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        report = enhance_video(enh, inp, part, args.zoom, progress=not args.quiet, queue_size=args.queue, **kw)
        os.replace(part, out)
    except NonFiniteOutputError as err:
        raise NonFiniteOutputError(f"{args.model}: {err} (input {inp}, nothing written)") from None
    finally:
        part.unlink(missing_ok=True)
    report.output = str(out)
    print(report.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .onnx import export_onnx

    if args.out:
        out = Path(args.out)
    elif args.model.startswith(("runs:/", "models:/")):
        raise ValueError("--out is needed when --model is an MLflow URI")
    else:
        tag = f"x{args.zoom:g}".replace(".", "p")
        out = Path(args.model).with_name(f"{Path(args.model).stem}_{tag}.onnx")
    info = export_onnx(args.model, out, args.zoom, opset=args.opset, prefer=args.exporter)
    print(f"wrote {info.path}: zooms up to x{info.scale} (n_up={info.n_up}), {info.exporter} exporter, "
          f"opset {info.opset}, ONNX Runtime vs PyTorch max abs diff {info.parity_max_abs:.2e}")
    if info.dynamo_error:
        print(f"  dynamo exporter not used: {info.dynamo_error}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..runtime import pick_device, set_threads
    from .bench import find_models, format_table, parse_arch, parse_sizes, run_bench

    _check_device(args.device)
    set_threads(args.threads)
    dev = pick_device(args.device)
    models = list(args.model or [])
    if not models and not args.arch:
        models = [str(p) for p in find_models(args.models_dir)]
    archs = [parse_arch(a) for a in (args.arch or [])]
    cuda = dev.type == "cuda"
    sizes = parse_sizes(args.sizes or ("1920x1080,3840x2160" if cuda else "1920x1080"))
    zooms = [float(z) for z in (args.zooms or ("2,4,8" if cuda else "4")).split(",") if z.strip()]
    repeats = args.repeats or (20 if cuda else 3)
    if not models and not archs:
        print(f"no model.pt under {args.models_dir}/ and no --model/--arch: timing the baselines only",
              file=sys.stderr)
    result = run_bench(models, sizes, zooms, repeats, device=str(dev), archs=archs, fast=not args.no_fast,
                       baselines=not args.no_baselines, log=lambda s: print(s, file=sys.stderr))
    table = format_table(result)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    z = sub.add_parser("zoom", help="enhance an image, a folder of images or a video at a zoom factor",
                       description="Digital zoom with the trained LapSRN: an image, a folder (names mirrored "
                       "into --out) or a video (streamed: decode, inference and encode overlap).")
    z.add_argument("input", help="image file, folder of images, or video file (.mp4, .avi, ...)")
    z.add_argument("--model", default=None,
                   help="bundled model name (`retina-sr models`; default: the bundled default model), checkpoint "
                   "(models/l1/model.pt), MLflow URI (runs:/<id>/model.pt, models:/<name>/<v>) or .onnx file")
    z.add_argument("--zoom", type=float, default=4.0, help="zoom factor in [1, model max], e.g. 1.5, 2, 3, 4, 8 (default 4)")
    z.add_argument("--roi", default=None, help="only enhance this region: x,y,width,height in input pixels")
    z.add_argument("--out", default=None,
                   help="output file or folder (default: next to the input, suffix _x<zoom>); for an image or "
                   "video, an existing folder (or a path ending in /) gets <stem>_x<zoom>.png/.mp4 inside")
    z.add_argument("--overwrite", action="store_true",
                   help="replace output files that already exist (the input itself is never replaced)")
    z.add_argument("--tile", type=int, default=None, help="tiled inference with this tile side (input pixels)")
    z.add_argument("--overlap", type=int, default=32, help="tile overlap in input pixels (default 32)")
    z.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    z.add_argument("--onnx", action="store_true", help="run through ONNX Runtime (exports the checkpoint first)")
    z.add_argument("--fast", action="store_true", help="CUDA fast path: bf16 autocast, channels_last, torch.compile")
    z.add_argument("--no-compile", action="store_true", help="with --fast: skip torch.compile (autocast + channels_last only)")
    z.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available)")
    z.add_argument("--queue", type=int, default=8, help="video: frames buffered between decode/infer/encode")
    z.add_argument("--report", default=None, help="video: write the FPS report as JSON here")
    z.add_argument("--quiet", action="store_true", help="no progress bars")
    z.set_defaults(func=_zoom)

    e = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (dynamic height/width) for a zoom")
    e.add_argument("--model", required=True, help="checkpoint path or MLflow URI")
    e.add_argument("--zoom", type=float, default=4.0, help="zoom the graph serves (its pyramid depth: ceil(log2 zoom))")
    e.add_argument("--out", default=None, help="output .onnx (default: <model stem>_x<zoom>.onnx beside it)")
    e.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    e.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="try this exporter first (dynamo falls back to torchscript on failure)")
    e.set_defaults(func=_export)

    b = sub.add_parser("bench", help="latency/FPS of bicubic, ESPCN and the LapSRN models (eager vs fast path)")
    b.add_argument("--model", action="append", default=None, help="checkpoint(s) (default: every model.pt under --models-dir)")
    b.add_argument("--models-dir", default="models")
    b.add_argument("--arch", action="append", default=None,
                   help="also time a random-weight LapSRN architecture, e.g. F16D3 or F64D10 (speed only)")
    b.add_argument("--sizes", default=None, help="output sizes WxH,... (default: 1920x1080,3840x2160 on CUDA, 1920x1080 on CPU)")
    b.add_argument("--zooms", default=None, help="zooms, e.g. 2,4,8 (default: 2,4,8 on CUDA, 4 on CPU)")
    b.add_argument("--repeats", type=int, default=None, help="timed runs per entry (default: 20 on CUDA, 3 on CPU)")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--no-fast", action="store_true", help="skip the fast path (ONNX Runtime / bf16+compile)")
    b.add_argument("--no-baselines", action="store_true", help="skip bicubic and ESPCN")
    b.add_argument("--json", default=None, help="write the results as JSON here")
    b.set_defaults(func=_bench)
