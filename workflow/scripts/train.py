"""Stage ``train_<phase>`` (and ``train_modified@<variant>``): train one LapSRN phase.

    python workflow/scripts/train.py --params params.yaml [--params override.yaml] [--threads N] \\
        --phase l1|perceptual|adversarial|modified [--variant NAME]

Writes ``models/<phase>/`` or ``models/modified/<variant>/`` (``model.pt``, ``last.pt``,
``metrics.json``, ``plots.csv``) and one MLflow run; a killed run resumes from ``last.pt``.
See ``retina_sr.training.trainer``.
"""

from __future__ import annotations

import sys

from _common import load, parser, run


def main() -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--phase", required=True, choices=["l1", "perceptual", "adversarial", "modified"])
    p.add_argument("--variant", default=None, help="variant of train.modified.variants (--phase modified only)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = p.parse_args()
    params = load(args)
    from retina_sr.models.checkpoint import CheckpointError
    from retina_sr.training import PatchDataError, train_phase

    try:
        result = train_phase(params, args.phase, args.variant, progress=not args.no_progress)
    except (PatchDataError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result.out_dir}: best step {result.best_step}, val PSNR "
          + ", ".join(f"{k} {v:.2f} dB" for k, v in result.val_psnr.items())
          + f", {result.steps_per_s:.2f} steps/s ({args.threads} threads)")
    return 0


if __name__ == "__main__":
    run(main)
