"""End-to-end speed benchmark: bicubic, ESPCN-class baselines, OpenCV's SR peers and our LapSRN models.

Every timed call is "end to end" for one frame: the uint8 RGB host frame goes in (crop, upload,
conversion), is enhanced, and comes back as a uint8 host image of the output size. Latency is
measured with :func:`retina_sr.runtime.time_call` (``time.perf_counter``); the table reports the
median, 95th and 99th percentile latency and the FPS of the median. For one output size and zoom the methods are timed in rounds (one call of
each per round, after one warm-up call each), so on a shared machine they see the same load; compare
rows of the same run only (and say when the machine was shared).

Methods:
* ``bicubic``: ``cv2.resize(..., INTER_CUBIC)`` on the host.
* ``espcn``: ESPCN (Shi et al., CVPR 2016) with RANDOM weights in PyTorch (speed only).
* ``peer``: OpenCV ``dnn_superres`` ESPCN / FSRCNN / LapSRN with their published weights (``--peers
  DIR``, the ``.pb`` files), what a user would pick instead; skipped with the reason when absent.
* each LapSRN checkpoint (or a random-weight architecture given as ``--arch F64D10``), eager fp32
  and the fast path: ONNX Runtime on CPU (the exact phase graph, ``fuse``), bf16 autocast +
  channels-last + ``torch.compile`` (CUDA graphs, 64-px buckets) on CUDA.

For the compiled path Dynamo is reset before each entry, the entry is warmed up explicitly
(compile, CUDA-graph capture), and the graphs compiled during warm-up and during the timed calls are
counted (``torch._dynamo`` counters): a compiled row with no graph (it would have run eager) or
with a recompilation inside the timed calls is an error, not a row. Each fast row also reports its
max abs difference to eager fp32 on the same frame, in 8-bit grey levels.
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from ..config import parse_arch
from ..runtime import time_call

if TYPE_CHECKING:
    from .enhancer import Enhancer
    from .onnx import OnnxEnhancer

__all__ = ["BenchRow", "ESPCN", "parse_sizes", "parse_bench_arch", "find_models", "run_bench", "format_table"]


@dataclass
class BenchRow:
    method: str  # bicubic | espcn | peer | lapsrn
    model: str  # label: checkpoint path or architecture
    backend: str  # e.g. "opencv", "cpu eager fp32", "onnxruntime CPUExecutionProvider fp32 (phase graph, ...)"
    device: str
    zoom: float
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    repeats: int
    median_ms: float
    p95_ms: float
    fps: float
    note: str = ""
    p99_ms: float = math.nan
    compiles: int | None = None  # graphs compiled during the explicit warm-up (compiled path)
    recompiles: int | None = None  # graphs compiled during the timed calls (must be 0)
    max_abs_vs_fp32: float | None = None  # fast path vs eager fp32, 8-bit grey levels


class ESPCN(torch.nn.Module):
    """ESPCN (Shi et al. 2016) with the paper's 5-3-3 layout; random weights unless trained."""

    def __init__(self, scale: int, features: int = 64) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, features, 5, padding=2), torch.nn.Tanh(),
            torch.nn.Conv2d(features, features // 2, 3, padding=1), torch.nn.Tanh(),
            torch.nn.Conv2d(features // 2, 3 * scale * scale, 3, padding=1), torch.nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1920x1080,3840x2160"`` -> ``[(1920, 1080), (3840, 2160)]`` (output width x height)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)[xX](\d+)", part)
        if not m or int(m[1]) < 1 or int(m[2]) < 1:
            raise ValueError(f"size {part!r} is not WIDTHxHEIGHT (e.g. 1920x1080)")
        out.append((int(m[1]), int(m[2])))
    if not out:
        raise ValueError("no output size given (e.g. --sizes 1920x1080)")
    return out


def _row(method: str, model: str, backend: str, device: str, zoom: float, in_size: tuple[int, int],
         out_size: tuple[int, int], times: list[float], note: str = "", **extra: Any) -> BenchRow:
    med = float(np.median(times))
    return BenchRow(method, model, backend, device, zoom, in_size, out_size, len(times), med * 1e3,
                    float(np.percentile(times, 95)) * 1e3, 1.0 / med if med > 0 else math.inf, note,
                    float(np.percentile(times, 99)) * 1e3, **extra)


def find_models(root: str | Path = "models") -> list[Path]:
    """Every ``model.pt`` under ``root`` (``models/<phase>/model.pt``, ``models/modified/<v>/model.pt``)."""
    root = Path(root)
    return sorted(root.rglob("model.pt")) if root.is_dir() else []


def _frame(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB uint8 frame (content does not change the timing of dense convs)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _espcn_fn(net: torch.nn.Module, frame: np.ndarray, device: torch.device) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(frame).to(device).permute(2, 0, 1)[None].float().div_(255)
            y = net(x).clamp_(0, 1).mul_(255).round_().to(torch.uint8)[0].permute(1, 2, 0)
            return y.cpu().numpy()
    return run


@dataclass
class _Case:
    """One output size and zoom: the frame and what every row of it shares."""

    zoom: float
    frame: np.ndarray
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    repeats: int
    device: torch.device


@dataclass
class _Timed:
    """One method of a case: what to call, and how to describe its row once timed."""

    method: str
    model: str
    backend: str
    fn: Callable[[], Any]
    out_size: tuple[int, int] | None = None  # None: the case's
    note: str = ""
    after: Callable[[], dict[str, Any]] | None = None  # checks and extra fields once timed


def _round_robin(timed: list[_Timed], repeats: int) -> list[list[float]]:
    """Seconds of each method's calls, one call of every method per round after one warm-up call
    each: on a shared machine every method sees the same load (not one method a quiet minute)."""
    for t in timed:
        t.fn()  # warm-up
    times: list[list[float]] = [[] for _ in timed]
    for _ in range(repeats):
        for t, acc in zip(timed, times):
            acc += time_call(t.fn, repeats=1, warmup=0)
    return times


def _baselines(case: _Case) -> list[_Timed]:
    frame, z = case.frame, case.zoom
    timed = [_Timed("bicubic", "OpenCV INTER_CUBIC", "opencv",
                    lambda: cv2.resize(frame, case.out_size, interpolation=cv2.INTER_CUBIC))]
    if float(z).is_integer() and z >= 2:
        torch.manual_seed(0)
        net = ESPCN(int(z)).to(case.device).eval()
        timed.append(_Timed("espcn", "ESPCN 64-32 (random weights)", f"{case.device.type} eager fp32",
                            _espcn_fn(net, frame, case.device), (case.in_size[0] * int(z), case.in_size[1] * int(z)),
                            "random weights: speed only"))
    return timed


def _peers(case: _Case, peers_dir: str | Path | None, log: Callable[[str], None]) -> list[_Timed]:
    """OpenCV dnn_superres peers at this (integer) zoom, or the reasons they were skipped."""
    from ..evaluation.baselines import load_peers

    z = case.zoom
    if peers_dir is None:
        return []
    if not (float(z).is_integer() and z >= 2):
        log(f"peers skipped at x{z:g}: they exist for integer zooms only")
        return []
    found, skipped = load_peers(peers_dir, [int(z)])
    for reason in skipped:
        log(reason)
    return [_Timed("peer", name, f"opencv dnn_superres ({Path(peer.path).name})", partial(peer, case.frame),
                   (case.in_size[0] * s, case.in_size[1] * s), "published weights (natural images)")
            for (name, s), peer in sorted(found.items())]


#: ``--arch`` kinds: a ``model.arch`` and what else it sets
BENCH_KINDS: dict[str, dict[str, Any]] = {"lapsrn": {"arch": "lapsrn"}, "lrhead": {"arch": "lrhead"},
                                          "lrhead-direct": {"arch": "lrhead", "direct": True}}


def parse_bench_arch(text: str) -> tuple[str, int, int]:
    """``"F16D3"`` -> ``("lapsrn", 16, 3)``, ``"lrhead:F16D3"`` -> ``("lrhead", 16, 3)``: a kind of
    :data:`BENCH_KINDS` (``lrhead-direct``: the LR head with ``model.direct``) and a size.

    >>> parse_bench_arch("lrhead:F32D3")
    ('lrhead', 32, 3)
    """
    kind, _, size = text.strip().rpartition(":")
    kind = kind.strip().lower() or "lapsrn"
    if kind not in BENCH_KINDS:
        raise ValueError(f"architecture {text!r}: {kind!r} is not one of {', '.join(BENCH_KINDS)}; use e.g. "
                         "lapsrn:F16D3, lrhead:F16D3 or lrhead-direct:F16D3")
    return (kind, *parse_arch(size))


def _entries(models: Sequence[str | Path], archs: Sequence[tuple[str, int, int]]) -> list[tuple[str, torch.nn.Module, dict]]:
    """(label, model, meta) for checkpoints and random-weight architectures."""
    from ..config import ModelConfig
    from ..models import arch_name, build_model
    from ..models.checkpoint import load_model
    from .enhancer import resolve_checkpoint

    entries = []
    for p in models:
        model, meta = load_model(resolve_checkpoint(p), device="cpu")  # a path, bundled name or MLflow URI
        cfg = meta["model"]
        entries.append((f"{p} ({arch_name(cfg)} F{cfg['features']} D{cfg['depth']})", model, meta))
    for kind, f, d in archs:
        cfg = ModelConfig(**BENCH_KINDS[kind], features=f, depth=d)  # parse_bench_arch checked the kind
        torch.manual_seed(0)
        entries.append((f"{arch_name(cfg.model_dump())} F{f} D{d} (random weights)", build_model(cfg, levels=3),
                        {"model": cfg.model_dump(), "levels": 3, "scales": [1, 2, 4, 8], "phase": "bench"}))
    return entries


def _graphs(stats: dict) -> int:
    return sum(s.compiles for s in stats.values())


def _fast_enhancer(model: torch.nn.Module, meta: dict, case: _Case, workdir: str,
                   fuse: bool = True) -> tuple[Enhancer | OnnxEnhancer, int | None]:
    """The fast path of this device, warmed up: (enhancer, graphs compiled during warm-up or None)."""
    from .enhancer import Enhancer
    from .onnx import OnnxEnhancer, export_onnx

    if case.device.type != "cuda":
        path = Path(workdir) / f"m{id(model)}_z{case.zoom:g}_{'phase' if fuse else 'plain'}.onnx"
        export_onnx(model, path, case.zoom, meta=meta, fuse=fuse)
        onnx_enh = OnnxEnhancer(path, threads=torch.get_num_threads())
        onnx_enh.warmup(case.in_size, [case.zoom])
        return onnx_enh, None
    torch._dynamo.reset()  # every entry compiles from scratch: its own graphs, its own recompile budget
    fenh = Enhancer(copy.deepcopy(model), meta, device=case.device, fast=True)  # a copy: channels_last in place
    fenh.warmup(case.in_size, [case.zoom])
    compiles = _graphs(fenh.compile_stats)
    if "compile" in fenh.mode and compiles == 0:
        raise RuntimeError(f"{fenh.mode}: warm-up compiled no graph, so this row would time an eager run labelled "
                           "'compile' (torch.compile unavailable or falling back); run with --no-fast")
    return fenh, compiles


def _fast(case: _Case, label: str, model: torch.nn.Module, meta: dict, workdir: str, fuse: bool = True) -> _Timed:
    """The warmed-up fast path; once timed: its recompiles (an error if any) and difference to fp32."""
    from .enhancer import Enhancer

    fenh, compiles = _fast_enhancer(model, meta, case, workdir, fuse)
    stats = getattr(fenh, "compile_stats", {})
    before = _graphs(stats)

    def after() -> dict[str, Any]:
        recompiles = _graphs(stats) - before if compiles is not None else None
        if recompiles:
            raise RuntimeError(f"{label} {fenh.mode}: {recompiles} graph(s) compiled during the timed calls after "
                               f"warm-up at {case.in_size[0]}x{case.in_size[1]} x{case.zoom:g}: the timing would "
                               "include compilation; the input shape is not stable (bucket)")
        ref = Enhancer(model, meta, device=case.device, bucket=getattr(fenh, "bucket", None) or 0)
        diff = float(np.abs(np.asarray(fenh.enhance(case.frame, case.zoom), dtype=np.int16)
                            - np.asarray(ref.enhance(case.frame, case.zoom), dtype=np.int16)).max())
        return {"compiles": compiles, "recompiles": recompiles, "max_abs_vs_fp32": diff}

    note = f"{len(stats)} bucket(s) warmed up explicitly" if compiles is not None else "warmed up explicitly"
    return _Timed(_method(meta), label, fenh.mode, lambda: fenh.enhance(case.frame, case.zoom), note=note, after=after)


def _method(meta: dict) -> str:
    """The rows' method column for one of our models: its ``model.arch`` (``lapsrn`` or ``lrhead``)."""
    from ..models import arch_of

    return arch_of(meta.get("model", {}))


def _lapsrn(case: _Case, label: str, model: torch.nn.Module, meta: dict, fast: bool, workdir: str,
            plain_onnx: bool = False) -> list[_Timed]:
    """Eager fp32, the fast path, and (CPU, ``plain_onnx``) the ONNX graph as written, for comparison."""
    from .enhancer import Enhancer

    enh = Enhancer(model, meta, device=case.device)
    timed = [_Timed(_method(meta), label, enh.mode, lambda: enh.enhance(case.frame, case.zoom))]
    variants = ([True] + ([False] if plain_onnx and case.device.type != "cuda" else [])) if fast else []
    return timed + [_fast(case, label, model, meta, workdir, fuse) for fuse in variants]


def _case_rows(case: _Case, timed: list[_Timed], log: Callable[[str], None]) -> list[BenchRow]:
    rows = []
    for t, times in zip(timed, _round_robin(timed, case.repeats)):
        extra = t.after() if t.after is not None else {}
        rows.append(_row(t.method, t.model, t.backend, "cpu" if t.method in ("bicubic", "peer") else case.device.type,
                         case.zoom, case.in_size, t.out_size or case.out_size, times, t.note, **extra))
        log(_fmt(rows[-1]))
    return rows


def run_bench(
    models: Sequence[str | Path],
    sizes: list[tuple[int, int]],
    zooms: list[float],
    repeats: int = 3,
    device: str = "auto",
    archs: Sequence[tuple[str, int, int]] = (),
    fast: bool = True,
    baselines: bool = True,
    log: Callable[[str], None] = print,
    peers_dir: str | Path | None = None,
    plain_onnx: bool = False,
) -> dict[str, Any]:
    """Time every method at every output size and zoom; returns ``{"env": ..., "rows": [...]}``.

    Within one size and zoom the methods are timed in rounds (one call of each per round), so they
    share the machine's load. ``peers_dir``: also time OpenCV's dnn_superres peers from there;
    ``plain_onnx``: on CPU also time the ONNX graph as written next to the phase graph.
    """
    from ..runtime import device_name
    from .base import resolve_device

    dev = resolve_device(device)
    entries = _entries(models, archs)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="retina-sr-bench-") as tmp:
        for w, h in sizes:
            for z in zooms:
                in_size = (max(1, round(w / z)), max(1, round(h / z)))
                case = _Case(z, _frame(*in_size), in_size, (w, h), repeats, dev)
                timed = (_baselines(case) if baselines else []) + _peers(case, peers_dir, log)
                for label, model, meta in entries:
                    if z > 2 ** int(meta["levels"]):
                        log(f"skip {label} at x{z}: above its max zoom x{2 ** int(meta['levels'])}")
                        continue
                    timed += _lapsrn(case, label, model, meta, fast, tmp, plain_onnx)
                rows += _case_rows(case, timed, log)
    env = {"device": device_name(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "repeats": repeats, "end_to_end": "uint8 host frame in -> uint8 host image out",
           "timing": "round robin: one call of every method per round, after one warm-up call each",
           "espcn": "random weights, speed only (Shi et al. 2016 layout)",
           "peers_dir": str(peers_dir) if peers_dir else None}
    return {"env": env, "rows": [asdict(r) for r in rows]}


def _fmt(r: BenchRow) -> str:
    extra = ""
    if r.compiles is not None:
        extra += f"  compiles {r.compiles} recompiles {r.recompiles}"
    if r.max_abs_vs_fp32 is not None:
        extra += f"  max|d| vs fp32 {r.max_abs_vs_fp32:g}/255"
    return (f"{r.method:8s} {r.model[:44]:44s} {r.backend[:60]:60s} x{r.zoom:<4g} "
            f"{r.in_size[0]}x{r.in_size[1]}->{r.out_size[0]}x{r.out_size[1]} "
            f"median {r.median_ms:9.1f} ms  p95 {r.p95_ms:9.1f} ms  {r.fps:8.2f} FPS{extra}")


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of a :func:`run_bench` result."""
    env = result["env"]
    lines = [f"device: {env['device']}, torch {env['torch']}, {env['repeats']} repeats after warm-up, "
             f"end to end ({env['end_to_end']})", "",
             "| method | model | backend | zoom | input | output | median ms | p95 ms | p99 ms | FPS | compiles "
             "(recompiles) | max abs vs fp32 (/255) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        comp = "" if r.get("compiles") is None else f"{r['compiles']} ({r['recompiles']})"
        diff = "" if r.get("max_abs_vs_fp32") is None else f"{r['max_abs_vs_fp32']:g}"
        lines.append(f"| {r['method']} | {r['model']} | {r['backend']} | {r['zoom']:g} | "
                     f"{r['in_size'][0]}x{r['in_size'][1]} | {r['out_size'][0]}x{r['out_size'][1]} | "
                     f"{r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r.get('p99_ms', math.nan):.1f} | {r['fps']:.2f} | "
                     f"{comp} | {diff} |")
    return "\n".join(lines)
