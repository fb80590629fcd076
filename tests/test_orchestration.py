"""dvc.yaml and Snakefile describe the same DAG: stages, inputs, outputs and params."""

from __future__ import annotations

import re
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
