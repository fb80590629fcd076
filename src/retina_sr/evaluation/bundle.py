"""Ship a trained checkpoint as the package's bundled model, with a model card written from its own
held-out evaluation (``retina-sr bundle-model``; developers only: the result is committed to git).

The card states the data and its attribution, the training parameters, the git commit, per zoom the
difference to bicubic (zoom 1: to the degraded input) with 95 % bootstrap intervals and per-image wins
on the held-out test split, the intended use and the limits. Numbers come from the evaluation run
here, never typed by hand.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import date
from pathlib import Path

import pandas as pd

from ..config import Params
from ..models.bundled import WEIGHTS_DIR
from ..models.checkpoint import read_checkpoint
from ..models.lapsrn import describe_model, model_summary
from ..runtime import file_sha256

__all__ = ["bundle_model", "model_card"]


def _metric_table(cmp: pd.DataFrame, name: str) -> list[str]:
    lines = ["| zoom | reference | PSNR-Y model / ref (dB) | dPSNR-Y [95 % CI] | wins | vessel Dice model / ref | dDice [95 % CI] | wins |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for zoom, z in cmp[cmp["model"] == name].groupby("zoom", sort=True):
        p = z[z["metric"] == "psnr_y"].iloc[0]
        d = z[z["metric"] == "vessel_dice"].iloc[0]
        lines.append(
            f"| x{zoom} | {p['reference']} | {p['mean']:.2f} / {p['reference_mean']:.2f} | {p['diff']:+.2f} "
            f"[{p['ci_low']:+.2f}, {p['ci_high']:+.2f}] | {p['wins']}/{p['n']} | {d['mean']:.3f} / "
            f"{d['reference_mean']:.3f} | {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['wins']}/{d['n']} |")
    return lines


def model_card(name: str, meta: dict, sha: str, cmp: pd.DataFrame, test: dict, data_note: str,
               train_note: str, limits_note: str = "") -> str:
    m = meta["model"]
    arch = describe_model(m, int(meta["levels"]))
    src = ", ".join(f"{k} ({v})" for k, v in test["sources"].items())
    return "\n".join([
        f"# Model card: `{name}`",
        "",
        ("Bundled with retina-sr; `retina-sr zoom eye.jpg --zoom 4` uses it when no `--model` is given. "
         if meta.get("default", True) else f"Bundled with retina-sr; use it with `retina-sr zoom eye.jpg --model {name}`. ")
        +
        f"File `{meta.get('file', name + '.pt')}`, sha256 `{sha}` (checked on every load).",
        "",
        "## Model",
        f"- Architecture: {arch}.",
        f"- Phase: `{meta.get('phase')}`, best validation step {meta.get('step')}, EMA weights: {meta.get('ema')}.",
        f"- Trained by this repository's pipeline at git commit `{meta.get('git_commit')}`, seed {meta.get('seed')}, "
        f"parameter digest `{meta.get('params_digest')}`.",
        f"- Training: {train_note}",
        "",
        "## Data and attribution",
        data_note,
        "",
        "## Held-out evaluation",
        f"{test['count']} held-out test photographs ({src}), {test['size']} px after border crop and rescale, never "
        f"seen in training or validation (split by patient). Degradation of the inputs: {test['degradation']}",
        "",
        "Difference = this model - reference on the same image (zoom 1: the degraded input, zoom > 1: bicubic, "
        "OpenCV `INTER_CUBIC`); PSNR on Y over the retina (the field of view less a rim of 2 % of the image side, "
        "where the aperture's edge would dominate the error); vessel Dice, in the same region, of the study's fixed segmenter "
        "(Sato, Otsu threshold of the HR image) against the HR image's vessels. Intervals: 95 % percentile "
        "bootstrap over images; wins: images where the model is better.",
        "",
        *_metric_table(cmp, name),
        "",
        "## Intended use",
        "- Digital zoom (x1 deblur/denoise to x8) of colour fundus photographs and fundus video for viewing, and "
        "as a pre-processing step before other retinal image analysis (e.g. vessel segmentation), in research.",
        "",
        "## Limits",
        "- **Not a medical device and not for diagnosis.** Super-resolution invents plausible detail; never base a "
        "clinical decision on enhanced pixels, and keep the original image.",
        "- Trained on few photographs (two public datasets, one camera each) with a synthetic degradation "
        "(Gaussian blur, area downscale, Gaussian noise): other cameras, compression, motion blur or the real "
        "optics of a surgical microscope may give smaller gains or artifacts. Check on your own images with "
        "`retina-sr evaluate` before relying on it.",
        *([limits_note] if limits_note else []),
        "- x8 recovers little of the vessel tree (see the vessel Dice in the table): use x2/x4 for analysis, x8 "
        "for viewing only.",
        f"- Card written {date.today().isoformat()} by `retina-sr bundle-model`.",
        "",
    ])


def bundle_model(params: Params, model: str | Path, name: str, root: str | Path = ".", data_note: str = "",
                 train_note: str = "", weights_dir: Path = WEIGHTS_DIR, default: bool = True,
                 progress: bool = True, card_name: str = "MODEL_CARD.md", limits_note: str = "") -> dict:
    """Evaluate ``model`` on ``root``'s held-out test split, then copy it to ``weights_dir/<name>.pt``,
    write ``MODEL_CARD.md`` and register it in ``registry.json``; returns the registry entry."""
    from .stage import evaluate_study

    model = Path(model)
    meta = read_checkpoint(model)["meta"]
    with tempfile.TemporaryDirectory() as tmp:
        result, files = evaluate_study(params, [f"{name}={model}"], root=root, out_dir=tmp, mlflow=False,
                                       progress=progress)
        cmp = pd.read_csv(files["comparison"])  # the evaluation's own comparison, not recomputed
    weights_dir.mkdir(parents=True, exist_ok=True)
    dst = weights_dir / f"{name}.pt"
    shutil.copyfile(model, dst)
    sha = file_sha256(dst)
    card = weights_dir / card_name
    card.write_text(model_card(name, {**meta, "file": dst.name, "default": default}, sha, cmp, result.test_description, data_note,
                               train_note, limits_note))
    reg_path = weights_dir / "registry.json"
    reg = json.loads(reg_path.read_text()) if reg_path.is_file() else {"models": []}
    entry = {"name": name, "file": dst.name, "sha256": sha, "card": card.name, "default": default,
             "summary": f"{model_summary(meta)}, trained on real fundus photographs"}
    rows = [r for r in reg["models"] if r["name"] != name]
    if default:
        rows = [{**r, "default": False} for r in rows]
    reg["models"] = rows + [entry]
    reg_path.write_text(json.dumps(reg, indent=2) + "\n")
    return {**entry, "comparison": cmp}
