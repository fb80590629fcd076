"""End to end: the study DAG under DVC and Snakemake in a temporary copy of the repo, with tiny params.

The tiny parameters go into the copy's conf/config.yaml (the one source) and params.yaml is composed from it.
Checks: `dvc repro` produces dvc.lock and every output; a second `dvc repro` does nothing; Snakemake then
has nothing to do; `dvc push` + `dvc pull` into a fresh clone restores identical files;
`snakemake --cores 8 patches` in a fresh copy produces the same data files as DVC did.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

TINY = {
    "data": {
        "n_images": 4,
        "size": 128,
        "scales": [1, 2, 4],
        "workers": 1,
        "demo": {"phantom_size": 256},
        "split": {"val": 0.25, "test": 0.25},
        "patches": {"crop": 32, "per_image": 4},
    },
    "model": {"features": 4, "depth": 1},
    "train": {
        "loop": {"batch_size": 4, "val_every": 2, "log_every": 1, "checkpoint_every": 2, "max_val_patches": 4},
        "l1": {"steps": 3},
        "perceptual": {"steps": 2, "vgg_layers": ["relu1_2"]},
        "adversarial": {"steps": 2, "warmup_steps": 1, "discriminator": {"features": 4, "n_layers": 1}},
        "modified": {"steps": 2},
        "variants": {"subpixel": {"upsample": "subpixel"}},
    },
    "evaluate": {"speed_repeats": 1, "figure_images": 1},
}

_TOP = {".venv", ".git", "data", "models", "reports", ".snakemake", ".pytest_cache", "dvc.lock"}
_ANY = shutil.ignore_patterns("__pycache__", "*.egg-info", "mlflow.db*")


def IGNORE(folder: str, names: list[str]) -> set[str]:  # noqa: N802 - used like shutil.ignore_patterns
    """Skip generated state: top-level outputs and environment, DVC's cache/tmp, caches anywhere."""
    skip = set(_ANY(folder, names))
    if Path(folder) == ROOT:
        skip |= _TOP & set(names)
    elif Path(folder) == ROOT / ".dvc":
        skip |= {"cache", "tmp"} & set(names)
    return skip


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_TRACKING_URI=f"sqlite:///{cwd}/mlflow.db",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def make_copy(dest: Path) -> Path:
    """A copy of the repository whose one configuration source (conf/config.yaml) holds the tiny study,
    with params.yaml composed from it (`retina-sr params compose --out params.yaml`)."""
    from omegaconf import OmegaConf

    shutil.copytree(ROOT, dest, ignore=IGNORE)
    shutil.rmtree(dest / ".dvc" / "tmp", ignore_errors=True)
    conf = dest / "conf" / "config.yaml"
    tiny = copy.deepcopy(TINY)
    variants = tiny["train"].pop("variants")  # the demo's variant set is a config group: replace that file
    conf.write_text(OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.load(conf), tiny)))
    (dest / "conf" / "variants" / "lapsrn.yaml").write_text("# @package train.variants\n" + yaml.safe_dump(variants))
    run([str(BIN / "retina-sr"), "params", "compose", "--out", "params.yaml"], dest)
    assert yaml.safe_load((dest / "params.yaml").read_text())["train"]["variants"] == TINY["train"]["variants"]
    (dest / "dvc.lock").unlink(missing_ok=True)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "copy"], dest)
    run([str(BIN / "retina-sr"), "tracking", "init"], dest)
    return dest


def digests(root: Path, sub: str) -> dict[str, str]:
    """sha256 of every file under ``sub``, less the training-resume scratch state (no DVC output) and
    Snakemake's marker for directory outputs."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / sub).rglob("*")) if p.is_file() and ".resume" not in p.parts
            and p.name != ".snakemake_timestamp"}


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    repo = make_copy(work / "a")
    first = run([str(BIN / "dvc"), "repro"], repo)
    return repo, first


def test_dvc_repro_produces_every_output(dvc_run):
    repo, _ = dvc_run
    assert (repo / "dvc.lock").is_file()
    for f in ["data/raw/manifest.csv", "data/processed/manifest.csv", "data/patches/train.npy",
              "models/l1/model.pt", "models/perceptual/model.pt", "models/adversarial/model.pt",
              "models/modified/subpixel/model.pt", "reports/metrics.json", "reports/summary.md"]:
        assert (repo / f).is_file(), f


def test_second_dvc_repro_does_nothing(dvc_run):
    repo, _ = dvc_run
    again = run([str(BIN / "dvc"), "repro"], repo)
    assert "Running stage" not in again.stdout, again.stdout


def test_snakemake_after_dvc_does_nothing(dvc_run):
    repo, _ = dvc_run
    res = run([str(BIN / "snakemake"), "--cores", "8", "-n", "evaluate"], repo)
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout + res.stderr


def test_dvc_push_then_pull_into_fresh_clone(dvc_run):
    repo, _ = dvc_run
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    run([str(BIN / "dvc"), "push"], repo)
    clone = repo.parent / "b"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    run([str(BIN / "dvc"), "pull"], clone)
    for sub in ("data", "models", "reports"):
        assert digests(clone, sub) == digests(repo, sub), sub


def test_snakemake_data_target_matches_dvc(dvc_run):
    repo, _ = dvc_run
    other = make_copy(repo.parent / "c")
    run([str(BIN / "snakemake"), "--cores", "8", "patches"], other)
    for sub in ("data/raw", "data/processed", "data/patches"):
        assert digests(other, sub) == digests(repo, sub), sub
    # Snakemake's onsuccess recorded its outputs in dvc.lock: DVC does not redo them
    status = run([str(BIN / "dvc"), "status", "download", "preprocess", "patches"], other)
    assert "changed" not in status.stdout, status.stdout


def test_full_study_selected_with_one_dvc_command(tmp_path):
    """`dvc exp run -S study=full` composes conf/ into params.yaml; offline it stops with Kaggle's message."""
    repo = tmp_path / "full"
    shutil.copytree(ROOT, repo, ignore=IGNORE)
    shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
    (repo / "dvc.lock").unlink(missing_ok=True)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "copy"], repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1", KAGGLE_CONFIG_DIR=str(tmp_path / "nokaggle"))
    res = subprocess.run([str(BIN / "dvc"), "exp", "run", "-S", "study=full", "download"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    assert "no Kaggle credentials" in res.stdout + res.stderr
    composed = yaml.safe_load((repo / "params.yaml").read_text())
    assert composed["study"] == "full" and composed["data"]["source"] == "kaggle"
    assert composed["model"]["features"] == 64


def test_snakemake_runs_the_whole_study(dvc_run):
    """`snakemake --cores 8 evaluate` alone, on a fresh copy, ends with the reports and the MLflow runs;
    its `onsuccess` records the results in dvc.lock, so `dvc repro` afterwards runs nothing."""
    repo, _ = dvc_run
    other = make_copy(repo.parent / "d")
    run([str(BIN / "snakemake"), "--cores", "8", "evaluate"], other)
    for f in ["reports/metrics.json", "reports/summary.md", "reports/results.csv", "models/modified/subpixel/model.pt"]:
        assert (other / f).is_file(), f
    metrics = json.loads((other / "reports/metrics.json").read_text())
    assert {"bicubic", "l1", "perceptual", "adversarial", "modified_subpixel"} <= set(metrics)
    again = run([str(BIN / "dvc"), "repro"], other)
    assert "Running stage" not in again.stdout, again.stdout
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{other}/mlflow.db")
    names = {r.info.run_name for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert {"train_l1", "train_perceptual", "train_adversarial", "train_modified_subpixel", "bicubic"} <= names
