"""retina-sr: super-resolution, deblurring and denoising of retinal fundus photographs.

Each concern registers its own sub-commands (``<concern>/commands.py`` exposes
``register(subparsers)``); this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# concern modules that contribute sub-commands (imported lazily so `--help` stays fast)
COMMAND_MODULES = (
    "retina_sr.commands",
    "retina_sr.models.commands",
    "retina_sr.data.commands",
    "retina_sr.training.commands",
    "retina_sr.evaluation.commands",
    "retina_sr.inference.commands",
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="retina-sr", description=__doc__.split("\n")[0].split(": ", 1)[1])
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
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``warning: <message>``, without the Python source location."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command. Exit codes: 0 done, 1 runtime failure, 2 usage error (bad arguments,
    paths, inputs or config), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .config import ConfigError

    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        rc = args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        return _fail(args.command, err, 2)
    except (RuntimeError, OSError, MemoryError) as err:
        return _fail(args.command, err, 1)
    except KeyboardInterrupt:
        return 130
    finally:
        warnings.showwarning = shown
    return int(rc or 0)


def _fail(command: str, err: BaseException, code: int) -> int:
    text = str(err) or ("out of memory" if isinstance(err, MemoryError) else type(err).__name__)
    print(f"retina-sr {command}: error: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
