"""``retina-sr models``: the models this installation ships, and the study's own checkpoints here."""

from __future__ import annotations

import argparse
from pathlib import Path


def _models(args: argparse.Namespace) -> int:
    from .bundled import bundled_checkpoint, bundled_models
    from .checkpoint import CheckpointError, read_checkpoint
    from .lapsrn import model_summary

    rows = bundled_models()
    print("bundled (use with --model NAME; the default is used without --model):")
    if not rows:
        print("  none in this installation")
    for m in rows:
        try:
            bundled_checkpoint(m.name)
            state = "sha256 ok"
        except CheckpointError as err:
            state = f"BROKEN: {err}"
        print(f"  {m.name}{' (default)' if m.default else ''}: {m.summary}; {m.path} ({state}); card: {m.path.parent / m.card}")
    found = sorted(Path(args.root).glob("models/**/model.pt"))
    if found:
        print(f"trained by the study under {Path(args.root).resolve()}:")
        for p in found:
            try:
                meta = read_checkpoint(p)["meta"]
                desc = model_summary(meta) + (f", val PSNR {meta['val_psnr']:.2f} dB" if meta.get("val_psnr") is not None else "")
            except CheckpointError as err:
                desc = f"unreadable: {err}"
            print(f"  {p}: {desc}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the bundled models and the study's checkpoints",
                       description="List the models shipped with retina-sr (name, file, sha256 check, model card) "
                                   "and the checkpoints the study wrote under --root. Example: retina-sr models")
    p.add_argument("--root", default=".", help="where to look for the study's models/ folder (default: .)")
    p.set_defaults(func=_models)
