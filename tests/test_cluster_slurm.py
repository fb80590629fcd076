"""Snakemake on a real Slurm: `snakemake --profile profiles/slurm evaluate` through sbatch, checked with sacct.

The module fixture starts a single-node Slurm cluster with accounting on this machine
(``scripts/cluster/slurm_up.sh``: installs the Debian packages when missing, needs root; its own state
folder and free ports, so it does not touch a cluster already running) and always stops every daemon
it started (``scripts/cluster/slurm_down.sh``). The test runs the study on tiny parameters in a
temporary copy of the repository (``tests/test_pipeline_e2e.py``'s ``make_copy``) with the profile
as shipped, then checks the reports and models exist and, from ``sacct``, that every stage was its own
Slurm job, COMPLETED with exit code 0, in the partition the profile gives its rule (training and
evaluation on ``gpu`` with one GPU, data stages on ``cpu``). The run's log (submissions, sacct table,
outputs) is printed and written to ``slurm_run.log`` in the temporary folder.

Run with ``make test-cluster`` (markers ``cluster`` and ``slow``); 4.5-6.5 min on 2 CPU cores.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_pipeline_e2e import make_copy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = ROOT / "scripts" / "cluster"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# every stage of the tiny study (one modified variant): one Slurm job each
STAGES = {"download", "preprocess", "patches", "train_l1", "train_perceptual", "train_adversarial",
          "train_modified", "evaluate"}
OUTPUTS = ["data/patches", "models/l1/model.pt", "models/perceptual/model.pt", "models/adversarial/model.pt",
           "reports/metrics.json", "reports/summary.md", "reports/results.csv"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm with slurmdbd; yields the environment its clients need."""
    pytest.importorskip("snakemake_executor_plugin_slurm",
                        reason="the Slurm executor plugin is not installed: pip install -e '.[cluster]'")
    if os.geteuid() != 0:
        pytest.skip("starting Slurm (slurmd, slurmctld, slurmdbd, MariaDB) needs root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, RETINA_SR_SLURM_DIR=str(state), RETINA_SR_SLURM_CTLD_PORT=str(free_port()),
               RETINA_SR_SLURM_SLURMD_PORT=str(free_port()), RETINA_SR_SLURM_DBD_PORT=str(free_port()))
    t0 = time.monotonic()
    try:
        up = subprocess.run([str(SCRIPTS / "slurm_up.sh")], env=env, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, f"slurm_up.sh failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        print(f"Slurm up in {time.monotonic() - t0:.1f} s")
        yield dict(env, SLURM_CONF=str(state / "etc" / "slurm.conf"))
    finally:
        down = subprocess.run([str(SCRIPTS / "slurm_down.sh")], env=env, capture_output=True, text=True, timeout=300)
        print(down.stderr)
        assert down.returncode == 0, down.stderr


def profile_partition(rule: str) -> str:
    prof = yaml.safe_load(PROFILE.read_text())
    return prof.get("set-resources", {}).get(rule, {}).get("slurm_partition",
                                                           prof["default-resources"]["slurm_partition"])


def profile_gpus(rule: str) -> int:
    return int(yaml.safe_load(PROFILE.read_text()).get("set-resources", {}).get(rule, {}).get("gpu", 0))


def test_snakemake_profile_runs_the_study_through_sbatch(slurm, tmp_path):
    repo = make_copy(tmp_path / "study")
    env = dict(slurm, PATH=f"{BIN}:{os.environ['PATH']}", OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1",
               MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_TRACKING_URI=f"sqlite:///{repo}/mlflow.db")
    # the profile as shipped; only the first status check comes sooner than its 40 s default
    cmd = [str(BIN / "snakemake"), "--profile", "profiles/slurm", "evaluate",
           "--slurm-init-seconds-before-status-checks", "2"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    log = res.stdout + res.stderr
    if res.returncode != 0:
        stage_logs = "".join(f"\n--- {p.relative_to(repo)} (end):\n{p.read_text()[-1500:]}"
                             for p in sorted((repo / "logs").rglob("*.log")))
        pytest.fail(f"{' '.join(cmd)} failed after {wall:.0f} s:\n{log[-5000:]}{stage_logs}")

    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    jobids = sorted(submitted.values(), key=int)
    assert jobids, f"no 'submitted with SLURM jobid' line in snakemake's output:\n{log[-3000:]}"
    sacct = subprocess.run(
        ["sacct", "-X", "-P", "-j", ",".join(jobids),
         "--format=JobIDRaw,Comment%60,Partition,AllocTRES%80,State,ExitCode,Elapsed"],
        env=env, capture_output=True, text=True, timeout=60)
    assert sacct.returncode == 0, sacct.stderr
    rows = [dict(zip(sacct.stdout.splitlines()[0].split("|"), line.split("|")))
            for line in sacct.stdout.splitlines()[1:] if line]
    steps = subprocess.run(["sacct", "-P", "-j", ",".join(jobids), "--format=JobID,JobName%30,NodeList,State,ExitCode"],
                           env=env, capture_output=True, text=True, timeout=60).stdout

    report = "\n".join([
        f"$ {' '.join(['snakemake', *cmd[1:]])}    (in a copy of the repository, tiny params)",
        f"wall time: {wall:.1f} s; exit code {res.returncode}",
        "submissions:", *[f"  {line.strip()}" for line in log.splitlines() if "has been submitted" in line],
        "sacct -X -P -j ... --format=JobIDRaw,Comment,Partition,AllocTRES,State,ExitCode,Elapsed:",
        *[f"  {line}" for line in sacct.stdout.splitlines()],
        "job steps (batch script, then the stage under srun):", *[f"  {line}" for line in steps.splitlines()],
        "outputs:", *[f"  {o}" for o in OUTPUTS if (repo / o).exists()],
        *[f"  {p.relative_to(repo)}" for p in sorted((repo / "models" / "modified").rglob("model.pt"))],
        "slurm logs:", *[f"  {p.relative_to(repo)}" for p in sorted((repo / ".snakemake/slurm_logs").rglob("*.log"))],
    ])
    (tmp_path / "slurm_run.log").write_text(report + "\n")
    print(report)

    for out in OUTPUTS:
        assert (repo / out).exists(), out
    assert list((repo / "models" / "modified").rglob("model.pt")), "no modified variant trained"
    assert len(rows) == len(jobids) == len(STAGES), (jobids, rows)
    assert {r["Comment"].removeprefix("rule_").split("_wildcards_")[0] for r in rows} == STAGES
    for r in rows:
        rule = r["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        assert r["State"] == "COMPLETED" and r["ExitCode"] == "0:0", r
        assert r["Partition"] == profile_partition(rule), r
        gpus = re.search(r"gres/gpu=(\d+)", r["AllocTRES"])
        assert (int(gpus.group(1)) if gpus else 0) == profile_gpus(rule), r
