"""The study's parent run: one per experiment and study key, found or created race-free by concurrent
stage processes; the stages are its children; study-wide files go on it once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from retina_sr import tracking
from retina_sr.config import Params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# every worker waits for the same wall-clock instant, then starts its stage run at once
_STAGE = textwrap.dedent(
    """
    import os, sys, time
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from retina_sr import tracking
    from retina_sr.config import Params
    import mlflow  # imported before the start line, so the processes really start together
    i, go = int(sys.argv[1]), float(sys.argv[2])
    time.sleep(max(0.0, go - time.time()))
    with tracking.start_run(Params(), "race", f"stage{i}", {"worker": i}, own_params={"worker": i}) as run:
        tracking.log_metrics({"m": i})
    print(run.info.run_id)
    """
)


def test_concurrent_stages_share_one_parent(tmp_path):
    """3 stage processes start at the same instant on a store created beforehand (as `make repro`
    does): one parent run, three children under it, each child with only its own parameter."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/race.db"
    tracking.init_store(uri)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    script = tmp_path / "stage.py"
    script.write_text(_STAGE)
    go = time.time() + 12  # after every process's imports (seconds each on 2 busy cores)
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(go)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("race")
    runs = client.search_runs([exp.experiment_id], run_view_type=3)  # ALL: a deleted duplicate would show
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "study"]
    children = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "stage"]
    assert len(parents) == 1 and len(children) == 3, [(r.info.run_name, r.info.lifecycle_stage) for r in runs]
    parent = parents[0]
    assert parent.data.tags[tracking.STUDY_KEY_TAG] == tracking.study_key(Params())
    assert parent.data.params["seed"] == "42" and len(parent.data.params) > 50
    for c in children:
        assert c.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert c.data.params == {"worker": c.data.tags["worker"]}
        assert c.info.run_id in {o.strip() for o, _ in outs}


def test_a_parent_created_elsewhere_meanwhile_wins_and_ours_is_deleted(tmp_path, monkeypatch):
    """Without a shared lock (jobs on two machines, one server), a process that finds no parent and
    creates one re-reads: when another process's parent came first, it keeps that one and deletes its own."""
    import contextlib

    import mlflow

    uri = f"sqlite:///{tmp_path}/elect.db"
    tracking.init_store(uri)
    exp_id = tracking.get_or_create_experiment("elect", uri)
    p = Params()
    client = mlflow.MlflowClient(uri)
    other = client.create_run(exp_id, run_name="other machine",
                              tags={tracking.STUDY_KEY_TAG: tracking.study_key(p), tracking.ROLE_TAG: "study"})
    real_find = tracking._find_study_runs
    calls = {"n": 0}

    def find_late(*args):
        calls["n"] += 1
        return [] if calls["n"] == 1 else real_find(*args)  # the first look happened before `other` existed

    monkeypatch.setattr(tracking, "_find_study_runs", find_late)
    monkeypatch.setattr(tracking, "_study_lock", lambda uri: contextlib.nullcontext())
    winner = tracking.get_or_create_study_run(p, exp_id, uri)
    assert winner == other.info.run_id
    runs = client.search_runs([exp_id], run_view_type=3)
    mine = [r for r in runs if r.info.run_id != other.info.run_id]
    assert len(mine) == 1 and mine[0].info.lifecycle_stage == "deleted"
    # later stages find the winner directly
    monkeypatch.setattr(tracking, "_find_study_runs", real_find)
    assert tracking.get_or_create_study_run(p, exp_id, uri) == other.info.run_id


def test_study_files_go_once_on_the_parent(tmp_path, monkeypatch):
    """Comparison panels logged with run_id=study_run_id() land on the parent, not in each child."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/once.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    panel = tmp_path / "panel_a_x4.png"
    panel.write_bytes(b"\x89PNG fake")
    ids = []
    for name in ("bicubic", "l1"):
        with tracking.start_run(Params(), "evaluation", name, {"eval_model": name}) as run:
            parent = tracking.study_run_id()
            if name == "bicubic":
                tracking.log_artifact(panel, "panels", run_id=parent)
            ids.append(run.info.run_id)
    client = mlflow.MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(parent, "panels")] == ["panels/panel_a_x4.png"]
    for rid in ids:
        assert client.list_artifacts(rid) == []
        assert client.get_run(rid).data.tags[tracking.PARENT_TAG] == parent


def test_stand_alone_run_has_no_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/alone.db")
    with tracking.start_run(Params(), "alone", "x", log_all_params=False):
        assert tracking.study_run_id() is None


def test_a_parent_made_unseen_elsewhere_is_merged_when_the_stage_ends(tmp_path, monkeypatch):
    """Two machines each created and kept their own parent (neither saw the other's in time): when a
    stage ends, the earliest parent stays, every child of the other is moved under it, the other is
    deleted; a second settle (the other machine's stage ending) finds nothing left to do."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/merge.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.init_store(uri)
    exp_id = tracking.get_or_create_experiment("merge", uri)
    p = Params()
    client = mlflow.MlflowClient(uri)
    tags = {tracking.STUDY_KEY_TAG: tracking.study_key(p), tracking.ROLE_TAG: "study"}
    first = client.create_run(exp_id, run_name="machine A's", tags=tags, start_time=1_000)
    second = client.create_run(exp_id, run_name="machine B's", tags=tags, start_time=2_000)
    b_child = client.create_run(exp_id, run_name="B's earlier stage", tags={tracking.PARENT_TAG: second.info.run_id})
    monkeypatch.setattr(tracking, "get_or_create_study_run", lambda *a, **k: second.info.run_id)
    with tracking.start_run(p, "merge", "stage on B") as run:
        assert tracking.study_run_id() == second.info.run_id  # what B chose when it started
    for rid in (run.info.run_id, b_child.info.run_id):
        assert client.get_run(rid).data.tags[tracking.PARENT_TAG] == first.info.run_id
    assert client.get_run(second.info.run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(first.info.run_id).info.lifecycle_stage == "active"
    assert tracking._settle_study_runs(client, exp_id, tracking.study_key(p)) == first.info.run_id
    client.delete_run(second.info.run_id)  # deleting it again (the other job was first) is no error


def test_experiment_created_meanwhile_elsewhere_is_used(tmp_path, monkeypatch):
    """A job on another machine creates the experiment between our look and our create (no lock is
    shared through a server): MLflow's "already exists" means "use it", not a failed stage."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/exp.db"
    tracking.init_store(uri)
    existing = mlflow.MlflowClient(uri).create_experiment("shared")
    real = mlflow.MlflowClient.get_experiment_by_name
    calls = {"n": 0}

    def late(self, name):
        calls["n"] += 1
        return None if calls["n"] <= 2 else real(self, name)  # both looks happened before it existed

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", late)
    assert tracking.get_or_create_experiment("shared", uri) == existing
    assert calls["n"] == 3
