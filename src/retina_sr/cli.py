"""retina-sr: super-resolution, deblurring and denoising of retinal fundus photographs.

Each concern registers its own sub-commands (``<concern>/commands.py`` exposes
``register(subparsers)``); this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# concern modules that contribute sub-commands (imported lazily so `--help` stays fast)
COMMAND_MODULES = (
    "retina_sr.commands",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .config import ConfigError

    try:
        rc = args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"retina-sr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
