"""What ``dvc metrics show`` and ``dvc plots show`` make of the stages' outputs, offline.

A temporary DVC repository holds the project's ``dvc.yaml``, ``params.yaml`` and Vega-Lite templates
(``.dvc/plots/``) and the files the real writers produce from a tiny fake run (training history, evaluation
table). DVC's HTML loads Vega from a CDN, so the tests check the Vega-Lite specs and data DVC builds
(``dvc plots show --json``): one series per zoom or per model, no value DVC would draw as 0 where the run
had none, the log speed axis; and that ``dvc metrics show --json`` holds only the headline metrics.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from retina_sr.evaluation.compare import compare_to_reference
from retina_sr.evaluation.figures import model_colour
from retina_sr.evaluation.report import write_metrics_json, write_plot_csvs
from retina_sr.evaluation.runner import IMAGE_METRICS
from retina_sr.training.outputs import HEADLINE_METRICS, TRAIN_LOSS, VAL_PSNR, plot_rows, write_metrics, write_plots

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"
SCALES = [2, 4]
BASELINES = ["nearest", "bicubic"]

pytestmark = pytest.mark.skipif(not DVC.is_file(), reason="dvc is not installed in this environment")


def variants() -> list[str]:
    return list(yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["variants"])


def history(n_log: int = 6, val_every: int = 2) -> dict[int, dict[str, float]]:
    """A training history as the trainer logs it: loss per zoom (the x4 loss higher), validation every
    ``val_every`` logs."""
    h = {}
    for i in range(1, n_log + 1):
        step = 10 * i
        row = {"loss": 0.1 / i, "lr": 1e-3, **{f"loss_x{s}": 0.05 * s / i for s in SCALES}}
        if i % val_every == 0:
            row.update({f"val_psnr_x{s}": 40.0 - 3 * s + 0.1 * i for s in SCALES})
            row["val_psnr_mean"] = float(np.mean([row[f"val_psnr_x{s}"] for s in SCALES]))
        h[step] = row
    return h


def fake_evaluation(models: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The aggregate table (one row per model and zoom, NaN where a metric does not apply) and the
    per-image rows' comparison with the reference, as the evaluate stage computes them."""
    rng = np.random.default_rng(0)
    rows = []
    for z in SCALES:
        for k, m in enumerate(BASELINES + models):
            for img in ("a", "b", "c"):
                rows.append({"image_id": img, "zoom": z, "model": m, "psnr_y": 30.0 - z + 0.2 * k + rng.normal(0, 0.1),
                             "vessel_dice": 0.5 + 0.02 * k - 0.05 * z + rng.normal(0, 0.01)})
    rows = pd.DataFrame(rows)
    agg = rows.groupby(["model", "zoom"], sort=False)[["psnr_y", "vessel_dice"]].mean().reset_index()
    for c in IMAGE_METRICS:
        if c not in agg:
            agg[c] = np.nan  # e.g. no manual vessel masks: empty in a wide CSV
    agg["ssim_y"] = 0.8
    agg["ms"] = [0.1 if m in BASELINES else 5.0 + i for i, m in enumerate(agg["model"])]
    agg["fps"] = 1000.0 / agg["ms"]
    hr = pd.DataFrame([{"model": "hr", "zoom": z, "psnr_y": math.inf, "vessel_dice": 1.0} for z in SCALES])
    return pd.concat([agg, hr], ignore_index=True), compare_to_reference(rows, n_boot=200)


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(DVC), *args], cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A DVC repository with the project's pipeline definitions and a tiny fake run's outputs."""
    repo = tmp_path_factory.mktemp("dvcrepo")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, repo / f)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    stages = {"l1": "models/l1", "perceptual": "models/perceptual", "adversarial": "models/adversarial",
              **{f"modified_{v}": f"models/modified/{v}" for v in variants()}}
    for d in stages.values():
        (repo / d).mkdir(parents=True)
        write_plots(repo / d / "plots.csv", history(), SCALES)
        write_metrics(repo / d / "metrics.json", {
            "best_step": 40, "val_psnr": {"x2": 34.4, "x4": 28.4, "mean": 31.4}, "final_val_psnr": {"x2": 34.0},
            "steps_per_s": 12.5, "steps": 60, "batch_size": 4, "crop": 64, "init_loaded": 12})
    agg, cmp = fake_evaluation(list(stages))
    write_metrics_json(agg, repo / "reports" / "metrics.json", cmp, list(stages))
    write_plot_csvs(agg, repo / "reports" / "plots")
    (repo / "reports" / "figures").mkdir()
    return repo


@pytest.fixture(scope="module")
def plots(repo) -> dict:
    """``dvc plots show --json``: ``{plot id: [{"content": filled Vega-Lite spec, ...}]}``."""
    out = json.loads(dvc(repo, "plots", "show", "--json").stdout)
    assert not out.get("errors"), out.get("errors")
    return out["data"]


def spec_and_data(entry: list[dict]) -> tuple[dict, list[dict]]:
    (vega,) = [e for e in entry if e.get("type") == "vega"]
    spec = vega["content"]
    data = spec["data"]["values"]
    if isinstance(data, str):  # --json splits the data out into anchor_definitions
        data = vega["anchor_definitions"][data]
    return spec, data


def test_plot_rows_are_tidy_per_zoom_and_validation_only_where_validated():
    rows = plot_rows(history(n_log=4, val_every=2), SCALES)
    loss = [r for r in rows if r[2] == TRAIN_LOSS]
    val = [r for r in rows if r[2] == VAL_PSNR]
    assert {(r[0], r[1]) for r in loss} == {(10 * i, f"x{s}") for i in range(1, 5) for s in SCALES}
    assert {r[0] for r in val} == {20, 40} and {r[1] for r in val} == {"x2", "x4"}
    assert all(math.isfinite(r[3]) for r in rows)
    # a history without the per-zoom loss (an older run): the mixed loss, labelled as such, not invented per zoom
    old = {s: {k: v for k, v in r.items() if not k.startswith("loss_x")} for s, r in history(n_log=2).items()}
    assert {(r[1], r[2]) for r in plot_rows(old, SCALES)} >= {("all", TRAIN_LOSS)}
    assert not {r[1] for r in plot_rows(old, SCALES) if r[2] == TRAIN_LOSS} - {"all"}


def test_plot_csvs_leave_missing_values_out(tmp_path):
    agg, _ = fake_evaluation(["l1"])
    agg.loc[(agg["model"] == "l1") & (agg["zoom"] == 4), "vessel_dice"] = np.nan  # e.g. no vessels found
    agg.loc[agg["model"] == "nearest", "fps"] = np.nan  # not timed
    files = write_plot_csvs(agg, tmp_path)
    qs, bz = pd.read_csv(files["quality_speed"]), pd.read_csv(files["by_zoom"])
    for t in (qs, bz):
        assert t.notna().all().all() and "hr" not in set(t["model"])
        assert ("l1", "x4") not in set(zip(t["model"], t["zoom"])) and ("l1", "x2") in set(zip(t["model"], t["zoom"]))
    assert "nearest" not in set(qs["model"]) and "nearest" in set(bz["model"])


def test_training_plots_one_series_per_zoom_for_every_stage_no_gaps(plots):
    ids = [k for k in plots if k.endswith("plots.csv")]
    expected = {"models/l1/plots.csv", "models/perceptual/plots.csv", "models/adversarial/plots.csv",
                *(f"models/modified/{v}/plots.csv" for v in variants())}
    assert set(ids) == expected  # the modified variants included
    for pid in ids:
        spec, data = spec_and_data(plots[pid])
        assert spec["spec"]["encoding"]["color"]["field"] == "zoom" and spec["facet"]["row"]["field"] == "metric"
        assert {d["zoom"] for d in data} == {"x2", "x4"}
        assert all(d["value"] not in ("", None) and float(d["value"]) > 0 for d in data)  # nothing drawn as 0
        loss_steps = {z: sorted(int(d["step"]) for d in data if d["metric"] == TRAIN_LOSS and d["zoom"] == z)
                      for z in ("x2", "x4")}
        val_steps = {z: sorted(int(d["step"]) for d in data if d["metric"] == VAL_PSNR and d["zoom"] == z)
                     for z in ("x2", "x4")}
        assert loss_steps == {"x2": [10, 20, 30, 40, 50, 60], "x4": [10, 20, 30, 40, 50, 60]}
        assert val_steps == {"x2": [20, 40, 60], "x4": [20, 40, 60]}  # only where validated


def test_quality_vs_speed_log_axis_colour_per_model_shape_per_zoom(plots):
    for pid in ("Vessel Dice vs speed", "PSNR-Y vs speed"):
        spec, data = spec_and_data(plots[pid])
        enc = spec["encoding"]
        assert enc["x"]["scale"]["type"] == "log"
        assert enc["color"]["field"] == "model" and enc["shape"]["field"] == "zoom"
        assert enc["color"]["scale"]["range"] == {"field": "colour"}  # the figures' colour of each model
        assert all(d["colour"] == model_colour(d["model"]) for d in data)
        models = {d["model"] for d in data}
        assert {"l1", "perceptual", "adversarial", "bicubic", *(f"modified_{v}" for v in variants())} <= models
        assert "hr" not in models
        for m in models:  # one point per model and zoom: the series is the model, not all models in one
            assert sorted(d["zoom"] for d in data if d["model"] == m) == ["x2", "x4"]
        assert all(float(d["fps"]) > 0 for d in data)


def test_by_zoom_one_line_per_model_no_empty_values(plots):
    for pid, y in (("PSNR-Y by zoom", "psnr_y"), ("Vessel Dice by zoom", "vessel_dice")):
        spec, data = spec_and_data(plots[pid])
        enc = spec["encoding"]
        assert enc["color"]["field"] == "model" and enc["color"]["scale"]["range"] == {"field": "colour"}
        assert enc["x"]["scale"]["type"] == "log" and enc["y"]["field"] == "y_num"
        assert f"datum['{y}']" in spec["transform"][0]["filter"]  # an empty value is dropped, not drawn as 0
        assert all(d[y] not in ("", None) and math.isfinite(float(d[y])) for d in data)
        models = {d["model"] for d in data}
        assert {"bicubic", "l1", *(f"modified_{v}" for v in variants())} <= models and "hr" not in models
        for m in models:  # the model is the series: each has its own points at every zoom
            assert sorted(d["zoom"] for d in data if d["model"] == m) == ["x2", "x4"]


def test_metrics_show_has_only_the_headline(repo):
    out = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    (ws,) = out.values()  # one revision: the workspace
    files = {f: v["data"] for f, v in ws["data"].items()}
    assert len(files) == 3 + len(variants()) + 1
    for f, data in files.items():
        if f.startswith("models/"):
            assert set(data) == set(HEADLINE_METRICS), f  # no batch_size, crop, init_loaded, ...
            assert set(data["val_psnr"]) == {"x2", "x4", "mean"}
    ev = files["reports/metrics.json"]
    assert "hr" not in ev and "nearest" not in ev and {"bicubic", "l1", "modified_" + variants()[0]} <= set(ev)
    assert ev["bicubic"]["x2"].keys() == {"psnr_y", "vessel_dice"}
    assert ev["l1"]["x4"].keys() == {"psnr_y", "vessel_dice", "dpsnr_y", "dpsnr_y_ci_low", "dpsnr_y_ci_high"}
    lo, d, hi = (ev["l1"]["x4"][k] for k in ("dpsnr_y_ci_low", "dpsnr_y", "dpsnr_y_ci_high"))
    assert lo <= d <= hi
    table = dvc(repo, "metrics", "show").stdout.splitlines()
    header = table[0].split()
    # Path; the training stages share best_step, steps_per_s, val_psnr.<zoom|mean>; per zoom, 5 numbers per
    # trained model and 2 for bicubic (no x1 here, so no input row)
    trained = 3 + len(variants())
    assert len(header) == 1 + 2 + len(SCALES) + 1 + (5 * trained + 2) * len(SCALES), header
    assert len(table) == 1 + len(files)


def test_plots_render_to_html(repo, tmp_path):
    """``dvc plots show`` writes the HTML page (its Vega scripts come from a CDN)."""
    out = tmp_path / "html"
    dvc(repo, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "Vessel Dice vs speed" in html and "models/modified/" in html
