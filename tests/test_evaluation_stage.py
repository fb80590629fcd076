"""The evaluate stage end to end on tiny self-made test pairs and checkpoints (and on real HRF photos)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from retina_sr.config import ModelConfig, params_from_dict
from retina_sr.evaluation import (
    EvaluationInputError,
    discover_models,
    evaluate_study,
    load_test_set,
    parse_model_specs,
)
from test_evaluation_vessels import draw_phantom

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(size: int, scales: list[int], **evaluate) -> object:
    crop = max(scales) * 8
    return params_from_dict({
        "data": {"size": size, "scales": scales, "patches": {"crop": crop}},
        "model": {"features": 4, "depth": 1},
        "train": {"loop": {"device": "cpu"}, "adversarial": {"discriminator": {"n_layers": 1}}},
        "evaluate": {"speed_repeats": 2, "figure_images": 1, "fast_path": False, **evaluate},
    })


def degrade(hr: np.ndarray, s: int) -> np.ndarray:
    """Simple test degradation: Gaussian blur (sigma 0.5 s) then area downscale by s."""
    if s == 1:
        return cv2.GaussianBlur(hr, (0, 0), 0.8)
    h, w = hr.shape[:2]
    return cv2.resize(cv2.GaussianBlur(hr, (0, 0), 0.5 * s), (w // s, h // s), interpolation=cv2.INTER_AREA)


def write_test_sets(root: Path, hr, fov, vessels, has_vessels, ids, sources, scales) -> None:
    d = root / "data" / "patches"
    d.mkdir(parents=True, exist_ok=True)
    for s in scales:
        np.savez(d / f"test_x{s}.npz", lr=np.stack([degrade(h, s) for h in hr]), hr=np.stack(hr),
                 fov=np.stack(fov), vessels=np.stack(vessels), has_vessels=np.array(has_vessels),
                 ids=np.array(ids), sources=np.array(sources))


def write_checkpoint(path: Path, levels: int, phase: str, variant: str | None = None, seed: int = 0) -> None:
    import torch

    from retina_sr.models import build_model, save_model

    torch.manual_seed(seed)
    cfg = ModelConfig(features=4, depth=1)
    model = build_model(cfg, levels)
    save_model(path, model, {"model": cfg.model_dump(), "levels": levels, "scales": [2**k for k in range(levels + 1)],
                             "phase": phase, "variant": variant})


@pytest.fixture
def study(tmp_path):
    """Two phantoms (one with a calibre map) + one image without vessel mask, two tiny models."""
    size, scales = 128, [1, 2, 4]
    imgs, fovs, vess, cals = [], [], [], []
    for seed in range(3):
        img, fov, true, cal = draw_phantom(size, seed=seed)
        imgs.append(img), fovs.append(fov), vess.append(true), cals.append(cal)
    has = [True, True, False]
    vess[2] = np.zeros_like(vess[2])
    ids = ["ph_a", "ph_b", "photo_c"]
    write_test_sets(tmp_path, imgs, fovs, vess, has, ids, ["demo", "demo", "folder"], scales)
    # calibre map for ph_a at raw resolution 2x larger, cropped by the preprocessing box -> manifest
    raw = np.zeros((2 * size, 2 * size), np.float32)
    raw[:, :] = cv2.resize(cals[0], (2 * size, 2 * size), interpolation=cv2.INTER_NEAREST) * 2.0
    (tmp_path / "data" / "raw" / "masks").mkdir(parents=True)
    np.save(tmp_path / "data" / "raw" / "masks" / "ph_a_calibre.npy", raw)
    man = tmp_path / "data" / "processed" / "manifest.csv"
    man.parent.mkdir(parents=True)
    with open(man, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "crop_x0", "crop_y0", "crop_x1", "crop_y1"])
        for i in ids:
            w.writerow([i, 0, 0, 2 * size, 2 * size])
    # ph_b: the preprocess stage's own map, already in the test-image geometry
    (tmp_path / "data" / "processed" / "calibre").mkdir(parents=True)
    np.save(tmp_path / "data" / "processed" / "calibre" / "ph_b.npy", cals[1])
    write_checkpoint(tmp_path / "models" / "l1" / "model.pt", levels=2, phase="l1")
    write_checkpoint(tmp_path / "models" / "modified" / "small" / "model.pt", levels=1, phase="modified", variant="small")
    return tmp_path, tiny_params(size, scales), cals


def test_discover_and_parse_models(study):
    root, _, _ = study
    found = discover_models(root)
    assert [e.name for e in found] == ["l1", "modified_small"]
    assert found[1].phase == "modified" and found[1].variant == "small"
    specs = parse_model_specs(["models/l1/model.pt", "mine=/x/y.pt", "models/modified/v/model.pt"])
    assert [e.name for e in specs] == ["l1", "mine", "modified_v"]
    with pytest.raises(EvaluationInputError, match="duplicate"):
        parse_model_specs(["a=x.pt", "a=y.pt"])
    with pytest.raises(EvaluationInputError, match="reserved"):
        parse_model_specs(["bicubic=x.pt"])


def test_missing_or_bad_test_set_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationInputError, match="test_x2.npz not found.*patches"):
        load_test_set(tmp_path / "test_x2.npz", 2)
    bad = tmp_path / "bad.npz"
    np.savez(bad, lr=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(EvaluationInputError, match="missing arrays"):
        load_test_set(bad, 2)


def test_evaluation_end_to_end(study):
    root, params, cals = study
    out = root / "reports"
    result, files = evaluate_study(params, root=root, mlflow=False, progress=False)
    rows = pd.read_csv(out / "results.csv")
    # per-image rows: x1 input + 2 models, x2 3 baselines + 2 models, x4 3 baselines + l1 only (levels 2)
    cand = rows[rows["model"] != "hr"]
    per_zoom = cand.groupby("zoom")["model"].apply(lambda m: sorted(set(m))).to_dict()
    assert per_zoom[1] == ["input", "l1", "modified_small"]
    assert per_zoom[2] == ["bicubic", "l1", "lanczos", "modified_small", "nearest"]
    assert per_zoom[4] == ["bicubic", "l1", "lanczos", "nearest"]
    assert len(cand) == 3 * (3 + 5 + 4)
    assert set(rows["image_id"]) == {"ph_a", "ph_b", "photo_c"}
    # manual-mask metrics only where the source has vessel masks; the calibre only for ph_a
    assert rows.loc[rows["image_id"] == "photo_c", "manual_dice"].isna().all()
    assert rows.loc[rows["image_id"] != "photo_c", "manual_dice"].notna().all()
    assert rows.loc[rows["image_id"] == "photo_c", "thinnest_calibre"].isna().all()
    hr_ab = rows[(rows["model"] == "hr") & (rows["image_id"] != "photo_c")]
    assert (hr_ab["manual_dice"] > 0.7).all()
    assert hr_ab["thinnest_calibre"].between(1, 2.5).all()  # the HR segmentation recovers the 1-2 px vessels
    # nearest x4 of a 128-px phantom: vessels are gone or blocky - never thinner than the HR recovers
    near4 = rows[(rows["model"] == "nearest") & (rows["zoom"] == 4) & (rows["image_id"] != "photo_c")]
    assert (near4["thinnest_calibre"].to_numpy() >= hr_ab["thinnest_calibre"].min()).all()
    # bicubic beats nearest in PSNR on smooth phantoms; metric ranges are sane
    from retina_sr.evaluation.report import aggregate, metrics_dict

    head = json.loads((out / "metrics.json").read_text())  # `dvc metrics show`: the headline only
    assert set(head) == {"input", "bicubic", "l1", "modified_small"}  # the trained models and their references
    assert set(head["l1"]) == {"x1", "x2", "x4"} and set(head["input"]) == {"x1"}
    assert set(head["bicubic"]["x2"]) == {"psnr_y", "vessel_dice"}
    assert set(head["l1"]["x4"]) == {"psnr_y", "vessel_dice", "dpsnr_y", "dpsnr_y_ci_low", "dpsnr_y_ci_high"}
    gain = head["l1"]["x4"]
    assert gain["dpsnr_y_ci_low"] <= gain["dpsnr_y"] <= gain["dpsnr_y_ci_high"]
    m = metrics_dict(aggregate(result))  # every metric per model and zoom
    assert gain["dpsnr_y"] == pytest.approx(m["l1"]["x4"]["psnr_y"] - m["bicubic"]["x4"]["psnr_y"], abs=1e-6)
    assert head["l1"]["x2"]["psnr_y"] == pytest.approx(m["l1"]["x2"]["psnr_y"])
    assert m["bicubic"]["x4"]["psnr_y"] > m["nearest"]["x4"]["psnr_y"]
    assert "x4" not in m["modified_small"] and "x2" in m["modified_small"]
    for zooms in m.values():
        for d in zooms.values():
            assert set(d) >= {"psnr_y", "psnr_rgb", "ssim_y", "vessel_dice", "vessel_cldice", "checkerboard", "fps"}
            if d["ssim_y"] is not None:
                assert -1 <= d["ssim_y"] <= 1 and 0 <= d["vessel_dice"] <= 1
    assert m["l1"]["x2"]["fps"] > 0 and m["nearest"]["x2"]["fps"] > 0 and m["input"]["x1"]["fps"] is None
    # summary: a table per zoom, best in bold, PSNR convention and test-set description
    md = (out / "summary.md").read_text()
    for z in (1, 2, 4):
        assert f"## Zoom x{z}" in md
    assert "**" in md and "BT.601" in md and "3 held-out test images" in md
    # plots and figures
    qs = pd.read_csv(out / "plots" / "quality_speed.csv")
    assert {"model", "zoom", "fps", "vessel_dice"} <= set(qs.columns) and len(qs) > 0 and qs.notna().all().all()
    bz = pd.read_csv(out / "plots" / "by_zoom.csv")  # no empty cell (DVC would draw it as 0)
    assert list(bz.columns) == ["model", "zoom", "colour", "psnr_y", "vessel_dice"] and bz.notna().all().all()
    assert "hr" not in set(bz["model"]) and {"x1", "x2", "x4"} == set(bz["zoom"])
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "quality_speed.png" in figs and "by_zoom.png" in figs
    assert {"panel_ph_a_x1.png", "panel_ph_a_x2.png", "panel_ph_a_x4.png"} <= set(figs)
    assert result.device.startswith("CPU")


def test_parallel_scoring_gives_identical_rows(study):
    from retina_sr.evaluation import run_evaluation

    root, params, _ = study
    params.data.scales = [2]
    params.evaluate.figure_images = 1
    serial = run_evaluation(params, root=root, progress=False, workers=1)
    parallel = run_evaluation(params, root=root, progress=False, workers=2)
    pd.testing.assert_frame_equal(serial.rows, parallel.rows)
    assert set(parallel.panels) == {(2, "ph_a")}
    np.testing.assert_array_equal(parallel.panels[(2, "ph_a")]["vessels"]["bicubic"],
                                  serial.panels[(2, "ph_a")]["vessels"]["bicubic"])


def test_fast_path_is_its_own_scored_row(study):
    """Each model's fast path (on CPU: ONNX Runtime on the phase graph) is scored and timed as the row
    ``<model> (<mode>)``, next to the eager fp32 row, and matches it closely (same weights)."""
    from retina_sr.evaluation import run_evaluation
    from retina_sr.evaluation.report import aggregate

    root, params, _ = study
    params.data.scales = [2, 4]
    params.evaluate.fast_path = True
    params.evaluate.max_images = 2
    res = run_evaluation(params, root=root, progress=False)
    assert set(res.fast_paths.values()) == {"l1", "modified_small"}
    fast = {m: name for name, m in res.fast_paths.items()}
    assert fast["l1"].startswith("l1 (onnxruntime CPUExecutionProvider")
    rows = res.rows[res.rows["model"] != "hr"]
    assert set(rows.loc[rows["zoom"] == 4, "model"]) == {"nearest", "bicubic", "lanczos", "l1", fast["l1"]}
    assert set(rows.loc[rows["zoom"] == 2, "model"]) >= {fast["l1"], fast["modified_small"]}
    assert (rows.loc[rows["model"] == fast["l1"], "kind"] == "model").all()
    agg = aggregate(res)
    for m in ("l1", "modified_small"):
        eager = agg[(agg["model"] == m) & (agg["zoom"] == 2)].iloc[0]
        fp = agg[(agg["model"] == fast[m]) & (agg["zoom"] == 2)].iloc[0]
        assert abs(fp["psnr_y"] - eager["psnr_y"]) < 0.5  # same weights; only rounding/graph differ
        assert fp["fps"] > 0 and fp["device"].endswith("uint8 in/out") and fp["n_images"] == 2
    # off: no fast rows, and the eager rows are the same as with it (the fast path works on a model copy)
    params.evaluate.fast_path = False
    again = run_evaluation(params, root=root, progress=False)
    assert not again.fast_paths and set(again.rows["model"]) == set(res.rows["model"]) - set(fast.values())
    keep = res.rows[~res.rows["model"].isin(list(fast.values()))].reset_index(drop=True)
    pd.testing.assert_frame_equal(keep, again.rows)


def test_explicit_models_and_max_images(study):
    root, params, _ = study
    params.evaluate.max_images = 1
    params.evaluate.figure_images = 0
    params.data.scales = [1, 2]
    res, _ = evaluate_study(params, ["only=models/l1/model.pt"], root=root, out_dir=root / "r2",
                            mlflow=False, progress=False)
    assert set(res.rows["image_id"]) == {"ph_a"}
    assert set(res.rows["model"]) == {"input", "only", "nearest", "bicubic", "lanczos", "hr"}
    assert not list((root / "r2" / "figures").glob("panel_*.png"))


# --------------------------------------------------------------------------------------- real photos
def _square(img: np.ndarray, fov: np.ndarray, size: int, interp: int) -> np.ndarray:
    ys, xs = np.nonzero(fov)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) // 2 + 1
    pad = half
    big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    crop = big[cy - half + pad: cy + half + pad, cx - half + pad: cx + half + pad]
    return cv2.resize(crop, (size, size), interpolation=interp)


@pytest.mark.shared_data
def test_evaluation_on_hrf_photos(shared_data, tmp_path):
    from retina_sr.data.io import read_image, read_mask

    hrf = shared_data / "hrf"
    if not (hrf / "images").is_dir():
        pytest.skip(f"{hrf} holds no images/ folder")
    size, scales = 256, [1, 2]
    hr, fovs, vess, ids = [], [], [], []
    for stem, ext in (("01_h", ".jpg"), ("01_dr", ".JPG")):
        img = read_image(hrf / "images" / f"{stem}{ext}")
        fov = read_mask(hrf / "mask" / f"{stem}_mask.tif")
        man = read_mask(hrf / "manual1" / f"{stem}.tif")
        hr.append(_square(img, fov, size, cv2.INTER_AREA))
        fovs.append(_square(fov.astype(np.uint8) * 255, fov, size, cv2.INTER_NEAREST) > 127)
        vess.append(_square(man.astype(np.uint8) * 255, fov, size, cv2.INTER_AREA) > 127)
        ids.append(f"hrf_{stem}")
    write_test_sets(tmp_path, hr, fovs, vess, [True, True], ids, ["folder", "folder"], scales)
    params = tiny_params(size, scales, figure_images=1)
    res, _ = evaluate_study(params, root=tmp_path, mlflow=False, progress=False)
    rows = res.rows
    assert set(rows["image_id"]) == set(ids)
    assert len(rows[rows["model"] != "hr"]) == 2 * (1 + 3)  # x1 input, x2 three baselines; no models
    # the segmenter on the HR photo agrees with the manual HRF annotation (Budai et al. 2013) to a
    # degree typical of unsupervised methods at this small size
    assert rows.loc[rows["model"] == "hr", "manual_dice"].between(0.45, 0.95).all()
    bic = rows[(rows["model"] == "bicubic")]
    assert bic["psnr_y"].between(20, 50).all() and bic["vessel_dice"].between(0.3, 1.0).all()
    assert rows["thinnest_calibre"].isna().all()  # no calibre maps for real photos: NaN, not a number
    assert (tmp_path / "reports" / "figures" / "panel_hrf_01_h_x2.png").is_file()


# -------------------------------------------------------------------------------------------- MLflow
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_mlflow_server_answers_with_the_evaluation_runs(study, monkeypatch):
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    root, params, _ = study
    params.data.scales = [1, 2]
    params.evaluate.max_images = 1
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    exe = [str(mlflow_bin)] if mlflow_bin.is_file() else [shutil.which("mlflow") or "mlflow"]
    port = _free_port()
    db = root / "server.db"
    log = open(root / "server.log", "w")  # noqa: SIM115 - the server writes to it; closed in `finally`
    proc = subprocess.Popen(
        [*exe, "server", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env={**__import__("os").environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not come up: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        evaluate_study(params, root=root, mlflow=True, progress=False)
        exp = _post(base + "/api/2.0/mlflow/experiments/search", {"max_results": 100,
                    "filter": f"name = '{params.mlflow.evaluation_experiment}'"})["experiments"]
        assert len(exp) == 1
        runs = _post(base + "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp[0]["experiment_id"]],
                                                            "max_results": 100})["runs"]
        role = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}.get("retina_sr.role")  # noqa: E731
        by_name = {r["info"]["run_name"]: r for r in runs if role(r) != "study"}  # the stage runs, not a study parent
        assert set(by_name) == {"input", "nearest", "bicubic", "lanczos", "l1", "modified_small", "hr"}
        l1 = by_name["l1"]["data"]
        metrics = {m["key"]: m["value"] for m in l1["metrics"]}
        assert {"x1.psnr_y", "x2.psnr_y", "x2.vessel_dice", "x2.vessel_cldice", "x2.fps", "x2.ms"} <= set(metrics)
        ref = json.loads((root / "reports" / "metrics.json").read_text())
        assert metrics["x2.psnr_y"] == pytest.approx(ref["l1"]["x2"]["psnr_y"])
        prm = {p["key"]: p["value"] for p in l1["params"]}
        assert prm["eval.model"] == "l1" and prm["eval.phase"] == "l1"
        assert len({t["key"]: t["value"] for t in l1["tags"]}["eval.checkpoint_sha256"]) == 64
        bic = {m["key"] for m in by_name["bicubic"]["data"]["metrics"]}
        assert {"x2.psnr_y", "x2.vessel_dice", "x2.fps"} <= bic  # the same names for every run (Compare)
        parent = {t["key"]: t["value"] for t in l1["tags"]}["mlflow.parentRunId"]
        arts = urllib.request.urlopen(base + "/api/2.0/mlflow/artifacts/list?run_id=" + parent + "&path=panels",
                                      timeout=10)
        files = [f["path"] for f in json.loads(arts.read()).get("files", [])]
        assert any(f.endswith(".png") for f in files)  # the panels once, on the study's parent run
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_evaluation_runs_carry_only_what_differs_and_the_study_files_once(study, monkeypatch):
    """Evaluation runs: own params = model/kind/phase/variant/fast path; checkpoint, hash, device as tags;
    the test pairs as input datasets; panels, figures and reports once, on the study's parent run."""
    import mlflow

    root, params, _ = study
    params.data.scales = [2]
    params.evaluate.max_images = 1
    params.evaluate.fast_path = True
    uri = f"sqlite:///{root}/eval.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    evaluate_study(params, root=root, mlflow=True, progress=False)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(params.mlflow.evaluation_experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    stage = {r.info.run_name: r for r in runs if r.data.tags.get("retina_sr.role") == "stage"}
    fast = {n for n in stage if " (onnxruntime CPUExecutionProvider" in n}
    assert {n.split(" (")[0] for n in fast} == {"l1", "modified_small"}
    assert set(stage) - fast == {"nearest", "bicubic", "lanczos", "l1", "modified_small", "hr"}
    l1_fast = stage[next(n for n in fast if n.startswith("l1 ("))]
    assert l1_fast.data.params["eval.fast_path"] == "True" and l1_fast.data.params["eval.phase"] == "l1"
    assert l1_fast.data.tags["eval.fast_path_of"] == "l1" and l1_fast.data.tags["eval.device"].endswith("uint8 in/out")
    assert {"x2.psnr_y", "x2.fps"} <= set(l1_fast.data.metrics)
    stage = {n: r for n, r in stage.items() if n not in fast}
    l1 = stage["l1"]
    assert l1.data.params == {"eval.model": "l1", "eval.kind": "model", "eval.phase": "l1", "eval.variant": "",
                              "eval.fast_path": "False"}
    assert len(l1.data.tags["eval.checkpoint_sha256"]) == 64 and l1.data.tags["eval.checkpoint"].endswith("model.pt")
    assert l1.data.tags["eval.device"].startswith("CPU") and l1.data.tags["eval.test_images"] == "1"
    assert "eval.checkpoint" not in stage["bicubic"].data.tags
    assert [d.dataset.name for d in l1.inputs.dataset_inputs] == ["test_x2"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in stage.values()}
    assert len(parents) == 1
    parent = parents.pop()
    assert "data.scales" in client.get_run(parent).data.params  # the study's parameters, once
    top = {f.path for f in client.list_artifacts(parent)}
    assert {"panels", "figures", "reports"} <= top
    assert any(f.path.endswith("panel_ph_a_x2.png") for f in client.list_artifacts(parent, "panels"))
    for r in stage.values():
        assert not client.list_artifacts(r.info.run_id)  # no copy of the panels in every evaluation run


# ----------------------------------------------------------------------------------- command line
def test_cli_missing_test_pairs_is_a_clear_error(tmp_path, capsys):
    import yaml

    from retina_sr.cli import main

    pfile = tmp_path / "p.yaml"
    pfile.write_text(yaml.safe_dump(tiny_params(128, [1, 2]).model_dump(mode="json")))
    rc = main(["evaluate", "--params", str(pfile), "--root", str(tmp_path), "--no-mlflow", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "test_x1.npz not found" in err and "patches" in err


@pytest.mark.slow
def test_stage_script_writes_the_reports(study):
    """Through the stage script, with a spawned scoring pool (the workers import the script again)."""
    import subprocess
    import sys

    import yaml

    root, params, _ = study
    params.data.scales = [1, 2]
    params.evaluate.max_images = 1
    pfile = root / "p.yaml"
    pfile.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    r = subprocess.run([sys.executable, str(ROOT / "workflow" / "scripts" / "evaluate.py"), "--params", str(pfile),
                        "--threads", "1", "--workers", "2", "--no-mlflow", "--quiet", "--models", "models/l1/model.pt"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((root / "reports" / "metrics.json").read_text())
    assert set(m) == {"input", "bicubic", "l1"}  # the headline: the model and its references
    assert set(m["l1"]) == {"x1", "x2"}
    r = subprocess.run([sys.executable, str(ROOT / "workflow" / "scripts" / "evaluate.py"), "--params", str(pfile),
                        "--no-mlflow", "--models", "missing/model.pt"], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "missing/model.pt not found" in r.stderr


def test_summary_bolds_the_best_per_metric_direction():
    from retina_sr.evaluation.report import _best

    s = pd.Series([30.0, 32.0, 31.0])
    assert _best(s, "psnr_y") == {1}
    assert _best(pd.Series([5.0, 0.3, 0.9]), "ms") == {1}
    assert _best(pd.Series([7.5, 0.02, 1.0]), "checkerboard") == {2}  # relative to HR: closest to 1 is best
    assert _best(pd.Series([7.5, 0.5, 1.2]), "checkerboard") == {2}
    assert _best(pd.Series([0.0, 0.0, 0.0]), "vessel_dice") == set()  # a tie of all: no winner
    assert _best(pd.Series([np.nan, 2.0, np.inf]), "thinnest_calibre") == {1}  # inf = none recovered


def test_verdict_names_no_best_step_when_no_vessel_tree_survives():
    import pandas as pd

    from retina_sr.evaluation.report import _verdict

    agg = pd.DataFrame({
        "model": ["bicubic", "l1", "bicubic", "l1"], "zoom": [2, 2, 8, 8],
        "vessel_cldice": [0.70, 0.75, 0.01, 0.03], "vessel_dice": [0.7, 0.8, 0.02, 0.04],
        "psnr_y": [35.0, 36.0, 29.0, 29.5], "fps": [3000.0, 20.0, 3000.0, 20.0], "ms": [0.3, 50.0, 0.3, 50.0],
    })
    text = "\n".join(_verdict(agg))
    assert "- x2: **l1**" in text
    assert "- x8: none" in text and "0.030 by l1" in text
