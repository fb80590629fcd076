"""``retina-sr zoom``, ``retina-sr export-onnx`` and ``retina-sr bench``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from .outputs import check_naming, file_out, folder_plan, input_kind

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
        return OnnxEnhancer(model, threads=threads, device=device)
    if onnx:
        out = Path(workdir or tempfile.mkdtemp(prefix="retina-sr-onnx-")) / "model.onnx"
        info = export_onnx(model, out, zoom)
        print(f"exported {model} -> {out} ({info.graph} graph, {info.exporter} exporter, parity max abs "
              f"{info.parity_max_abs:.2e})", file=sys.stderr)
        return OnnxEnhancer(out, threads=threads, device=device)
    return Enhancer.from_checkpoint(model, device=device, fast=fast, compile=compile)


def _check_device(device: str) -> None:
    """``--device``: auto, cpu, cuda or cuda:N, and that GPU exists (a usage error otherwise)."""
    from .base import resolve_device

    resolve_device(device)


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

    kind = input_kind(args.input)
    inp = Path(args.input)
    roi = parse_roi(args.roi)
    check_naming(args, kind)
    if args.model is None:
        from ..models.bundled import default_model_name

        args.model = default_model_name()  # shipped with the package, sha256-checked when loaded
    _check_device(args.device)
    if kind == "folder":  # every path is checked before the model is loaded
        out, pairs = folder_plan(inp, args)
    elif kind == "live" and not args.out and args.suffix is None and args.ext is None:
        if not args.preview:
            raise ValueError(f"{args.input}: a live source needs --out FILE.mp4 (record) and/or --preview (show)")
        out = None
    else:
        out = file_out(inp, kind, args)
    threads = set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="retina-sr-onnx-") as work:
        enh = load_enhancer(args.model, args.zoom, args.device, args.onnx, args.fast, threads, work,
                            compile=False if args.no_compile else None)
        kw = {"roi": roi, "tile": args.tile, "overlap": args.overlap}
        if kind == "image":
            assert out is not None  # only a live source may run without an output file
            with _tile_bar(inp.name, not args.quiet) as bar:
                img, res = _enhance_file(enh, inp, out, args, kw, bar)
            print(f"{inp} ({img.shape[1]}x{img.shape[0]}) -> {out} ({res.shape[1]}x{res.shape[0]}), "
                  f"zoom {args.zoom:g}, {enh.mode}")
            return 0
        if kind == "folder":
            assert out is not None
            return _zoom_folder(enh, inp, out, pairs, args, kw)
        return _zoom_video(enh, args.input, out, args, kw)


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


def _zoom_video(enh, src: str, out: Path | None, args: argparse.Namespace, kw: dict) -> int:
    """Encoded to a hidden partial file renamed at the end: a failure leaves no half video and keeps
    an old output (--overwrite) intact. A live source ends with its stream, --frames, q in the
    preview or Ctrl-C, and keeps what it recorded."""
    from .image import NonFiniteOutputError
    from .video import enhance_video

    part = out.with_name(f".{out.stem}.partial{out.suffix}") if out is not None else None
    opts = {"crf": args.crf, "preset": args.preset, "codec": args.codec, "preview": args.preview,
            "max_frames": args.frames}
    try:
        report = enhance_video(enh, src, part, args.zoom, progress=not args.quiet, queue_size=args.queue, **kw, **opts)
        if part is not None and out is not None:
            os.replace(part, out)
    except NonFiniteOutputError as err:
        raise NonFiniteOutputError(f"{args.model}: {err} (input {src}, nothing written)") from None
    finally:
        if part is not None:
            part.unlink(missing_ok=True)
    report.output = str(out) if out is not None else None
    print(report.summary())
    for note in report.warnings:
        print(f"warning: {note}", file=sys.stderr)
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
    info = export_onnx(args.model, out, args.zoom, opset=args.opset, prefer=args.exporter, fuse=not args.plain)
    print(f"wrote {info.path}: zooms up to x{info.scale} (n_up={info.n_up}), {info.graph} graph, {info.exporter} "
          f"exporter, opset {info.opset}, ONNX Runtime vs PyTorch max abs diff {info.parity_max_abs:.2e}")
    if info.graph_error:
        print(f"  phase graph not used: {info.graph_error}")
    if info.dynamo_error:
        print(f"  dynamo exporter not used: {info.dynamo_error}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..runtime import set_threads
    from .base import resolve_device
    from .bench import find_models, format_table, parse_bench_arch, parse_sizes, run_bench

    _check_device(args.device)
    set_threads(args.threads)
    dev = resolve_device(args.device)
    models = list(args.model or [])
    if not models and not args.arch:
        models = [str(p) for p in find_models(args.models_dir)]
    archs = [parse_bench_arch(a) for a in (args.arch or [])]
    cuda = dev.type == "cuda"
    sizes = parse_sizes(args.sizes or ("1920x1080,3840x2160" if cuda else "1920x1080"))
    zooms = [float(z) for z in (args.zooms or ("2,4,8" if cuda else "4")).split(",") if z.strip()]
    repeats = args.repeats or (20 if cuda else 3)
    if not models and not archs:
        print(f"no model.pt under {args.models_dir}/ and no --model/--arch: timing the baselines only",
              file=sys.stderr)
    result = run_bench(models, sizes, zooms, repeats, device=str(dev), archs=archs, fast=not args.no_fast,
                       baselines=not args.no_baselines, log=lambda s: print(s, file=sys.stderr),
                       peers_dir=args.peers, plain_onnx=args.plain_onnx)
    table = format_table(result)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def _parser(sub, name: str, summary: str, example: str, description: str = ""):
    """A sub-command with a one-line help, its description and an example in ``--help``."""
    return sub.add_parser(name, help=summary, description=f"{summary}. {description}".strip(),
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def _zoom_arguments(z) -> None:
    z.add_argument("input", help="image file, folder of images, video file (.mp4, ...), camera index (0) or "
                   "stream URL (rtsp://...)")
    z.add_argument("--model", default=None,
                   help="bundled model name (`retina-sr models`; default: the bundled default model), checkpoint "
                   "(models/l1/model.pt), MLflow URI (runs:/<id>/model.pt, models:/<name>/<v>) or .onnx file")
    z.add_argument("--zoom", type=float, default=4.0, help="zoom factor in [1, model max], e.g. 1.5, 2, 3, 4, 8 (default 4)")
    z.add_argument("--roi", default=None, help="only enhance this region: x,y,width,height in input pixels")
    z.add_argument("--out", default=None,
                   help="output file or folder (default: next to the input, <stem>_x<zoom>.png/.mp4); an existing "
                   "folder (or a path ending in /) gets the default name inside")
    z.add_argument("--suffix", default=None,
                   help="text after the input's stem in output names (default _x<zoom>; in a folder run: none), "
                   "e.g. --suffix _sr")
    z.add_argument("--ext", default=None,
                   help="output extension: png (default for images), jpg, tif, ...; mp4 (default for videos), mkv, "
                   "...; 'same' keeps the input's")
    z.add_argument("--overwrite", action="store_true",
                   help="replace output files that already exist (the input itself is never replaced)")
    z.add_argument("--tile", type=int, default=None,
                   help="tile side in input pixels (default: automatic when the activations exceed the memory budget)")
    z.add_argument("--overlap", type=int, default=None,
                   help="tile overlap in input pixels (default: 4x the model's receptive-field radius)")
    z.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    z.add_argument("--onnx", action="store_true", help="run through ONNX Runtime (exports the checkpoint first)")
    z.add_argument("--fast", action="store_true", help="CUDA fast path: bf16 autocast, channels_last, torch.compile")
    z.add_argument("--no-compile", action="store_true", help="with --fast: skip torch.compile (autocast + channels_last only)")
    z.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available)")
    v = z.add_argument_group("video and live sources")
    v.add_argument("--queue", type=int, default=8, help="frames buffered between decode/infer/encode")
    v.add_argument("--crf", type=int, default=18, help="H.264 quality: 0 lossless, 18 visually lossless (default), 23")
    v.add_argument("--preset", default="veryfast", help="x264 speed preset (default veryfast)")
    v.add_argument("--codec", default="libx264", help="FFmpeg encoder (default libx264; e.g. h264_nvenc on a GPU)")
    v.add_argument("--preview", action="store_true", help="show the enhanced frames in a window (q or Esc stops)")
    v.add_argument("--frames", type=int, default=None, help="stop after this many frames (live sources)")
    v.add_argument("--report", default=None, help="write the FPS/latency report as JSON here")
    z.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub) -> None:
    z = _parser(sub, "zoom", "enhance an image, a folder of images, a video or a live feed at a zoom factor",
                "retina-sr zoom eye.jpg --zoom 4 --suffix _sr --ext tif",
                "A folder's names are mirrored into --out; a video is streamed (decode, inference and encode "
                "overlap) and written as H.264 with its audio; a camera index or stream URL is enhanced live.")
    _zoom_arguments(z)
    z.set_defaults(func=_zoom)

    e = _parser(sub, "export-onnx", "export a checkpoint to ONNX (dynamic height/width) for a zoom",
                "retina-sr export-onnx --model models/l1/model.pt --zoom 4 --out lapsrn_x4.onnx",
                "The graph serves zooms in (2**(n-1), 2**n] for n = ceil(log2 zoom); by default it is the exact "
                "phase form that ONNX Runtime runs fastest on CPUs.")
    e.add_argument("--model", required=True, help="checkpoint path or MLflow URI")
    e.add_argument("--zoom", type=float, default=4.0, help="zoom the graph serves (its pyramid depth: ceil(log2 zoom))")
    e.add_argument("--out", default=None, help="output .onnx (default: <model stem>_x<zoom>.onnx beside it)")
    e.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    e.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="try this exporter first (dynamo falls back to torchscript on failure)")
    e.add_argument("--plain", action="store_true", help="export the model as written, not the phase form")
    e.set_defaults(func=_export)

    b = _parser(sub, "bench", "latency/FPS of bicubic, ESPCN, OpenCV's SR peers and the models (LapSRN, LR head)",
                "retina-sr bench --arch F16D3 --sizes 1920x1080 --zooms 2,4 --peers ../shared/peers/opencv_dnn_superres",
                "End to end (uint8 frame in, uint8 image out), eager vs the fast path (ONNX Runtime on CPU; bf16 + "
                "torch.compile + CUDA graphs on CUDA, with compiles counted and the difference to fp32).")
    b.add_argument("--model", action="append", default=None, help="checkpoint(s) (default: every model.pt under --models-dir)")
    b.add_argument("--models-dir", default="models")
    b.add_argument("--arch", action="append", default=None,
                   help="also time a random-weight architecture, e.g. F16D3 or F64D10 (LapSRN), lrhead:F16D3 (the LR head), "
                        "lrhead-direct:F16D3 (the LR head with model.direct; speed only)")
    b.add_argument("--sizes", default=None, help="output sizes WxH,... (default: 1920x1080,3840x2160 on CUDA, 1920x1080 on CPU)")
    b.add_argument("--zooms", default=None, help="zooms, e.g. 2,4,8 (default: 2,4,8 on CUDA, 4 on CPU)")
    b.add_argument("--repeats", type=int, default=None, help="timed runs per entry (default: 20 on CUDA, 3 on CPU)")
    b.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--peers", default=None, metavar="DIR",
                   help="also time OpenCV dnn_superres ESPCN/FSRCNN/LapSRN from the .pb files in DIR (same run)")
    b.add_argument("--plain-onnx", action="store_true",
                   help="CPU: also time the ONNX graph as written (export-onnx --plain) next to the phase graph")
    b.add_argument("--no-fast", action="store_true", help="skip the fast path (ONNX Runtime / bf16+compile)")
    b.add_argument("--no-baselines", action="store_true", help="skip bicubic and ESPCN")
    b.add_argument("--json", default=None, help="write the results as JSON here")
    b.set_defaults(func=_bench)
