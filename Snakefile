# The study's DAG for Snakemake: the same stages, inputs, outputs and params as dvc.yaml
# (tests/test_orchestration.py checks it). Run: snakemake --cores 8 evaluate
# Full study: snakemake --cores 8 evaluate --configfile conf/study/full.yaml
import json
import shlex
from pathlib import Path

configfile: "params.yaml"

from retina_sr.config import flatten, params_from_dict, load_params

# params.yaml is the base; each --configfile is merged on top, in the order given (Snakemake lists the
# command-line files before the `configfile:` above, so the order is rebuilt here). The same files
# are passed to the scripts in that order, so they see exactly the merged configuration Snakemake sees.
def _shown(f):
    """A path as the shell commands show it: relative to the working directory when inside it."""
    p = Path(f).absolute()
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


CONFIGFILES = ["params.yaml"] + list(dict.fromkeys(
    _shown(f) for f in workflow.configfiles if Path(f).absolute() != Path("params.yaml").absolute()
))
_merged = load_params(CONFIGFILES[0], *CONFIGFILES[1:])
# `--config key=value` would bypass the files (the scripts would never see it): refuse it
_given = flatten(params_from_dict(config, "snakemake config").model_dump(mode="json"))
_differ = sorted(k for k, v in flatten(_merged.model_dump(mode="json")).items() if _given.get(k) != v)
if _differ:
    raise ValueError(
        f"snakemake --config overrides are not supported for the study parameters ({', '.join(_differ[:5])}); "
        "put them in a YAML file and pass it with --configfile FILE"
    )
P = _merged
# Snakemake deletes a job's old outputs before it runs: an input folder inside a stage output would be
# gone before the download stage could refuse it, so check before any job starts
from retina_sr.data.download import check_inputs

check_inputs(P.data)
# quoted like Snakemake's {x:q}: a path with a space stays one argument
PARAMS_ARGS = " ".join(f"--params {shlex.quote(f)}" for f in CONFIGFILES)
VARIANTS = sorted(P.train.modified.variants)
TRAIN_THREADS = 2


def code(*folders):
    """Python files of the given package folders: inputs, so that a code change reruns the stage."""
    return sorted(str(p) for f in folders for p in Path(f).rglob("*.py"))


def pick(*keys):
    """The values of dotted parameter keys, as rule params (Snakemake reruns a job when they change)."""
    out = {}
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        out[key.replace(".", "__")] = json.dumps(value, sort_keys=True)
    return out


TRAIN_COMMON = [
    "seed", "study", "data.scales", "model", "train.device", "train.batch_size", "train.amp",
    "train.channels_last", "train.ema_decay", "train.val_every", "train.log_every",
    "train.checkpoint_every", "train.charbonnier_eps", "train.lr_schedule", "train.grad_clip",
    "train.max_val_patches", "train.warmup_steps", "train.degradation", "data.patches",
]
TRAIN_CODE = code("src/retina_sr/models", "src/retina_sr/losses", "src/retina_sr/training")


onsuccess:
    # Record Snakemake's results in dvc.lock, so that a following `dvc repro` does not redo them.
    # Only for the default parameter file (dvc.lock describes params.yaml).
    if CONFIGFILES == ["params.yaml"] and Path(".dvc").is_dir():
        shell("retina-sr dvc-commit")


rule evaluate:
    input:
        "workflow/scripts/evaluate.py",
        code("src/retina_sr/evaluation", "src/retina_sr/models"),
        "data/patches",
        "models/l1/model.pt",
        "models/perceptual/model.pt",
        "models/adversarial/model.pt",
        # dvc.yaml depends on the folder models/modified: every variant's outputs
        expand("models/modified/{variant}/{f}", variant=VARIANTS, f=["model.pt", "metrics.json", "plots.csv"]),
    output:
        "reports/results.csv",
        "reports/comparison.csv",
        "reports/summary.md",
        directory("reports/figures"),
        directory("reports/plots"),
        "reports/metrics.json",
    params:
        **pick("seed", "data.scales", "data.patches", "evaluate", "train.device", "train.modified.variants", "mlflow"),
    threads: TRAIN_THREADS
    shell:
        "python workflow/scripts/evaluate.py {PARAMS_ARGS} --threads {threads}"


rule download:
    input:
        "workflow/scripts/download.py",
        code("src/retina_sr/data"),
    output:
        directory("data/raw"),
    params:
        **pick("study", "seed", "data.source", "data.n_images", "data.demo", "data.folder", "data.kaggle"),
    shell:
        "python workflow/scripts/download.py {PARAMS_ARGS} --threads {threads}"


rule preprocess:
    input:
        "workflow/scripts/preprocess.py",
        code("src/retina_sr/data"),
        "data/raw",
    output:
        directory("data/processed"),
    params:
        **pick("seed", "data.size", "data.split", "data.workers"),
    threads: P.data.workers
    shell:
        "python workflow/scripts/preprocess.py {PARAMS_ARGS} --threads {threads}"


rule patches:
    input:
        "workflow/scripts/patches.py",
        code("src/retina_sr/data"),
        "data/processed",
    output:
        directory("data/patches"),
    params:
        **pick("seed", "data.size", "data.scales", "data.patches"),
    shell:
        "python workflow/scripts/patches.py {PARAMS_ARGS} --threads {threads}"


rule train_l1:
    input:
        "workflow/scripts/train.py",
        TRAIN_CODE,
        "data/patches",
    output:
        "models/l1/model.pt",
        "models/l1/metrics.json",
        "models/l1/plots.csv",
    params:
        **pick(*TRAIN_COMMON, "train.l1"),
    threads: TRAIN_THREADS
    shell:
        "python workflow/scripts/train.py {PARAMS_ARGS} --threads {threads} --phase l1"


rule train_perceptual:
    input:
        "workflow/scripts/train.py",
        TRAIN_CODE,
        "data/patches",
        "models/l1/model.pt",
    output:
        "models/perceptual/model.pt",
        "models/perceptual/metrics.json",
        "models/perceptual/plots.csv",
    params:
        **pick(*TRAIN_COMMON, "train.perceptual"),
    threads: TRAIN_THREADS
    shell:
        "python workflow/scripts/train.py {PARAMS_ARGS} --threads {threads} --phase perceptual"


rule train_adversarial:
    input:
        "workflow/scripts/train.py",
        TRAIN_CODE,
        "data/patches",
        "models/perceptual/model.pt",
    output:
        "models/adversarial/model.pt",
        "models/adversarial/metrics.json",
        "models/adversarial/plots.csv",
    params:
        **pick(*TRAIN_COMMON, "train.perceptual", "train.adversarial"),
    threads: TRAIN_THREADS
    shell:
        "python workflow/scripts/train.py {PARAMS_ARGS} --threads {threads} --phase adversarial"


rule train_modified:
    input:
        "workflow/scripts/train.py",
        TRAIN_CODE,
        "data/patches",
        "models/adversarial/model.pt",
    output:
        "models/modified/{variant}/model.pt",
        "models/modified/{variant}/metrics.json",
        "models/modified/{variant}/plots.csv",
    wildcard_constraints:
        variant="|".join(VARIANTS),
    params:
        **pick(*TRAIN_COMMON, "train.perceptual", "train.adversarial", "train.modified.steps",
               "train.modified.lr", "train.modified.pixel_weight", "train.modified.ridge_weight",
               "train.l1.steps"),
        variant_config=lambda wc: json.dumps(config["train"]["modified"]["variants"][wc.variant], sort_keys=True),
    threads: TRAIN_THREADS
    shell:
        "python workflow/scripts/train.py {PARAMS_ARGS} --threads {threads} --phase modified --variant {wildcards.variant:q}"
