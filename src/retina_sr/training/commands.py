"""``retina-sr`` sub-commands of the training concern: ``train``, ``bench-train``, ``tracking init``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _params(args: argparse.Namespace):
    from ..config import load_params

    files = args.params or ["params.yaml"]
    return load_params(files[0], *files[1:])


def _tracking_init(args: argparse.Namespace) -> int:
    from .. import tracking
    from ..config import Params

    params = _params(args) if args.params or _exists("params.yaml") else Params()
    uri = tracking.init_store(tracking.resolve_tracking_uri(params))
    print(f"MLflow store ready: {uri}")
    return 0


def _exists(path: str) -> bool:
    return Path(path).is_file()


def _train(args: argparse.Namespace) -> int:
    from ..runtime import load_stage
    from .stage import train

    params = load_stage(args)
    print(train(params, Path(args.root), threads=args.threads, phase=args.phase, variant=args.variant,
                no_progress=args.no_progress))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..runtime import set_threads
    from .bench import HEADER, bench_train, format_row

    set_threads(args.threads)
    params = _params(args) if args.params or _exists("params.yaml") else None
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    print(HEADER, flush=True)
    results = bench_train(sizes=sizes, steps=args.steps, device=args.device, batch_size=args.batch,
                          crop=args.crop, perceptual=not args.no_perceptual, warmup=args.warmup, params=params,
                          degrade_on=_choices(args.degrade_on, ("auto", "host", "device"), "--degrade-on"),
                          compile=[c == "on" for c in _choices(args.compile, ("off", "on"), "--compile")],
                          on_result=lambda r: print(format_row(r), flush=True))
    if results:
        print(f"(zooms cycled per step: {results[0]['scales']}; {results[0]['steps']} timed steps after warm-up)")
    return 0


def _choices(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: {value!r} is not a comma list of {', '.join(allowed)}")
    return items


def register(sub: argparse._SubParsersAction) -> None:
    from ..runtime import add_stage_arguments
    from .stage import add_arguments

    p = sub.add_parser("tracking", help="MLflow tracking store")
    tsub = p.add_subparsers(dest="tracking_command", required=True)
    t = tsub.add_parser("init", help="create the MLflow store once (run before parallel dvc/snakemake jobs)")
    t.add_argument("--params", action="append", default=None, help="parameter file(s) (default: params.yaml)")
    t.set_defaults(func=_tracking_init)

    tr = sub.add_parser("train", help="train one phase (the train_<phase> stage, as workflow/scripts/train.py runs it)")
    add_stage_arguments(tr)
    add_arguments(tr)
    tr.set_defaults(func=_train)

    b = sub.add_parser("bench-train", help="training steps/s for the demo and full-study model sizes")
    b.add_argument("--sizes", default="demo,full", help="comma list of demo (F16 D3) and full (F64 D10)")
    b.add_argument("--steps", type=int, default=4, help="timed steps per configuration (rounded up to whole zoom cycles)")
    b.add_argument("--warmup", type=int, default=4, help="untimed steps first (rounded up to whole zoom cycles)")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--batch", type=int, default=None, help="batch size (default: the study's train.loop.batch_size)")
    b.add_argument("--crop", type=int, default=None, help="HR crop side (default: the study's data.patches.crop)")
    b.add_argument("--no-perceptual", action="store_true", help="skip the pixel+perceptual measurement")
    b.add_argument("--degrade-on", default="auto",
                   help="train.loop.degrade_on setting(s) to time, comma list of auto, host, device (e.g. host,device)")
    b.add_argument("--compile", default="off", help="train.loop.compile setting(s) to time: off, on or off,on")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--params", action="append", default=None,
                   help="parameter file(s) for scales/batch/crop/EMA (default: params.yaml when present)")
    b.set_defaults(func=_bench)
