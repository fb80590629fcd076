"""``retina-sr`` sub-commands of the data concern: ``bench-preprocess`` and ``phantom``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _bench(args: argparse.Namespace) -> int:
    from .preprocess import benchmark

    images = Path(args.images)
    if not images.is_dir():
        raise FileNotFoundError(f"{images} is not a folder of images: pass --images DIR")
    r = benchmark(images, size=args.size, workers=args.workers, limit=args.limit)
    print(f"preprocess benchmark: {r['images']} images ({r['usable']} usable) from {images} -> {r['size']} px "
          f"with {r['workers']} worker(s): {r['seconds']:.2f} s, {r['images_per_s']:.2f} images/s "
          f"({r['images_per_s_with_startup']:.2f} images/s including worker start-up)")
    if args.json:
        print(json.dumps(r))
    return 0


def _phantom(args: argparse.Namespace) -> int:
    from .io import write_image
    from .phantom import generate_phantom

    ph = generate_phantom(args.size, args.seed)
    out = Path(args.out)
    write_image(out, ph.image)
    write_image(out.with_name(out.stem + "_vessels.png"), ph.vessels)
    print(f"wrote {out} (+ _vessels.png): vessel fraction in FOV {ph.vessels[ph.fov].mean():.3f}, "
          f"calibre {ph.calibre[ph.vessels].min():.2f}..{ph.calibre.max():.2f} px")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench-preprocess", help="measure preprocessing speed (images/s) on a folder of photos")
    b.add_argument("--images", required=True, help="folder of fundus images, e.g. data/raw")
    b.add_argument("--size", type=int, default=512, help="output side in pixels")
    b.add_argument("--workers", type=int, default=2, help="worker processes")
    b.add_argument("--limit", type=int, default=None, help="use only the first N images")
    b.add_argument("--json", action="store_true", help="also print the result as JSON")
    b.set_defaults(func=_bench)
    p = sub.add_parser("phantom", help="render one procedural fundus phantom (PNG + vessel mask)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--out", default="phantom.png")
    p.set_defaults(func=_phantom)
