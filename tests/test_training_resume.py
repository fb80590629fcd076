"""A training stage killed with SIGKILL and started again ends with the same weights (bit-exact on
CPU) as an uninterrupted run: adversarial phase (model, EMA, discriminator with spectral norm, two
Adam optimisers, two schedules, sampler position, RNG states) in subprocesses, tracked in MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from retina_sr.models import build_model
from retina_sr.models.checkpoint import save_model
from test_training_data import make_patches, tiny_params

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from retina_sr.config import load_params
    from retina_sr.runtime import configure_logging
    from retina_sr.training import train_phase

    configure_logging()  # the stage's messages ("resuming from ...") on stderr, as a stage process has them
    root, params_file, slow_after, track = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[5] == "1"
    params = load_params(sys.argv[4], params_file)

    def on_step(step):
        (root / "progress").write_text(str(step))
        if slow_after and step > slow_after:
            time.sleep(0.3)  # give the test time to kill us between two checkpoints

    train_phase(params, "adversarial", root=root, progress=False, on_step=on_step, track=track)
    """
)


def _prepare(root: Path) -> Path:
    make_patches(root)
    params, pf = tiny_params(root, train={"adversarial": {"steps": 20, "warmup_steps": 3},
                                          "loop": {"checkpoint_every": 8, "val_every": 8, "log_every": 4}})
    # the phase starts from models/perceptual/model.pt: a seeded random LapSRN stands in for it
    torch.manual_seed(123)
    model = build_model(params.model, params.data.levels)
    meta = {"model": params.model.model_dump(mode="json"), "levels": params.data.levels,
            "scales": params.data.scales, "phase": "perceptual"}
    save_model(root / "models" / "perceptual" / "model.pt", model, meta)
    return pf


def _start(root: Path, pf: Path, slow_after: int, env: dict, track: bool = True) -> subprocess.Popen:
    script = root / "run.py"
    script.write_text(_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(root), str(pf), str(slow_after), str(REPO / "params.yaml"),
                             "1" if track else "0"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_then_restart_ends_with_the_same_weights(tmp_path):
    import mlflow

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    env_b = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{b}/mlflow.db"}

    # uninterrupted reference
    pa = _prepare(a)
    ref = _start(a, pa, 0, env, track=False)  # tracking does not change the weights
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out[-3000:]

    # interrupted: kill after the step-8 checkpoint, mid-way to the next one
    pb = _prepare(b)
    p = _start(b, pb, 8, env_b)
    deadline = time.time() + 240
    while time.time() < deadline:
        prog = b / "progress"
        if prog.is_file() and prog.read_text().strip() and int(prog.read_text()) >= 11:
            break
        if p.poll() is not None:
            pytest.fail("training finished before it could be killed:\n" + p.communicate()[0][-3000:])
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    last = torch.load(b / "models/.resume/adversarial/last.pt", weights_only=True)
    assert last["step"] == 8 and not (b / "models/adversarial/metrics.json").exists()
    assert not (b / "models/adversarial/model.pt").exists(), "a killed stage must not leave a model.pt"

    again = _start(b, pb, 0, env_b)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    assert "resuming from" in out and "at step 8/20" in out

    # same final weights: model.pt (EMA, best), and the raw model / EMA / discriminator / optimizer of last.pt
    ma = torch.load(a / "models/adversarial/model.pt", weights_only=True)
    mb = torch.load(b / "models/adversarial/model.pt", weights_only=True)
    assert ma["meta"]["step"] == mb["meta"]["step"]
    for k, v in ma["state_dict"].items():
        assert torch.equal(v, mb["state_dict"][k]), k
    la = torch.load(a / "models/.resume/adversarial/last.pt", weights_only=True)
    lb = torch.load(b / "models/.resume/adversarial/last.pt", weights_only=True)
    assert la["step"] == lb["step"] == 20
    for part in ("model", "disc"):
        for k, v in la[part].items():
            assert torch.equal(v, lb[part][k]), (part, k)
    for k, v in la["ema"]["shadow"].items():
        assert torch.equal(v, lb["ema"]["shadow"][k]), k
    for sa, sb in zip(la["opt_d"]["state"].values(), lb["opt_d"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    # the logged history is the same too (no duplicated or missing rows)
    assert (a / "models/adversarial/plots.csv").read_text() == (b / "models/adversarial/plots.csv").read_text()
    ja, jb = (json.loads((r / "models/adversarial/metrics.json").read_text()) for r in (a, b))
    assert ja["val_psnr"] == jb["val_psnr"] and ja["best_step"] == jb["best_step"]

    # one MLflow run, resumed and finished, says where it resumed from
    client = mlflow.MlflowClient(env_b["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("retina-sr")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("retina_sr.role") != "study"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # (a study-level parent run is not a stage run)
    assert runs[0].data.tags["resumed_from_step"] == "8" and runs[0].data.tags["dvc_stage"] == "train_adversarial"


def test_interrupted_stage_leaves_no_product_and_no_orphan_tmp(tmp_path):
    """model.pt / metrics.json / plots.csv appear only when the stage finishes; a stale product of an
    earlier run and orphan *.tmp files of a killed write are removed when the stage starts."""
    from retina_sr.config import load_params
    from retina_sr.training import train_phase

    pf = _prepare(tmp_path)
    params = load_params(REPO / "params.yaml", pf)
    out, resume = tmp_path / "models/adversarial", tmp_path / "models/.resume/adversarial"
    out.mkdir(parents=True)
    resume.mkdir(parents=True)
    (out / "model.pt").write_bytes(b"stale product of an earlier run")
    (out / "model.pt.tmp").write_bytes(b"orphan")
    (resume / "last.pt.tmp").write_bytes(b"orphan")

    class Killed(Exception):
        pass

    def on_step(step):
        if step == 12:  # after the step-8 validation that found a best model
            raise Killed

    with pytest.raises(Killed):
        train_phase(params, "adversarial", root=tmp_path, progress=False, on_step=on_step, track=False)
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    assert not list(out.glob("*.tmp")) and not list(resume.glob("*.tmp"))
    assert (resume / "last.pt").is_file()
    train_phase(params, "adversarial", root=tmp_path, progress=False, track=False)
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
