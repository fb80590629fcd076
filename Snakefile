# The study's DAG for Snakemake: the same stages, inputs, outputs and params as dvc.yaml; the training
# rules come from the phase table (src/retina_sr/phases.py), the paths from src/retina_sr/paths.py
# (tests/test_orchestration.py checks both orchestrators against them). Run: snakemake --cores 8 evaluate
#
# Parameters: Hydra composes conf/ exactly as `dvc exp run` does:
#   snakemake --cores 8 evaluate --config study=full                              # = dvc exp run -S study=full
#   snakemake --cores 8 evaluate --config study=real overrides='train.l1.steps=100 seed=7'
# The composition is written to .snakemake/retina-sr/params-<digest>.yaml and passed to every stage.
#
# GPUs: a training job declares `gpu` = train.loop.devices (0 when train.loop.device is cpu), and a local run
# has that many GPUs by default, so one training job holds the GPU(s) at a time however many --cores are
# given (three variants on one GPU would each run at a third of the speed, or run out of memory). To run
# jobs side by side on purpose (more GPUs, or variants that fit together): --resources gpu=N. A cluster
# executor (profiles/slurm) leaves the count to the scheduler. `evaluate` takes all --cores: its scoring
# runs in that many worker processes (--threads = workers).
import hashlib
import json
import os
import shlex
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from retina_sr import paths, phases
from retina_sr.config import compose_yaml, params_from_dict
from retina_sr.data.download import check_inputs

_ALLOWED = {"study", "overrides"}
if workflow.configfiles or set(config) - _ALLOWED:
    raise ValueError(
        "the study's parameters come from conf/ (Hydra): select a study with --config study=full and give other "
        "values as --config overrides='train.l1.steps=100 seed=7' (Hydra override syntax, as `dvc exp run -S`), "
        f"or edit conf/config.yaml; got --configfile {list(workflow.configfiles)} / --config keys {sorted(config)}"
    )
OVERRIDES = ([f"study={config['study']}"] if "study" in config else []) + shlex.split(str(config.get("overrides", "")))
TEXT = compose_yaml(OVERRIDES)
COMPOSED = yaml.safe_load(TEXT)
P = params_from_dict(COMPOSED, "conf/config.yaml" + "".join(f" + {o}" for o in OVERRIDES))
PARAMS_FILE = Path(".snakemake", "retina-sr", f"params-{hashlib.sha256(TEXT.encode()).hexdigest()[:12]}.yaml")
if not PARAMS_FILE.is_file() or PARAMS_FILE.read_text() != TEXT:  # every job's Snakefile parse writes the same bytes
    PARAMS_FILE.parent.mkdir(parents=True, exist_ok=True)
    _tmp = PARAMS_FILE.with_name(f".{PARAMS_FILE.name}.{os.getpid()}.tmp")
    _tmp.write_text(TEXT)
    _tmp.replace(PARAMS_FILE)
# Snakemake deletes a job's old outputs before it runs: an input folder inside a stage output would be
# gone before the download stage could refuse it, so check before any job starts
check_inputs(P.data)

VARIANTS = sorted(P.train.variants)
TRAIN_THREADS = 2
TRAIN_GPUS = 0 if P.train.loop.device == "cpu" else P.train.loop.devices
if workflow.local_exec and "gpu" not in workflow.global_resources:  # --resources gpu=N overrides
    workflow.register_resource("gpu", max(TRAIN_GPUS, 1))
try:
    ALL_CORES = workflow.cores  # --cores N (`all`: the machine's)
except WorkflowError:  # a cluster executor without --cores: profiles/slurm sets evaluate's threads (set-threads)
    ALL_CORES = TRAIN_THREADS
STAGE = "python workflow/scripts/{stage}.py --params " + shlex.quote(str(PARAMS_FILE)) + " --threads {{threads}}"


def code(*folders):
    """Python files of the given package folders: inputs, so that a code change reruns the stage."""
    return sorted(str(p) for f in folders for p in Path(f).rglob("*.py"))


def _constant(text):
    return lambda wildcards: text


def pick(*keys):
    """The values of dotted parameter keys, as rule params (Snakemake reruns a job when they change); as
    functions, so that values such as data.folder.mask_pattern '{stem}.tif' are not taken for wildcards."""
    return {key.replace(".", "__"): _constant(json.dumps(P.value(key), sort_keys=True)) for key in keys}


def products(phase, variant=None):
    """A training stage's named outputs: models/<phase>[/<variant>]/{model.pt,metrics.json,plots.csv}."""
    d = paths.phase_dir(phase, variant)
    return {"model": str(d / "model.pt"), "metrics": str(d / "metrics.json"), "plots": str(d / "plots.csv")}


TRAIN_CODE = code("src/retina_sr/models", "src/retina_sr/losses", "src/retina_sr/training")


onsuccess:
    # Record Snakemake's results in dvc.lock, so that a following `dvc repro` does not redo them: only when
    # the composition is what params.yaml holds (dvc.lock describes params.yaml).
    pfile = Path("params.yaml")
    if Path(".dvc").is_dir() and pfile.is_file() and yaml.safe_load(pfile.read_text()) == COMPOSED:
        shell("retina-sr dvc-commit")
    elif Path(".dvc").is_dir():
        print(f"params.yaml differs from this run's composition ({PARAMS_FILE}): dvc.lock not updated "
              "(`retina-sr params compose --out params.yaml` or `dvc exp run` writes params.yaml from conf/)")


rule evaluate:
    input:
        script="workflow/scripts/evaluate.py",
        code=code("src/retina_sr/evaluation", "src/retina_sr/models"),
        patches=str(paths.PATCHES),
        # dvc.yaml depends on the main line's models and on the folder of each variant phase (every variant's outputs)
        models=[str(paths.model_file(p)) for p in phases.MAIN_LINE],
        variants=[f for p in phases.PHASES if p.variants for v in VARIANTS for f in products(p.name, v).values()],
    output:
        results=str(paths.REPORTS / "results.csv"),
        comparison=str(paths.REPORTS / "comparison.csv"),
        summary=str(paths.REPORTS / "summary.md"),
        figures=directory(str(paths.REPORTS / "figures")),
        plots=directory(str(paths.REPORTS / "plots")),
        metrics=str(paths.REPORTS / "metrics.json"),
    log:
        "logs/evaluate.log",
    params:
        **pick("seed", "data.scales", "data.patches", "evaluate", "train.loop.device", phases.VARIANTS_KEY, "mlflow"),
    threads: ALL_CORES  # ~5,000 CPU scorings (images x models x zooms) in --threads worker processes
    resources:
        gpu=min(TRAIN_GPUS, 1),  # the models run on one device
    shell:
        STAGE.format(stage="evaluate") + " 2> {log:q}"


rule download:
    input:
        script="workflow/scripts/download.py",
        code=code("src/retina_sr/data"),
    output:
        raw=directory(str(paths.RAW)),
    log:
        "logs/download.log",
    params:
        **pick("study", "seed", "data.source", "data.n_images", "data.demo", "data.folder", "data.extra_folders",
               "data.kaggle"),
    shell:
        STAGE.format(stage="download") + " 2> {log:q}"


rule preprocess:
    input:
        script="workflow/scripts/preprocess.py",
        code=code("src/retina_sr/data"),
        raw=rules.download.output.raw,
    output:
        processed=directory(str(paths.PROCESSED)),
    log:
        "logs/preprocess.log",
    params:
        **pick("seed", "data.size", "data.split", "data.workers"),
    threads: P.data.workers
    shell:
        STAGE.format(stage="preprocess") + " 2> {log:q}"


rule patches:
    input:
        script="workflow/scripts/patches.py",
        code=code("src/retina_sr/data"),
        processed=rules.preprocess.output.processed,
    output:
        patches=directory(str(paths.PATCHES)),
    log:
        "logs/patches.log",
    params:
        **pick("seed", "data.size", "data.scales", "data.patches"),
    shell:
        STAGE.format(stage="patches") + " 2> {log:q}"


# one rule per phase of the table: train_l1, train_perceptual, train_adversarial, train_modified (per variant).
# Snakemake evaluates `shell:` when a job runs, after the loop: everything phase-specific goes through
# directives evaluated here (name, input, output, log, params).
for _ph in phases.PHASES:
    _previous = [str(paths.model_file(_ph.previous))] if _ph.previous else []
    if _ph.variants:
        rule:
            name: phases.stage_name(_ph.name)
            input:
                script="workflow/scripts/train.py",
                code=TRAIN_CODE,
                patches=rules.patches.output.patches,
                previous=_previous,
            output:
                **products(_ph.name, "{variant}"),
            wildcard_constraints:
                variant="|".join(VARIANTS),
            log:
                f"logs/{phases.stage_name(_ph.name)}/{{variant}}.log",
            params:
                **pick(*phases.stage_params(_ph.name)),
                variant_config=lambda wc: json.dumps(P.value(f"{phases.VARIANTS_KEY}.{wc.variant}"), sort_keys=True),
                phase=_ph.name,  # not a study parameter: the shell command reads it (a loop variable would not keep)
            threads: TRAIN_THREADS
            resources:
                gpu=TRAIN_GPUS,
            shell:
                STAGE.format(stage="train") + " --phase {params.phase} --variant {wildcards.variant:q} 2> {log:q}"
    else:
        rule:
            name: phases.stage_name(_ph.name)
            input:
                script="workflow/scripts/train.py",
                code=TRAIN_CODE,
                patches=rules.patches.output.patches,
                previous=_previous,
            output:
                **products(_ph.name),
            log:
                f"logs/{phases.stage_name(_ph.name)}.log",
            params:
                **pick(*phases.stage_params(_ph.name)),
                phase=_ph.name,  # not a study parameter: the shell command reads it (a loop variable would not keep)
            threads: TRAIN_THREADS
            resources:
                gpu=TRAIN_GPUS,
            shell:
                STAGE.format(stage="train") + " --phase {params.phase} 2> {log:q}"
