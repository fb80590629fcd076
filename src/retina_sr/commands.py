"""Top-level sub-commands: parameter validation and composition."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import load_params


def _validate(args: argparse.Namespace) -> int:
    files = [*args.params, *args.files] or ["params.yaml"]
    p = load_params(files[0], *files[1:])
    print(f"{' + '.join(files)}: valid (study={p.study}, source={p.data.source}, digest={p.digest()})")
    return 0


def _compose(args: argparse.Namespace) -> int:
    from .config import compose_yaml, load_composed

    overrides = [f"study={args.study}", *args.overrides]
    load_composed(overrides, args.conf)  # validate before writing
    text = compose_yaml(overrides, args.conf)  # what `dvc exp run -S study=...` writes into params.yaml
    if args.out == "-":
        print(text, end="")
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} (study={args.study})")
    return 0


def commit_finished_stages(root: str | Path = ".") -> list[str]:
    """Record in ``dvc.lock`` every DVC stage whose outputs all exist (what ``dvc commit`` does per stage).

    Snakemake's ``onsuccess`` calls this so that ``dvc repro`` after ``snakemake`` redoes nothing.
    """
    from dvc.repo import Repo

    done = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            if getattr(stage, "name", None) and stage.outs and all(o.exists for o in stage.outs):
                repo.commit(stage.addressing, force=True)
                done.append(stage.addressing)
    return done


def _dvc_commit(args: argparse.Namespace) -> int:
    done = commit_finished_stages(args.root)
    print(f"dvc.lock: recorded {len(done)} finished stages ({', '.join(done) or 'none'})")
    return 0


def register(sub) -> None:
    d = sub.add_parser("dvc-commit", help="record finished stages (outputs present) in dvc.lock without rerunning them")
    d.add_argument("--root", default=".")
    d.set_defaults(func=_dvc_commit)
    p = sub.add_parser("params", help="validate or compose the parameter file")
    psub = p.add_subparsers(dest="params_command", required=True)
    v = psub.add_parser("validate", help="validate params.yaml (and override files merged on top)")
    v.add_argument("files", nargs="*", metavar="FILE",
                   help="params.yaml (the default), then files merged on top, e.g. conf/study/full.yaml")
    v.add_argument("--params", action="append", default=[], metavar="FILE",
                   help="the same as an option, repeatable (as the stage scripts take it); comes before FILEs")
    v.set_defaults(func=_validate)
    c = psub.add_parser("compose", help="compose conf/ into a params file (what `dvc exp run -S study=...` does)")
    c.add_argument("--study", default="demo")
    c.add_argument("--conf", default="conf")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more Hydra overrides, e.g. train.l1.steps=100")
    c.add_argument("--out", default="-", help="output file ('-' = stdout)")
    c.set_defaults(func=_compose)
