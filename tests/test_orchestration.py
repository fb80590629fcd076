"""dvc.yaml and Snakefile describe the same DAG (stages, inputs, outputs, params), both follow the phase
table (src/retina_sr/phases.py), and Snakemake composes the parameters from conf/ as DVC does."""

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

from retina_sr import paths, phases
from retina_sr.config import compose_yaml, load_params

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
    variants = sorted(params.train.variants)
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
            for k in r.params.keys():  # noqa: SIM118 - a Snakemake Namedlist iterates its values
                if k != "phase":  # the --phase argument of the training rules, not a study parameter
                    pnames.add(f"{phases.VARIANTS_KEY}.{v}" if k == "variant_config" else k.replace("__", "."))
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
    variants = set(load_params(ROOT / "params.yaml").train.variants)
    for ph in phases.PHASES:
        if ph.variants:
            assert {n.split("@")[1] for n in dvc if n.startswith(f"{phases.stage_name(ph.name)}@")} == variants


@pytest.mark.parametrize("which", ["dvc", "snakemake"])
def test_training_stages_follow_the_phase_table(dags, which):
    """One training stage per phase (per variant for a variant phase), named by the table, starting from the
    previous phase's model, depending on exactly phases.stage_params, writing the phase's products."""
    dag = dags[0] if which == "dvc" else dags[1]
    variants = sorted(load_params(ROOT / "params.yaml").train.variants)
    expected = {phases.stage_name(ph.name, v): (ph, v) for ph in phases.PHASES
                for v in (variants if ph.variants else [None])}
    assert {n for n in dag if n.startswith("train_")} == set(expected)
    for name, (ph, v) in expected.items():
        st = dag[name]
        assert st["params"] == set(phases.stage_params(ph.name, v)), name
        assert st["outs"] == {str(paths.phase_dir(ph.name, v) / f) for f in ("model.pt", "metrics.json", "plots.csv")}
        models_in = {d for d in st["deps"] if d.startswith(f"{paths.MODELS}/")}
        assert models_in == ({str(paths.model_file(ph.previous))} if ph.previous else set()), name
    # evaluate reads every model of the table and the variants' architecture
    ev = dag["evaluate"]
    assert {str(paths.model_file(n)) for n in phases.MAIN_LINE} <= ev["deps"]
    assert phases.VARIANTS_KEY in ev["params"]


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

def _stub_training_repo(tmp_path: Path, record: str, prelude: str = "") -> Path:
    """A copy of the repository whose train script only writes its three products (their text: ``record``,
    an f-string expression; ``prelude``: lines run first), with the data stages touched as done."""
    repo = _copy_repo(tmp_path / "repo")
    (repo / "workflow/scripts/train.py").write_text(
        "import sys, time\n"
        "from retina_sr import paths\n"
        "a = sys.argv\n"
        "phase, variant = a[a.index('--phase') + 1], (a[a.index('--variant') + 1] if '--variant' in a else None)\n"
        + prelude +
        "d = paths.phase_dir(phase, variant)\n"
        "d.mkdir(parents=True, exist_ok=True)\n"
        "for f in ('model.pt', 'metrics.json', 'plots.csv'):\n"
        f"    (d / f).write_text({record})\n"
    )
    for d in ("data/raw", "data/processed", "data/patches"):
        (repo / d).mkdir(parents=True)
    res = _snakemake(["--cores", "1", "--touch", "patches"], repo)  # the data stages count as done
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return repo


def _readme_full_study_command() -> list[str]:
    """The README's Snakemake line for the full study, exactly as documented."""
    m = re.search(r"^(snakemake [^#\n]*--config study=full)", (ROOT / "README.md").read_text(), re.M)
    assert m, "README no longer documents `snakemake ... --config study=full`"
    return shlex.split(m.group(1))


def _commands(out: str, script: str) -> list[list[str]]:
    """The shell commands of a `-n -p` dry run that run ``script``, split the way the shell splits them."""
    cmds = [line.split("Shell command:", 1)[1] for line in out.splitlines() if line.startswith("Shell command:")]
    return [shlex.split(c) for c in cmds if f"workflow/scripts/{script}" in c]


def _params_args(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--params"]


def _composed_file(repo: Path, out: str, scripts=("download.py", "preprocess.py", "train.py", "evaluate.py")) -> Path:
    """The one parameter file every planned stage gets (Snakemake's composition of conf/)."""
    files = set()
    for script in scripts:
        argvs = _commands(out, script)
        assert argvs, f"no {script} job planned:\n{out[-3000:]}"
        files |= {tuple(_params_args(argv)) for argv in argvs}
    assert len(files) == 1 and len(next(iter(files))) == 1, files
    return repo / next(iter(files))[0]


def test_readme_full_study_command_dry_runs(tmp_path):
    """`snakemake --cores 8 evaluate --config study=full` (README) plans the full study: Hydra composes
    conf/ exactly as `dvc exp run -S study=full` does and every script gets that composition."""
    repo = _copy_repo(tmp_path / "repo")
    cmd = _readme_full_study_command()
    res = _snakemake([*cmd[1:], "-n", "-p"], repo)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    composed = _composed_file(repo, out)
    assert composed.read_text() == compose_yaml(["study=full"], ROOT / "conf")
    # the full study's data.workers (8) sets the preprocess threads: the composed parameters are in effect
    preprocess = _commands(out, "preprocess.py")[0]
    assert preprocess[preprocess.index("--threads") + 1] == "8", preprocess
    # evaluate scores in --threads worker processes: every core of --cores 8, not the training rules' 2
    evaluate = _commands(out, "evaluate.py")[0]
    assert evaluate[evaluate.index("--threads") + 1] == "8", evaluate
    # each training job and evaluate declare one GPU (train.loop.devices of the full study)
    blocks = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", out, re.M)
    gpus = {name: re.search(r"resources: .*\bgpu=(\d+)", body) for name, body in blocks}
    assert {n for n in gpus if n.startswith("train_")} == {phases.stage_name(p.name) for p in phases.PHASES}
    assert all(m and m.group(1) == "1" for n, m in gpus.items() if n.startswith("train_") or n == "evaluate"), gpus


def test_evaluate_threads_without_cores_fall_back_for_cluster_executors():
    """A cluster executor runs without --cores: the Snakefile still parses (profiles/slurm sets evaluate's
    threads), instead of failing on workflow.cores."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings(quiet=True)) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=None), snakefile=ROOT / "Snakefile",
                          config_settings=ConfigSettings(), storage_settings=StorageSettings(), workdir=ROOT)
        rules = {r.name: r for r in wf._workflow.rules}
    assert rules["evaluate"].resources["_cores"] == 2


def test_training_jobs_share_the_gpu_only_when_asked(tmp_path):
    """`--cores 8` alone runs the variants' training jobs one after the other (one GPU); `--resources gpu=3`
    lets them run side by side. A stand-in train script records when each job ran."""
    repo = _stub_training_repo(tmp_path, "f'{t0} {time.time()}'",
                               prelude="t0 = time.time()\ntime.sleep(2.0 if variant else 0.0)\n")
    variants = sorted(load_params(ROOT / "params.yaml").train.variants)
    assert len(variants) >= 2
    targets = [str(paths.model_file("modified", v)) for v in variants]

    def spans(extra):
        res = _snakemake([*targets, "--cores", "8", *extra], repo)  # --resources takes every word after it
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        out = sorted(tuple(map(float, (repo / t).read_text().split())) for t in targets)
        shutil.rmtree(repo / paths.phase_dir("modified", variants[0]).parent)
        return out

    serial = spans([])
    assert all(b[0] >= a[1] for a, b in zip(serial, serial[1:])), serial  # no two at once
    together = spans(["--resources", f"gpu={len(variants)}"])
    assert max(t[0] for t in together) < min(t[1] for t in together), together  # all ran at once


def test_one_edit_in_conf_reaches_snakemake(tmp_path):
    """The user edits conf/config.yaml only: Snakemake's stages get the new value (no second copy to edit)."""
    repo = _copy_repo(tmp_path / "repo")
    conf = repo / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("  workers: 2\n", "  workers: 1\n", 1))
    res = _snakemake(["--cores", "8", "-n", "-p", "evaluate"], repo)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "workers: 1\n" in _composed_file(repo, out).read_text()
    preprocess = _commands(out, "preprocess.py")[0]
    assert preprocess[preprocess.index("--threads") + 1] == "1", preprocess


def test_snakemake_configfile_and_unknown_config_keys_are_refused_in_one_line(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    for args in (["--config", "seed=7"], ["--configfile", "conf/study/full.yaml"]):
        res = _snakemake(["--cores", "1", "-n", "evaluate", *args], repo)
        out = res.stdout + res.stderr  # Snakemake reports a Snakefile's error on stdout
        assert res.returncode != 0
        assert re.search(r"the study's parameters come from conf/ \(Hydra\): select a study with --config study=full", out), out


def test_paths_with_spaces_are_quoted_in_shell_commands(tmp_path):
    """A repository under a folder with a space and Hydra overrides: the parameter file reaches the
    scripts as one argument (`-n -p` prints the commands the shell would run) and holds the overrides."""
    repo = _copy_repo(tmp_path / "my studies" / "retina sr")
    res = _snakemake(["--cores", "2", "-n", "-p", "evaluate", "--config", "study=real",
                      "overrides=evaluate.figure_images=1 train.l1.steps=9"], repo)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    argvs = [a for s in ("download.py", "preprocess.py", "patches.py", "train.py", "evaluate.py") for a in _commands(out, s)]
    assert len(argvs) >= 5, out[-3000:]
    composed = _composed_file(repo, out)
    assert composed.read_text() == compose_yaml(["study=real", "evaluate.figure_images=1", "train.l1.steps=9"],
                                                ROOT / "conf")


def test_snakemake_refuses_an_input_folder_inside_a_stage_output_before_any_job(tmp_path):
    """Snakemake deletes a job's old outputs before it runs: a data.folder.path inside data/raw must be
    refused when the Snakefile is read, before any job, and the user's photographs stay."""
    repo = _copy_repo(tmp_path / "repo")
    photos = repo / "data" / "raw" / "photos"
    photos.mkdir(parents=True)
    (photos / "eye.jpg").write_bytes(b"a user's photograph")
    res = _snakemake(["--cores", "1", "evaluate", "--config",
                      "overrides=data.source=folder data.folder.path=data/raw/photos"], repo)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "data.folder.path data/raw/photos: lies in data/raw" in out, out[-3000:]
    assert (photos / "eye.jpg").read_bytes() == b"a user's photograph"


def test_each_training_rule_runs_its_own_phase(tmp_path):
    """Snakemake evaluates `shell:` when a job runs (after the rule loop): run every training rule for real,
    with a stand-in train script that records its arguments into the products, and check each job trained
    its own phase and variant."""
    repo = _stub_training_repo(tmp_path, "' '.join(a[1:])")
    variants = sorted(load_params(ROOT / "params.yaml").train.variants)
    targets = [str(paths.model_file(p, v)) for p in phases.NAMES for v in (variants if phases.get(p).variants else [None])]
    res = _snakemake(["--cores", "1", *targets], repo)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    for ph in phases.PHASES:
        for v in (variants if ph.variants else [None]):
            argv = shlex.split((repo / paths.model_file(ph.name, v)).read_text())
            assert argv[argv.index("--phase") + 1] == ph.name, (ph.name, v, argv)
            assert (argv[argv.index("--variant") + 1] if "--variant" in argv else None) == v, argv
