"""Data-parallel training (issue 13): the train stage under ``torchrun --nproc-per-node 2`` (gloo on CPU)
follows one process's loss curve with the same global batch; rank 0 alone writes; a SIGKILLed DDP run
resumes. Tiny model, a handful of steps; subprocesses, so the process group never touches pytest's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from retina_sr.training.distributed import DistContext, setup
from test_training_data import make_patches, tiny_params

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

# The online degradation and a pixel + saliency loss set (the perceptual phase with VGG off would need an
# init checkpoint; the l1 phase with the ridge term keeps it a first phase).
LOOP = {"batch_size": 4, "log_every": 1, "val_every": 4, "checkpoint_every": 4, "ema_decay": 0.9}


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "PYTHONPATH": str(REPO / "tests")}


def _cmd(root: Path, pf: Path, devices: int, torchrun: bool = True) -> list[str]:
    stage = ["-m", "retina_sr.stages", "train", "--params", str(REPO / "params.yaml"), "--params", str(pf),
             "--root", str(root), "--threads", "1", "--phase", "l1", "--no-progress"]
    if devices == 1 or not torchrun:  # the plain stage command restarts itself under torchrun
        return [sys.executable, *stage]
    return [str(TORCHRUN), "--standalone", f"--nproc-per-node={devices}", *stage]


def _prepare(root: Path, devices: int, steps: int = 8) -> Path:
    root.mkdir()
    make_patches(root, n_train=10)  # 10 patches, batch 4: global batches cross epoch boundaries
    _, pf = tiny_params(root, train={"loop": {**LOOP, "devices": devices}, "l1": {"steps": steps, "ridge_weight": 0.1}})
    return pf


def _curve(root: Path) -> dict[int, dict[str, float]]:
    """The logged history (every step: log_every 1) of the resume state rank 0 wrote."""
    return torch.load(root / "models/.resume/l1/last.pt", weights_only=True)["history"]


def _run(root: Path, pf: Path, devices: int, torchrun: bool = True) -> str:
    p = subprocess.run(_cmd(root, pf, devices, torchrun), cwd=root, env=_env(root), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stderr


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_loss_curve(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, _prepare(one, 1), 1)
    err = _run(two, _prepare(two, 2), 2, torchrun=False)  # the command DVC/Snakemake run: no torchrun in it
    assert "restarting under torchrun" in err
    a, b = _curve(one), _curve(two)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    worst_abs = worst_rel = 0.0
    for step in a:
        d = abs(a[step]["loss"] - b[step]["loss"])
        print(f"step {step}: loss 1 process {a[step]['loss']:.8f}, 2 ranks {b[step]['loss']:.8f}, "
              f"abs {d:.3g}, rel {d / abs(a[step]['loss']):.3g}")
        for term in ("loss", "pixel", "ridge", "grad_norm"):
            d = abs(a[step][term] - b[step][term])
            worst_abs, worst_rel = max(worst_abs, d), max(worst_rel, d / abs(a[step][term]))
        assert a[step]["lr"] == b[step]["lr"]
    print(f"DDP(2, gloo) vs 1 process, 8 steps: max abs loss-term difference {worst_abs:.3g}, max rel {worst_rel:.3g}")
    assert worst_rel < 1e-5, (worst_abs, worst_rel)  # measured: ~2e-7
    for k in ("val_psnr_mean",):  # validated on rank 0 with the (DDP-trained) EMA weights
        assert abs(a[8][k] - b[8][k]) < 1e-3
    # rank 0 alone wrote: one model.pt, one last.pt, one MLflow run
    sa = torch.load(one / "models/l1/model.pt", weights_only=True)["state_dict"]
    sb = torch.load(two / "models/l1/model.pt", weights_only=True)["state_dict"]
    worst_w = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    print(f"final EMA weights: max abs difference {worst_w:.3g}")
    assert worst_w < 1e-5
    last = torch.load(two / "models/.resume/l1/last.pt", weights_only=True)
    assert last["world"] == 2 and len(last["rng_ranks"]) == 1
    assert not torch.equal(last["rng"]["torch"], last["rng_ranks"][0]["torch"])  # per-rank streams (seed + rank)
    import mlflow

    def runs(root: Path) -> list[str]:
        client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
        return sorted(r.info.run_name for r in client.search_runs([e.experiment_id for e in client.search_experiments()]))

    assert len(runs(two)) == len(runs(one))  # the other rank opened none


@pytest.mark.slow
def test_sigkill_under_ddp_resumes_to_the_uninterrupted_result(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    _run(ref, _prepare(ref, 2, steps=12), 2)
    pf = _prepare(cut, 2, steps=12)
    p = subprocess.Popen(_cmd(cut, pf, 2), cwd=cut, env=_env(cut), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    last = cut / "models/.resume/l1/last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if last.is_file() and torch.load(last, weights_only=True)["step"] >= 4:
            break
        time.sleep(0.05)
    assert p.poll() is None, "training finished before it could be killed: " + p.stderr.read()[-3000:]
    import psutil

    procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]  # torchrun and both ranks
    assert len(procs) >= 3, procs
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)
    p.wait(timeout=30)
    step = torch.load(last, weights_only=True)["step"]
    assert step in (4, 8) and not (cut / "models/l1/model.pt").exists()
    err = _run(cut, pf, 2)
    assert f"at step {step}/12" in err, err[-3000:]
    la = torch.load(ref / "models/.resume/l1/last.pt", weights_only=True)
    lb = torch.load(last, weights_only=True)
    for k, v in la["model"].items():
        assert torch.equal(v, lb["model"][k]), k  # same ranks, same reduction order: bit-exact
    assert la["history"] == lb["history"]


def test_setup_refuses_mismatched_devices_and_indivisible_batches(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, dev = setup(1, 5, "cpu")
    assert ctx == DistContext() and dev.type == "cpu" and not ctx.enabled
    with pytest.raises(ValueError, match="torchrun --standalone --nproc-per-node 2"):
        setup(2, 4, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="not divisible by train.loop.devices 2"):
        setup(2, 5, "cpu")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        setup(4, 8, "cpu")


def test_shards_partition_the_global_batch():
    parts = [DistContext(rank=r, world=4).shard(8) for r in range(4)]
    assert [list(range(8))[s] for s in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_stage_restarts_itself_under_torchrun_with_the_same_arguments(monkeypatch):
    from retina_sr.training import stage

    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    cmd = stage.torchrun_command(4, ["workflow/scripts/train.py", "--params", "params.yaml", "--phase", "l1"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                   "workflow/scripts/train.py", "--params", "params.yaml", "--phase", "l1"]

    class Spec:
        name = "retina_sr.stages"

    monkeypatch.setattr(sys.modules["__main__"], "__spec__", Spec(), raising=False)
    cmd = stage.torchrun_command(2, ["/x/stages.py", "train", "--phase", "l1"])
    assert cmd[-6:] == ["--nproc-per-node=2", "-m", "retina_sr.stages", "train", "--phase", "l1"]
