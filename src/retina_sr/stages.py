"""The pipeline's stages behind one entry point: ``python -m retina_sr.stages <stage> [options]``.

``dvc.yaml`` and ``Snakefile`` call the thin ``workflow/scripts/<stage>.py`` (three lines: ``main(<stage>)``).
Every stage is a function ``run(params, root, *, threads, **options) -> summary`` of its concern
(:mod:`retina_sr.data.stage`, :mod:`retina_sr.training.stage`, :mod:`retina_sr.evaluation.stage`); this
module gives them one argument parser (``--params FILE`` repeatable, ``--threads N``, ``--root DIR``, then
the stage's own options), one logging set-up (the package's messages on stderr) and one error -> exit
status mapping (:func:`retina_sr.runtime.exit_code`: 2 when an input must be fixed, 1 for a runtime
failure; one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runtime import add_stage_arguments, configure_logging, exit_code, load_stage

__all__ = ["Stage", "STAGES", "main"]

log = logging.getLogger("retina_sr.stages")


def _no_options(p: argparse.ArgumentParser) -> None:
    pass


def _train_options(p: argparse.ArgumentParser) -> None:
    from .training.stage import add_arguments

    add_arguments(p)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    from .evaluation.stage import add_arguments

    add_arguments(p)


def _run(module: str, name: str) -> Callable[..., str]:
    def run(*args: Any, **kwargs: Any) -> str:
        import importlib

        return str(getattr(importlib.import_module(module), name)(*args, **kwargs))

    return run


@dataclass(frozen=True)
class Stage:
    """A stage: what it does, its own options, and ``run(params, root, *, threads, **options)``."""

    name: str
    description: str
    run: Callable[..., str]
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_options


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("download", "gather the raw photographs into data/raw/", _run("retina_sr.data.stage", "download")),
    Stage("preprocess", "FOV crop, resize, masks, split by patient -> data/processed/",
          _run("retina_sr.data.stage", "preprocess")),
    Stage("patches", "training crops and degraded test pairs -> data/patches/", _run("retina_sr.data.stage", "patches")),
    Stage("train", "train one phase (train_<phase>[@<variant>]) -> models/<phase>[/<variant>]/",
          _run("retina_sr.training.stage", "train"), _train_options),
    Stage("evaluate", "every model and baseline on the test images -> reports/",
          _run("retina_sr.evaluation.stage", "evaluate"), _evaluate_options),
)}

_COMMON = {"params", "threads", "root"}


def parser(stage: Stage) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m retina_sr.stages {stage.name}",
                                description=f"Stage {stage.name}: {stage.description}.")
    add_stage_arguments(p)
    stage.add_arguments(p)
    return p


def main(name: str, argv: list[str] | None = None) -> int:
    """Run stage ``name`` with ``argv`` (default: the process arguments); returns the exit status."""
    configure_logging()
    stage = STAGES[name]
    args = parser(stage).parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in _COMMON}
    try:
        params = load_stage(args)
        summary = stage.run(params, Path(args.root), threads=args.threads, **options)
    except Exception as err:  # noqa: BLE001 - mapped to an exit status, or re-raised as a bug
        code = exit_code(err)
        if code is None:
            raise
        log.error("%s: error: %s", name, err)
        return code
    log.info("%s", summary)
    return 0


def _cli(argv: list[str]) -> int:
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m retina_sr.stages {{{','.join(STAGES)}}} [options]", file=sys.stderr)
        return 2
    return main(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
