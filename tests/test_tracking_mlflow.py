"""MLflow tracking: URI resolution, one-time store creation, parallel writers, runs with tags/params."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from retina_sr import tracking
from retina_sr.config import Params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REPO = Path(__file__).resolve().parents[1]


def test_uri_env_wins_and_relative_sqlite_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    p = Params()
    assert tracking.resolve_tracking_uri(p, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    p.mlflow.tracking_uri = "sqlite:////abs/other.db"
    assert tracking.resolve_tracking_uri(p, tmp_path) == "sqlite:////abs/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel.db")
    assert tracking.resolve_tracking_uri(p, tmp_path) == f"sqlite:///{tmp_path.resolve()}/rel.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri(p, tmp_path) == "http://127.0.0.1:5000"
    assert tracking.sqlite_path("http://x") is None


def test_truncate_keeps_short_values_and_cuts_long_ones():
    assert tracking.truncate([1, 2], 10) == "[1, 2]"
    cut = tracking.truncate("x" * 7000, tracking.MAX_PARAM_VALUE)
    assert len(cut) == tracking.MAX_PARAM_VALUE and cut.endswith("[truncated]")


def test_retry_retries_lock_errors_only():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.retry(flaky, base_delay=0.001) == "ok" and calls["n"] == 3

    def broken():
        raise KeyError("no such thing")

    with pytest.raises(KeyError):
        tracking.retry(broken, base_delay=0.001)


def test_start_run_logs_common_tags_params_and_resumes(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    p = Params()
    with tracking.start_run(p, "exp-a", "train_l1", {"dvc_stage": "train_l1", "empty": None},
                            own_params={"phase": "l1", "lr": p.train.l1.lr}) as run:
        tracking.log_metrics({"loss": 0.5}, step=1)
        run_id = run.info.run_id
    client = mlflow.MlflowClient(uri)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "train_l1"
    assert r.data.tags["study"] == "demo" and r.data.tags["dvc_stage"] == "train_l1"
    assert "git_commit" in r.data.tags and "empty" not in r.data.tags
    # the stage carries only its own parameters; the study's are on the parent run
    assert r.data.params == {"phase": "l1", "lr": str(p.train.l1.lr)}
    parent = client.get_run(r.data.tags[tracking.PARENT_TAG])
    assert parent.data.params["train.l1.lr"] == str(p.train.l1.lr)
    assert parent.data.params["data.scales"] == "[1, 2, 4, 8]"
    assert parent.data.tags[tracking.STUDY_KEY_TAG] == tracking.study_key(p) and parent.info.status == "FINISHED"
    assert client.get_experiment(r.info.experiment_id).artifact_location.startswith((tmp_path / "mlruns").as_uri())
    # resume the same run with one changed param: no MLflow error, the change is tagged
    p.evaluate.figure_images = 5
    with tracking.start_run(p, "exp-a", "train_l1", {"resumed_from_step": 7}, run_id=run_id,
                            own_params={"phase": "l1"}):
        tracking.log_metrics({"loss": 0.25}, step=2)
    r = client.get_run(run_id)
    assert r.data.tags["resumed_from_step"] == "7"
    assert r.data.tags["params_changed_on_resume"] == "evaluate.figure_images"
    assert r.data.tags[tracking.PARENT_TAG] == parent.info.run_id  # a resumed run keeps its study run
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.5, 0.25]
    # a run id the store does not know starts a new run (and says so), under the changed study's parent
    with tracking.start_run(p, "exp-a", "train_l1", run_id="0" * 32) as run2:
        assert run2.info.run_id != "0" * 32
    r2 = client.get_run(run2.info.run_id)
    assert r2.data.tags["resumed_run_missing"] == "0" * 32
    assert r2.data.tags[tracking.PARENT_TAG] not in (None, parent.info.run_id)


def test_experiments_are_model_training_experiments(tmp_path, monkeypatch):
    """MLflow 3's UI opens an experiment tagged custom_model_development on its runs table (GenAI
    experiments open on traces); experiments made before this tag existed get it on the next run."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/kind.db"
    tracking.init_store(uri)
    client = mlflow.MlflowClient(uri)
    old = client.create_experiment("older")  # as a plain create_experiment leaves it
    assert tracking.EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    new = tracking.get_or_create_experiment("newer", uri)
    assert tracking.get_or_create_experiment("older", uri) == old
    for exp_id in (old, new):
        assert client.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_the_kind_value_is_one_the_installed_ui_knows():
    """The values come from MLflow's UI bundle (no Python constant exists): guard against a rename."""
    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    if not js.is_dir():
        pytest.skip("this MLflow installation has no UI bundle")
    bundle = "".join(f.read_text(errors="ignore") for f in js.glob("main.*.js"))
    assert f'CUSTOM_MODEL_DEVELOPMENT="{tracking.MODEL_TRAINING_KIND}"' in bundle
    # the layout switch the UI reads from the URL (README/Makefile links carry tracking.UI_QUERY)
    key, value = tracking.UI_QUERY.lstrip("?").split("=")
    assert f'MACHINE_LEARNING="{value}"' in bundle and f'.get("{key}")' in bundle


def test_failed_block_marks_run_failed(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(ZeroDivisionError):
        with tracking.start_run(Params(), "exp-b", "boom", log_all_params=False) as run:
            1 / 0  # noqa: B018
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


_WORKER = textwrap.dedent(
    """
    import os, sys
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from retina_sr import tracking
    from retina_sr.config import Params
    i = int(sys.argv[1])
    with tracking.start_run(Params(), "parallel", f"worker{i}", {"worker": i}) as run:
        for step in range(25):
            tracking.log_metrics({"a": i + step, "b": step * 0.5}, step=step)
    print(run.info.run_id)
    """
)


@pytest.mark.slow
def test_eight_parallel_writers_on_a_fresh_sqlite_store_lose_nothing(tmp_path):
    """8 processes create the store, the experiment and log at once: every metric arrives."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/par.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    client = mlflow.MlflowClient(uri)
    exps = [e for e in client.search_experiments() if e.name == "parallel"]
    assert len(exps) == 1
    runs = client.search_runs([exps[0].experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "study"]
    stages = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "stage"]
    assert len(parents) == 1 and len(stages) == 8 and len(runs) == 9
    assert parents[0].data.params["seed"] == "42"
    for r in stages:
        i = int(r.data.tags["worker"])
        hist = client.get_metric_history(r.info.run_id, "a")
        assert sorted((m.step, m.value) for m in hist) == [(s, float(i + s)) for s in range(25)]
        assert len(client.get_metric_history(r.info.run_id, "b")) == 25
        assert r.data.tags[tracking.PARENT_TAG] == parents[0].info.run_id and r.info.status == "FINISHED"


def test_tracking_init_command_creates_store(tmp_path, monkeypatch):
    from retina_sr.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/init.db")
    monkeypatch.chdir(REPO)
    assert main(["tracking", "init"]) == 0
    assert (tmp_path / "init.db").is_file()


# ------------------------------------------- issue #8: a broken or busy store is one clear line
_HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.execute("ROLLBACK")
    """
)


@pytest.fixture()
def locked_store(tmp_path):
    """A store another process holds an exclusive SQLite lock on (for `seconds`, default: the test)."""
    procs = []

    def hold(seconds: float = 120.0) -> Path:
        db = tmp_path / "busy.db"
        if not db.exists():
            tracking.init_store(f"sqlite:///{db}", wait=10)
        p = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return db

    yield hold
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture()
def corrupt_store(tmp_path) -> Path:
    db = tmp_path / "mlflow.db"
    db.write_bytes(random.Random(0).randbytes(64 * 1024))
    return db


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_corrupt_store_is_one_line_naming_it(corrupt_store, monkeypatch):
    with pytest.raises(tracking.TrackingStoreError) as info:
        tracking.init_store(f"sqlite:///{corrupt_store}", wait=1)
    msg = _one_line(str(info.value))
    assert msg.startswith(f"{corrupt_store}: ") and "not an SQLite database" in msg, msg
    assert "move it away or delete it" in msg and "new store" in msg, msg
    # the way a stage starts its run: the same error, no SQLAlchemy traceback
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{corrupt_store}")
    with pytest.raises(tracking.TrackingStoreError, match="move it away"):
        with tracking.start_run(Params(), "exp", "run", log_all_params=False):
            pass


def test_locked_store_waits_a_bounded_time_then_says_who_to_wait_for(locked_store):
    import time

    db = locked_store()
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingStoreError) as info:
        tracking.init_store(f"sqlite:///{db}", wait=1.0)
    assert time.monotonic() - t0 < 10
    msg = _one_line(str(info.value))
    assert msg.startswith(f"{db}: ") and "locked" in msg and "another process" in msg, msg
    assert "wait for it" in msg and "stop it" in msg and "RETINA_SR_MLFLOW_WAIT" in msg, msg


def test_store_locked_for_a_moment_is_waited_out(locked_store):
    db = locked_store(seconds=1.0)
    assert tracking.init_store(f"sqlite:///{db}", wait=30) == f"sqlite:///{db}"


def test_retry_stops_at_max_wait():
    import time

    def locked():
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="locked"):
        tracking.retry(locked, attempts=1000, base_delay=0.05, max_wait=0.5)
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("case", ["corrupt", "locked"])
def test_tracking_init_command_one_line_exit_1(case, corrupt_store, locked_store, monkeypatch, capsys):
    from retina_sr.cli import main

    db = corrupt_store if case == "corrupt" else locked_store()
    capsys.readouterr()  # MLflow's log of creating the store the fixture then locks
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("RETINA_SR_MLFLOW_WAIT", "0.5")
    monkeypatch.chdir(REPO)
    assert main(["tracking", "init"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"{db}: " in line and ("move it away" if case == "corrupt" else "wait for it") in line, line


def test_store_wait_env_is_checked(monkeypatch):
    monkeypatch.setenv("RETINA_SR_MLFLOW_WAIT", "soon")
    with pytest.raises(ValueError, match="RETINA_SR_MLFLOW_WAIT='soon' must be a number of seconds"):
        tracking.store_wait()
    monkeypatch.setenv("RETINA_SR_MLFLOW_WAIT", "2.5")
    assert tracking.store_wait() == 2.5


def test_training_registers_its_model_and_models_uri_loads_it(tmp_path, monkeypatch):
    """Every training stage registers model.pt as a version of mlflow.registered_model, so the README's
    `--model models:/retina-sr/<version>` works (registry round trip through the Enhancer)."""
    import mlflow
    import numpy as np

    from retina_sr.inference import Enhancer
    from retina_sr.training import train_phase
    from test_training_data import make_patches, tiny_params

    uri = f"sqlite:///{tmp_path}/reg.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    make_patches(tmp_path)
    manifest = tmp_path / "data" / "processed" / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("id,source,split\nim0,demo,train\nim1,demo,val\n")
    params, _ = tiny_params(tmp_path)
    res = train_phase(params, "l1", root=tmp_path, progress=False, track=True)
    client = mlflow.MlflowClient(uri)
    mv = client.get_model_version("retina-sr", "1")
    assert mv.tags["phase"] == "l1" and mv.tags["study"] == params.study and mv.run_id == res.run_id
    enh = Enhancer.from_checkpoint("models:/retina-sr/1", tracking_uri=uri)
    out = enh.enhance(np.full((8, 8, 3), 120, np.uint8), 2)
    assert out.shape == (16, 16, 3)
    # the registered version is an MLflow pyfunc: predict(images, params={"zoom": z})
    pyfunc = mlflow.pyfunc.load_model("models:/retina-sr/1")
    assert pyfunc.predict(np.full((1, 8, 8, 3), 120, np.uint8), params={"zoom": 2.0}).shape == (1, 16, 16, 3)
    run = client.get_run(res.run_id)
    # only what differs from the study: phase, variant, the phase's own settings (the rest is on the parent)
    assert run.data.params["phase"] == "l1" and run.data.params["variant"] == ""
    assert run.data.params["lr"] == str(params.train.l1.lr) and "train.l1.lr" not in run.data.params
    assert "train.l1.lr" in client.get_run(run.data.tags[tracking.PARENT_TAG]).data.params
    ds = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert set(ds) == {"processed", "train_patches"}
    assert ds["processed"].digest == run.data.tags["data_hash"][:16]
    assert json.loads(ds["processed"].profile)["num_rows"] == 2
    # one validation image per validation step (the MLflow UI's image step slider)
    images = [f.path.split("/")[-1] for f in client.list_artifacts(res.run_id, "images")]
    logged = sorted(int(p.split("+")[2]) for p in images if p.startswith("validation+step+") and p.endswith(".png"))
    validated = sorted(m.step for m in client.get_metric_history(res.run_id, "val_psnr_mean"))
    assert logged == validated and len(validated) >= 2 and validated[-1] == res.metrics["steps"]


def test_training_runs_own_params_are_what_differs_from_the_study(tmp_path):
    """A phase run's own parameters: phase, variant, the phase's settings, and the model settings a
    variant changes (``model.<key>``); everything else is on the study's parent run."""
    from retina_sr.training.outputs import PhaseTracker
    from retina_sr.training.trainer import plan_phase
    from test_training_data import tiny_params

    params, _ = tiny_params(tmp_path)
    own = PhaseTracker(params, plan_phase(params, "l1", root=tmp_path), None, None, "h", None).own_params()
    assert own == {"phase": "l1", "variant": "", **params.train.l1.model_dump(mode="json")}
    variant = next(iter(params.train.variants))
    plan = plan_phase(params, "modified", variant, root=tmp_path)
    own = PhaseTracker(params, plan, None, None, "h", None).own_params()
    changed = {f"model.{k}": v for k, v in params.train.variants[variant].model_dump(mode="json", exclude={"loss"}).items()
               if v is not None and params.model.model_dump(mode="json")[k] != v}
    assert changed and own == {"phase": "modified", "variant": variant,
                               **params.train.modified.model_dump(mode="json"), **changed}
    # a variant's own loss weights (train.variants.<v>.loss) are its run's too
    params, _ = tiny_params(tmp_path, train={"variants": {"subpixel": {"upsample": "subpixel",
                                                                       "loss": {"periodic_weight": 0.3}}}})
    own = PhaseTracker(params, plan_phase(params, "modified", "subpixel", root=tmp_path), None, None, "h",
                       None).own_params()
    assert own["loss.periodic_weight"] == 0.3 and own["model.upsample"] == "subpixel" and "loss.ridge_weight" not in own
