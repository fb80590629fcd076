"""retina-sr: super-resolution, deblurring and denoising of retinal fundus photographs.

Each concern registers its own sub-commands (``<concern>/commands.py`` exposes
``register(subparsers)``); this module assembles them and presents them: the commands a user of the
zoom tool reaches for first (:data:`USER_COMMANDS`), the pipeline's own after them, and in every
``--help`` a one-line description and an example (:data:`EXAMPLES` where a command's module gives none).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import textwrap
import warnings

log = logging.getLogger("retina_sr.cli")

# concern modules that contribute sub-commands (imported lazily so `--help` stays fast)
COMMAND_MODULES = (
    "retina_sr.commands",
    "retina_sr.models.commands",
    "retina_sr.data.commands",
    "retina_sr.training.commands",
    "retina_sr.evaluation.commands",
    "retina_sr.inference.commands",
)

#: the commands of a user of the zoom tool, listed first and in this order; every other sub-command is
#: the pipeline's (run by DVC/Snakemake) or a developer's, listed after them
USER_COMMANDS = ("zoom", "bench", "export-onnx", "models", "params")

#: an example for each sub-command ("name" or "name sub") whose own parser shows none; a test parses
#: each one, so an example cannot drift from its command's options
EXAMPLES = {
    "zoom": "retina-sr zoom eye.jpg --zoom 4",
    "bench": "retina-sr bench --arch F16D3 --sizes 1920x1080 --zooms 4 --repeats 3",
    "export-onnx": "retina-sr export-onnx --model models/l1/model.pt --zoom 4 --out l1_x4.onnx",
    "models": "retina-sr models",
    "params": "retina-sr params validate params.yaml",
    "params validate": "retina-sr params validate params.yaml conf/study/full.yaml",
    "params compose": "retina-sr params compose --study full --out params.yaml",
    "dvc-commit": "retina-sr dvc-commit --root .",
    "tracking": "retina-sr tracking init",
    "tracking init": "retina-sr tracking init --params params.yaml",
    "train": "retina-sr train --phase l1 --params params.yaml",
    "bench-train": "retina-sr bench-train --sizes demo,full --steps 20",
    "evaluate": "retina-sr evaluate --params params.yaml --models l1=models/l1/model.pt",
    "bundle-model": "retina-sr bundle-model --params params.yaml --model models/l1/model.pt --name retina-lrhead-f48d6-v4",
    "phantom": "retina-sr phantom --seed 3 --size 512 --out phantom.png",
    "bench-preprocess": "retina-sr bench-preprocess --images data/raw --limit 20",
}

_EXAMPLE = re.compile(r"\bexamples?\b", re.IGNORECASE)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-paragraph description as argparse does, but keeps text laid out in lines (the
    examples, the list of pipeline commands) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "\n".join(indent + line if line else "" for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def walk_commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """``(path, parser, one_line_help)`` of every sub-command, depth first (``"params validate"``)."""
    sub = _subparsers(parser)
    if sub is None:
        return
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, child in sub.choices.items():
        path = f"{prefix} {name}".strip()
        yield path, child, helps.get(name)
        yield from walk_commands(child, path)


def _present(parser: argparse.ArgumentParser) -> None:
    """Description and example in every sub-command's help; user commands first in the overview."""
    for path, child, line in walk_commands(parser):
        if child.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
            child.formatter_class = _HelpFormatter  # keeps laid-out text as written, wraps paragraphs
        if not child.description and line and line is not argparse.SUPPRESS:
            child.description = line[0].upper() + line[1:] + ("" if line.endswith(".") else ".")
        shown = f"{child.description or ''}\n{child.epilog or ''}"
        if path in EXAMPLES and not _EXAMPLE.search(shown):
            child.epilog = ((child.epilog.rstrip() + "\n\n") if child.epilog else "") + f"example:\n  {EXAMPLES[path]}"
    sub = _subparsers(parser)
    if sub is None:
        raise RuntimeError("retina-sr: no sub-commands registered")  # build_parser always adds them
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    user = [n for n in USER_COMMANDS if n in helps]
    other = [n for n in helps if n not in USER_COMMANDS]
    width = max(map(len, helps), default=0) + 2

    def listing(names: list[str]) -> list[str]:
        out = []
        for n in names:
            wrapped = textwrap.wrap(helps[n], 100 - 2 - width) or [""]
            out.append(f"  {n:<{width}}{wrapped[0]}")
            out += [" " * (2 + width) + w for w in wrapped[1:]]
        return out

    # argparse lists every choice in one block, in registration order: the overview is written here
    # instead, the commands a user wants first, the pipeline's after them
    lines = ["commands:", *listing(user)]
    if other:
        lines += ["", "pipeline and developer commands (run by DVC/Snakemake; `retina-sr COMMAND -h` for each):",
                  *listing(other)]
    lines += ["", "examples:",
              f"  {EXAMPLES['zoom']:<64}# -> eye_x4.png, bundled default model",
              f"  {'retina-sr zoom surgery.mp4 --zoom 2 --model models/l1/model.pt':<64}# a video, a study checkpoint",
              f"  {'retina-sr zoom eye.jpg --model models:/retina-sr/3':<64}# a version in the MLflow registry",
              f"  {EXAMPLES['models']:<64}# what is bundled and trained"]
    parser.epilog = "\n".join(lines)
    sub.help = argparse.SUPPRESS
    parser.usage = f"{parser.prog} [-h] [--version] COMMAND ..."


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    summary = __doc__.split("\n")[0].split(": ", 1)[1]
    parser = argparse.ArgumentParser(prog="retina-sr", description=summary[0].upper() + summary[1:],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"retina-sr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # concern without commands yet
                continue
            raise
        mod.register(sub)
    _present(parser)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``warning: <message>``, without the Python source location."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command. Exit codes as the stages' (:func:`retina_sr.runtime.exit_code`): 0 done,
    1 runtime failure, 2 usage error (bad arguments, paths, inputs or config, an output in the way),
    130 interrupted; an unexpected error (a bug) shows its traceback."""
    from .runtime import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - mapped to an exit status, or re-raised as a bug
        from .runtime import exit_code

        code = exit_code(err)
        if code is None:
            raise
        return _fail(args.command, err, code)
    finally:
        warnings.showwarning = shown
    return int(rc or 0)


def _fail(command: str, err: BaseException, code: int) -> int:
    text = str(err) or ("out of memory" if isinstance(err, MemoryError) else type(err).__name__)
    log.error("retina-sr %s: error: %s", command, text)  # one line on stderr (runtime.configure_logging)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
