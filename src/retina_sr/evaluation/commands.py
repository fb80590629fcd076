"""``retina-sr evaluate``: the evaluate stage from the command line (same as workflow/scripts/evaluate.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser, with_common: bool = True) -> None:
    """The evaluate stage's own options (``--params``/``--threads`` too unless ``with_common=False``)."""
    if with_common:
        p.add_argument("--params", action="append", default=None,
                       help="parameter file(s); later ones are merged on top (default: params.yaml)")
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch/OpenCV (default: all)")
    p.add_argument("--models", nargs="+", default=None, metavar="[NAME=]PATH",
                   help="checkpoints to evaluate (default: discover models/{l1,perceptual,adversarial}/model.pt "
                        "and models/modified/*/model.pt)")
    p.add_argument("--root", default=".", help="repository root holding data/ and models/ (default: .)")
    p.add_argument("--out", default=None, help="output folder (default: <root>/reports)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="device for the models (default: params train.device)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes scoring the images (default: the --threads budget)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log MLflow runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, params) -> int:
    from .stage import evaluate_study

    workers = args.workers if args.workers is not None else (args.threads or 1)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    result, files = evaluate_study(params, args.models, root=args.root, out_dir=args.out, device=args.device,
                                   mlflow=not args.no_mlflow, progress=not args.quiet, workers=workers)
    n_models = len(result.models)
    print(f"evaluated {n_models} model(s) + baselines on {result.test_description['count']} test image(s) "
          f"at zooms {result.test_description['zooms']} ({result.device})")
    for k, p in files.items():
        print(f"  {k}: {p}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..config import load_params
    from ..runtime import set_threads

    files = args.params or ["params.yaml"]
    params = load_params(files[0], *files[1:])
    args.threads = set_threads(args.threads)
    return run(args, params)


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


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="compare every trained model and the baselines on the test images")
    add_arguments(p)
    p.set_defaults(func=_evaluate)
    b = sub.add_parser("bundle-model", help="(developers) ship a checkpoint as the package's default model",
                       description="Evaluate a checkpoint on the held-out test split under --root, copy it into "
                                   "src/retina_sr/weights/, write its MODEL_CARD.md and registry entry. Example: "
                                   "retina-sr bundle-model --params params.yaml --model models/l1/model.pt "
                                   "--name retina-lapsrn-v1 --data-note docs/data_note.md")
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
