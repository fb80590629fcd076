"""Stage ``evaluate``: every trained model and the classic baselines on the held-out test images.

    python workflow/scripts/evaluate.py --params params.yaml [--threads N] [--models [NAME=]PATH ...]

Writes reports/metrics.json, reports/results.csv, reports/summary.md, reports/plots/*.csv and
reports/figures/*.png, and one MLflow run per model in ``mlflow.evaluation_experiment``.
"""

from __future__ import annotations

import _common


def main() -> int:
    from retina_sr.evaluation.commands import add_arguments, run

    p = _common.parser(__doc__.split("\n")[0])
    add_arguments(p, with_common=False)
    args = p.parse_args()
    params = _common.load(args)
    from retina_sr.evaluation.testset import EvaluationInputError
    from retina_sr.models.checkpoint import CheckpointError

    try:
        return run(args, params)
    except (EvaluationInputError, CheckpointError) as err:
        import sys

        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    _common.run(main)
