"""Shared argument handling for the thin ``workflow/scripts/<stage>.py`` wrappers.

Every script takes ``--params FILE`` (repeatable: later files are deep-merged on top, which is how
Snakemake's ``--configfile conf/study/full.yaml`` reaches the scripts) and ``--threads N``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# the scripts run from the repository root with the package installed; make a source checkout work too
_SRC = Path(__file__).resolve().parents[2] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", action="append", default=None,
                   help="parameter file(s); later ones are merged on top (default: params.yaml)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch/OpenCV (default: all)")
    return p


def load(args: argparse.Namespace):
    from retina_sr.config import load_params
    from retina_sr.runtime import set_threads

    files = args.params or ["params.yaml"]
    params = load_params(files[0], *files[1:])
    args.threads = set_threads(args.threads)
    return params


def run(main) -> None:
    """Run ``main()`` turning configuration and input errors into one clear line and exit code 2."""
    from retina_sr.config import ConfigError
    from retina_sr.tracking import TrackingStoreError

    try:
        sys.exit(main() or 0)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrackingStoreError as err:  # corrupt or locked MLflow store: a runtime failure
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
