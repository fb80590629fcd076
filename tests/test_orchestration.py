"""dvc.yaml and Snakefile describe the same DAG: stages, inputs, outputs and params."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retina_sr.config import load_params

ROOT = Path(__file__).resolve().parents[1]


def _py_files(path: str) -> set[str]:
    p = ROOT / path
    if p.is_dir() and path.startswith("src/"):
        return {str(f.relative_to(ROOT)) for f in p.rglob("*.py")}
    return {path}


def dvc_dag() -> dict[str, dict[str, set[str]]]:
    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    stages = {}
    outs_by_stage = {}
    for st in repo.index.stages:
        if not getattr(st, "name", None):
            continue
        outs = {str(Path(o.def_path)) for o in st.outs}
        outs_by_stage[st.name] = outs
        params, deps = set(), set()
        for d in st.deps:
            if hasattr(d, "params") and d.__class__.__name__ == "ParamsDependency":
                params |= set(d.params)
            else:
                deps.add(str(Path(d.def_path)))
        stages[st.name] = {"deps": deps, "outs": outs, "params": params}
    all_outs = {o: s for s, outs in outs_by_stage.items() for o in outs}
    for name, st in stages.items():
        expanded = set()
        for d in st["deps"]:
            inner = {o for o in all_outs if o.startswith(d.rstrip("/") + "/") and all_outs[o] != name}
            expanded |= inner if inner else _py_files(d)
        st["deps"] = expanded
    return stages


def snakemake_dag() -> dict[str, dict[str, set[str]]]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    params = load_params(ROOT / "params.yaml")
    variants = sorted(params.train.modified.variants)
    with SnakemakeApi(OutputSettings(quiet=True)) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            snakefile=ROOT / "Snakefile",
            config_settings=ConfigSettings(),
            storage_settings=StorageSettings(),
            workdir=ROOT,
        )
        rules = list(wf._workflow.rules)
    strip = lambda s: re.sub(r"\{(\w+),[^}]*\}", r"{\1}", str(s))  # noqa: E731 - drop wildcard constraints
    stages = {}
    for r in rules:
        names = [r.name] if "variant" not in r.wildcard_names else [f"{r.name}@{v}" for v in variants]
        for name in names:
            v = name.split("@")[1] if "@" in name else None
            fill = (lambda s, v=v: strip(s).replace("{variant}", v)) if v else strip
            pnames = set()
            for k in r.params.keys():
                pnames.add(f"train.modified.variants.{v}" if k == "variant_config" else k.replace("__", "."))
            stages[name] = {
                "deps": {fill(i) for i in r.input},
                "outs": {fill(o) for o in r.output},
                "params": pnames,
            }
    return stages


@pytest.fixture(scope="module")
def dags():
    return dvc_dag(), snakemake_dag()


def test_same_stages(dags):
    dvc, snake = dags
    assert set(dvc) == set(snake)
    assert "evaluate" in dvc and "train_modified@shared" in dvc


@pytest.mark.parametrize("what", ["deps", "outs", "params"])
def test_same_inputs_outputs_params(dags, what):
    dvc, snake = dags
    for name in dvc:
        assert dvc[name][what] == snake[name][what], f"{name}: {what} differ (dvc.yaml vs Snakefile)"


def test_variants_follow_params(dags):
    dvc, _ = dags
    variants = set(load_params(ROOT / "params.yaml").train.modified.variants)
    assert {n.split("@")[1] for n in dvc if n.startswith("train_modified@")} == variants


def test_every_stage_script_exists():
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        cmd = stage.get("cmd") or stage["do"]["cmd"]
        script = cmd.split()[1]
        assert (ROOT / script).is_file(), f"{script} named in dvc.yaml does not exist"


# ----------------------------------------------- issue #8: the documented commands work as written
BIN = Path(sys.executable).parent
_COPY = ("Snakefile", "params.yaml", "dvc.yaml", "conf", "workflow", "src")


def _copy_repo(dest: Path) -> Path:
    """The files a Snakemake dry run reads (its inputs must exist), without outputs or environment."""
    dest.mkdir(parents=True)
    for name in _COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", MLFLOW_DISABLE_TELEMETRY="true")
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _readme_full_study_command() -> list[str]:
    """The README's Snakemake line for the full study, exactly as documented."""
    m = re.search(r"^(snakemake [^#\n]*--configfile conf/study/full\.yaml)", (ROOT / "README.md").read_text(), re.M)
    assert m, "README no longer documents `snakemake ... --configfile conf/study/full.yaml`"
    return shlex.split(m.group(1))


def _commands(out: str, script: str) -> list[list[str]]:
    """The shell commands of a `-n -p` dry run that run ``script``, split the way the shell splits them."""
    cmds = [line.split("Shell command:", 1)[1] for line in out.splitlines() if line.startswith("Shell command:")]
    return [shlex.split(c) for c in cmds if f"workflow/scripts/{script}" in c]


def _params_args(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--params"]


def test_readme_full_study_command_dry_runs(tmp_path):
    """`snakemake --cores 8 evaluate --configfile conf/study/full.yaml` (README) plans the full study:
    params.yaml is the base, the study file is merged on top and passed on to every script."""
    repo = _copy_repo(tmp_path / "repo")
    cmd = _readme_full_study_command()
    res = _snakemake([*cmd[1:], "-n", "-p"], repo)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    for script in ("download.py", "preprocess.py", "train.py", "evaluate.py"):
        argvs = _commands(out, script)
        assert argvs, f"no {script} job planned:\n{out[-3000:]}"
        for argv in argvs:
            assert _params_args(argv) == ["params.yaml", "conf/study/full.yaml"], argv
    # the full study's data.workers (8) sets the preprocess threads: the merged parameters are in effect
    preprocess = _commands(out, "preprocess.py")[0]
    assert preprocess[preprocess.index("--threads") + 1] == "8", preprocess


def test_snakemake_config_overrides_are_refused_in_one_line(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    res = _snakemake(["--cores", "1", "-n", "evaluate", "--config", "seed=7"], repo)
    out = res.stdout + res.stderr  # Snakemake reports a Snakefile's error on stdout
    assert res.returncode != 0
    assert re.search(r"--config overrides are not supported for the study parameters \(seed\); put them", out), out


def test_paths_with_spaces_are_quoted_in_shell_commands(tmp_path):
    """A repository under a folder with a space, and a --configfile there: each path reaches the
    scripts as one argument (`-n -p` prints the commands the shell would run)."""
    repo = _copy_repo(tmp_path / "my studies" / "retina sr")
    override = repo / "conf" / "study" / "my full.yaml"
    shutil.copy2(repo / "conf/study/full.yaml", override)
    outside = tmp_path / "other place" / "tiny study.yaml"
    outside.parent.mkdir()
    outside.write_text("evaluate:\n  figure_images: 1\n")
    res = _snakemake(["--cores", "2", "-n", "-p", "evaluate", "--configfile", str(override), str(outside)], repo)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    argvs = [a for s in ("download.py", "preprocess.py", "patches.py", "train.py", "evaluate.py") for a in _commands(out, s)]
    assert len(argvs) >= 5, out[-3000:]
    for argv in argvs:
        assert _params_args(argv) == ["params.yaml", "conf/study/my full.yaml", str(outside)], argv


def test_snakemake_refuses_an_input_folder_inside_a_stage_output_before_any_job(tmp_path):
    """Snakemake deletes a job's old outputs before it runs: a data.folder.path inside data/raw must be
    refused when the Snakefile is read, before any job, and the user's photographs stay."""
    repo = _copy_repo(tmp_path / "repo")
    photos = repo / "data" / "raw" / "photos"
    photos.mkdir(parents=True)
    (photos / "eye.jpg").write_bytes(b"a user's photograph")
    (repo / "mine.yaml").write_text("data:\n  source: folder\n  folder:\n    path: data/raw/photos\n")
    res = _snakemake(["--cores", "1", "evaluate", "--configfile", "mine.yaml"], repo)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "data.folder.path data/raw/photos: lies in data/raw" in out, out[-3000:]
    assert (photos / "eye.jpg").read_bytes() == b"a user's photograph"
