"""download stage: data/raw/ + data/raw/manifest.csv + data/raw/source.json (see docs/architecture.md)."""

import time

import _common


def main() -> int:
    args = _common.parser(__doc__).parse_args()
    params = _common.load(args)
    import sys

    from retina_sr.data.download import OutputConflictError, run_download
    from retina_sr.data.kaggle import KaggleError

    t0 = time.perf_counter()
    try:
        df = run_download(params)
    except (KaggleError, FileNotFoundError, OutputConflictError) as err:
        print(f"download: error: {err}", file=sys.stderr)
        return 2
    print(f"download: {len(df)} images from source '{params.data.source}' -> data/raw/manifest.csv "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    _common.run(main)
