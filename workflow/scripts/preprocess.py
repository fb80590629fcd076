"""preprocess stage: FOV crop + resize + masks + split -> data/processed/ (see docs/architecture.md)."""

import time

import _common


def main() -> int:
    args = _common.parser(__doc__).parse_args()
    params = _common.load(args)
    from retina_sr.data.preprocess import TooFewImagesError, preprocess_dataset

    d = params.data
    t0 = time.perf_counter()
    try:
        df, rejects = preprocess_dataset(size=d.size, val=d.split.val, test=d.split.test, seed=params.seed,
                                         group_pattern=d.split.group_pattern,
                                         workers=min(d.workers, args.threads) if args.threads else d.workers)
    except (TooFewImagesError, FileNotFoundError, ValueError) as err:
        print(f"preprocess: error: {err}")
        return 2
    counts = df["split"].value_counts().to_dict()
    print(f"preprocess: {len(df)} images ({counts}), {len(rejects)} rejected (data/processed/rejects.csv), "
          f"{time.perf_counter() - t0:.1f} s")
    for r in rejects.itertuples():
        print(f"  rejected {r.id}: {r.reason}")
    return 0


if __name__ == "__main__":
    _common.run(main)
