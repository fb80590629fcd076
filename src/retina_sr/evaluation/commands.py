"""``retina-sr evaluate`` (the evaluate stage, as workflow/scripts/evaluate.py runs it) and ``bundle-model``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _evaluate(args: argparse.Namespace) -> int:
    from ..runtime import load_stage
    from .stage import evaluate

    params = load_stage(args)
    print(evaluate(params, Path(args.root), threads=args.threads, models=args.models, out=args.out,
                   device=args.device, workers=args.workers, no_mlflow=args.no_mlflow, quiet=args.quiet))
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from ..config import load_params
    from ..runtime import set_threads
    from .bundle import bundle_model

    files = args.params or ["params.yaml"]
    params = load_params(files[0], *files[1:])
    set_threads(args.threads)
    read = lambda p: Path(p).read_text().strip() if p else ""  # noqa: E731
    entry = bundle_model(params, args.model, args.name, root=args.root, data_note=read(args.data_note),
                         train_note=read(args.train_note), progress=not args.quiet, default=not args.not_default,
                         card_name=args.card, limits_note=read(args.limits_note))
    print(f"bundled {args.model} as {entry['name']} ({entry['file']}, sha256 {entry['sha256'][:12]}...)")
    print(entry["comparison"].to_string(index=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..runtime import add_stage_arguments
    from .stage import add_arguments

    p = sub.add_parser("evaluate", help="compare every trained model and the baselines on the test images")
    add_stage_arguments(p)
    add_arguments(p)
    p.set_defaults(func=_evaluate)
    b = sub.add_parser("bundle-model", help="(developers) ship a checkpoint as the package's default model",
                       description="Evaluate a checkpoint on the held-out test split under --root, copy it into "
                                   "src/retina_sr/weights/, write its MODEL_CARD.md and registry entry. Example: "
                                   "retina-sr bundle-model --params params.yaml --model models/l1/model.pt "
                                   "--name retina-lrhead-f48d6-v4 --data-note docs/data_note.md")
    b.add_argument("--params", action="append", default=None, help="parameter file(s) of the study that trained it")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--model", required=True, help="checkpoint to ship")
    b.add_argument("--name", required=True, help="bundled model name (also the weights file name)")
    b.add_argument("--root", default=".", help="study folder holding data/patches/test_x*.npz")
    b.add_argument("--data-note", default=None, help="markdown file: the training data and its attribution")
    b.add_argument("--train-note", default=None, help="markdown file: how it was trained (params, budget, machine)")
    b.add_argument("--limits-note", default=None, help="markdown file: extra limits of this model for its card")
    b.add_argument("--card", default="MODEL_CARD.md", help="model card file name in the weights folder")
    b.add_argument("--not-default", action="store_true", help="bundle without making it the default model")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_bundle)
