"""patches stage: data/patches/{train,val}.npz and test_x{s}.npz (see docs/architecture.md)."""

import time

import _common


def main() -> int:
    args = _common.parser(__doc__).parse_args()
    params = _common.load(args)
    from retina_sr.data.patches import run_patches

    t0 = time.perf_counter()
    try:
        counts = run_patches(params.data, params.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"patches: error: {err}")
        return 2
    print(f"patches: {counts} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    _common.run(main)
