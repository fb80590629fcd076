"""The whole phase chain on tiny data: l1 -> perceptual (random VGG) -> adversarial -> modified
variants, through the stage script, writing every output file and one MLflow run per phase/variant
with tags, params, metrics and artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retina_sr.models.checkpoint import load_model
from retina_sr.training import train_phase
from test_training_data import make_patches, tiny_params

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_full_tiny_chain_writes_every_output_and_mlflow_runs(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    make_patches(tmp_path)
    params, pfile = tiny_params(tmp_path, train={"modified": {"steps": 4}, "variants": {
        "shared": {"share_weights": True, "recursions": 2}, "subpixel": {"upsample": "subpixel"}}})

    # first phase through the stage script (argument parsing, threads, exit code)
    proc = subprocess.run([sys.executable, str(REPO / "workflow/scripts/train.py"), "--params", str(REPO / "params.yaml"),
                           "--params", str(pfile), "--threads", "1", "--phase", "l1", "--no-progress"],
                          cwd=tmp_path, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "models/l1: best step" in proc.stderr  # the stage's summary, logged on stderr
    results = {}
    for phase, variant in [("perceptual", None), ("adversarial", None), ("modified", "shared"), ("modified", "subpixel")]:
        results[(phase, variant)] = train_phase(params, phase, variant, progress=False)

    dirs = {"l1": "models/l1", "perceptual": "models/perceptual", "adversarial": "models/adversarial",
            "shared": "models/modified/shared", "subpixel": "models/modified/subpixel"}
    for name, d in dirs.items():
        for f in ("model.pt", "metrics.json", "plots.csv"):
            assert (tmp_path / d / f).is_file(), f"{d}/{f}"
        model, meta = load_model(tmp_path / d / "model.pt")
        assert meta["phase"] == ("modified" if name in ("shared", "subpixel") else name)
        metrics = json.loads((tmp_path / d / "metrics.json").read_text())
        assert metrics["val_psnr"]["mean"] > 5 and metrics["steps_per_s"] > 0
        assert set(metrics) == {"best_step", "val_psnr", "steps_per_s"}  # the headline for `dvc metrics show`
        header = (tmp_path / d / "plots.csv").read_text().splitlines()[0].split(",")
        assert header == ["step", "zoom", "metric", "value"]  # tidy, for `dvc plots`; every loss term: MLflow
    shared_meta = load_model(tmp_path / dirs["shared"] / "model.pt")[1]
    assert shared_meta["variant"] == "shared" and shared_meta["model"]["share_weights"] is True
    assert shared_meta["init_from"]["loaded"] > 0 and shared_meta["init_from"]["path"].endswith("models/adversarial/model.pt")
    sub = results[("modified", "subpixel")].init
    assert sub["loaded"] > 0 and sub["skipped"] > 0  # upsamplers differ, the rest is inherited
    # the perceptual phase really started from the l1 weights: before training they matched exactly
    l1 = torch.load(tmp_path / dirs["l1"] / "model.pt", weights_only=True)
    assert results[("perceptual", None)].init["sha256"] and results[("perceptual", None)].init["loaded"] == len(l1["state_dict"])

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    # the stage runs (a study-level parent run, if the tracking puts one, holds what they share)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("retina_sr.role") != "study"}

    def params_of(run):  # the stage run's own params over its parent's
        parent = run.data.tags.get("mlflow.parentRunId")
        return {**(client.get_run(parent).data.params if parent else {}), **run.data.params}

    assert set(runs) == {"train_l1", "train_perceptual", "train_adversarial", "train_modified_shared",
                         "train_modified_subpixel"}
    for name, r in runs.items():
        tags = r.data.tags
        assert r.info.status == "FINISHED"
        for t in ("git_commit", "dvc_stage", "data_hash", "data_manifest_sha256", "study", "data_source", "device",
                  "vgg_weights"):
            assert tags.get(t), (name, t)
        assert params_of(r)["model.features"] == "4" and params_of(r)["train.loop.batch_size"] == "4"
        for m in ("loss", "pixel", "lr", "val_psnr_x1", "val_psnr_x4", "val_psnr_mean", "best_step", "steps_per_s"):
            assert m in r.data.metrics, (name, m)
        arts = {a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")}
        assert "checkpoint/metrics.json" in arts
        logged = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id = '{r.info.run_id}'")
        assert len(logged) == 1 and r.data.tags["registered_model"].startswith(f"models:/{params.mlflow.registered_model}/")
        grid = client.list_artifacts(r.info.run_id, "validation")
        assert len(grid) == 1 and grid[0].path.endswith(".png")
    assert runs["train_l1"].data.tags["vgg_weights"] == "none"
    assert runs["train_perceptual"].data.tags["vgg_weights"].startswith("random")
    assert runs["train_modified_shared"].data.tags["dvc_stage"] == "train_modified@shared"
    assert runs["train_modified_shared"].data.tags["variant"] == "shared"
    assert "d" in runs["train_adversarial"].data.metrics and "adv_g" in runs["train_modified_subpixel"].data.metrics
    for name in ("train_perceptual", "train_adversarial", "train_modified_shared"):
        assert {"perceptual", "saliency"} <= set(runs[name].data.metrics), name
    for name in ("train_adversarial", "train_modified_shared", "train_modified_subpixel"):
        assert {"adv_g", "d"} <= set(runs[name].data.metrics), name
    hist = client.get_metric_history(runs["train_l1"].info.run_id, "loss")
    assert [m.step for m in hist] == [2, 4, 6, 8]


def test_stage_script_reports_missing_patches_clearly(tmp_path):
    _, pfile = tiny_params(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "workflow/scripts/train.py"), "--params", str(REPO / "params.yaml"),
                           "--params", str(pfile), "--phase", "l1", "--threads", "1"],
                          cwd=tmp_path, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "data/patches/train.npy not found" in proc.stderr and "patches" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""  # one line on stderr


def test_train_cli_errors_are_clear(tmp_path, monkeypatch, capsys, repo_root):
    from retina_sr.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--phase", "modified", "--params", str(repo_root / "params.yaml")]) == 2
    assert "needs --variant" in capsys.readouterr().err
    assert main(["train", "--phase", "l1", "--params", str(repo_root / "params.yaml"), "--threads", "1"]) == 2
    assert "train.npy not found" in capsys.readouterr().err
