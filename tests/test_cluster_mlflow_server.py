"""MLflow through a tracking server with artifact proxying, as a cluster uses it: concurrent writers over HTTP.

A real ``mlflow server`` (SQLite backend, 2 workers, ``--artifacts-destination`` a temporary folder,
artifact proxying on: MLflow 3's default) is started on 127.0.0.1 on a free port. Four writer processes,
each as if on its own compute node (own working and temporary folder, so no file lock is shared: only
the server), import everything, wait at a common gate and then start together (creating the experiment
and the study's parent run at the same moment), and log through the project's own
:mod:`retina_sr.tracking` (``start_run``, ``log_metrics``, ``log_artifact``) to
``MLFLOW_TRACKING_URI=http://127.0.0.1:<port>``. Checks: every run with every metric step arrived; the
artifacts are ``mlflow-artifacts:`` URIs, lie in the server's destination folder and download through
the server byte for byte; the writers share one experiment and one study parent run (or none).

Run with ``make test-cluster`` (marker ``cluster``); 45 s to 2.5 min on 2 CPU cores (server start-up).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WRITERS = 4
STEPS = 20
EXPERIMENT = "cluster-test"
READY_TIMEOUT = 180.0

# one writer: a stage as the study runs it, through retina_sr.tracking only
WRITER = r"""
import hashlib, json, os, sys, time
from pathlib import Path
from retina_sr import tracking
from retina_sr.config import load_params

i, root = int(sys.argv[1]), Path(sys.argv[2])
params = load_params(root / "params.yaml")
blob = Path(f"blob_{i}.bin")
blob.write_bytes(os.urandom(200_000 + i))
# imports done: wait for the others, so that all create the experiment and the study run at once
Path(sys.argv[5], f"ready_{i}").touch()
while not Path(sys.argv[5], "go").exists():
    time.sleep(0.01)
with tracking.start_run(params, sys.argv[3], f"writer_{i}", tags={"writer": str(i)}, root=root) as run:
    for step in range(int(sys.argv[4])):
        tracking.log_metrics({"loss": 1.0 / (step + 1) + i, "writer": float(i)}, step=step)
    tracking.log_artifact(blob, artifact_path="blobs")
    info = {"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri,
            "sha256": hashlib.sha256(blob.read_bytes()).hexdigest(), "name": blob.name}
print("RESULT " + json.dumps(info))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; a clear error if the server exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode} before it was ready; "
                               f"its log ({log}) ends:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not ready at {url} after {timeout:.0f} s; its log ({log}) ends:\n"
                       f"{log.read_text()[-3000:]}")


@pytest.fixture
def server(tmp_path):
    """A tracking server with proxied artifacts; yields (uri, artifacts folder); always stopped."""
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    log = tmp_path / "mlflow-server.log"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2"],
            cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, log, READY_TIMEOUT)
        yield f"http://127.0.0.1:{port}", artifacts
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: our own session
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_concurrent_writers_through_tracking_server(server, tmp_path):
    uri, artifacts = server
    t0 = time.monotonic()
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = []
    for i in range(WRITERS):
        node = tmp_path / f"node{i}"  # each writer its own cwd and TMPDIR: no lock file is shared
        (node / "tmp").mkdir(parents=True)
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true", TMPDIR=str(node / "tmp"),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, str(i), str(ROOT), EXPERIMENT, str(STEPS), str(gate)],
                                      cwd=node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 300
    while len(list(gate.glob("ready_*"))) < WRITERS:
        failed = [p.args[3] for p in procs if p.poll() is not None]
        assert not failed and time.monotonic() < deadline, f"writers {failed} ended before the start (or 300 s passed)"
        time.sleep(0.05)
    (gate / "go").touch()
    results = {}
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"writer {i} failed:\n{out[-2000:]}\n{err[-3000:]}"
        line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
        results[i] = json.loads(line[len("RESULT "):])
    print(f"{WRITERS} writers done in {time.monotonic() - t0:.1f} s")

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = [e for e in client.search_experiments() if e.name == EXPERIMENT]
    assert len(exps) == 1, [e.name for e in client.search_experiments()]
    runs = client.search_runs([exps[0].experiment_id], filter_string="tags.writer != ''")
    assert sorted(r.info.run_name for r in runs) == [f"writer_{i}" for i in range(WRITERS)]
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}
    assert len(parents) <= 1, f"concurrent writers ended under several study runs: {parents}"
    for parent in parents:
        assert client.get_run(parent).info.lifecycle_stage == "active"

    dl = tmp_path / "downloads"
    for i, res in results.items():
        run = client.get_run(res["run_id"])
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(res["run_id"], "loss")
        assert sorted(m.step for m in history) == list(range(STEPS))
        assert run.data.metrics["writer"] == float(i)
        # proxied: the run's artifact URI names the server's proxy, not a path the writer could open
        assert res["artifact_uri"].startswith("mlflow-artifacts:"), res["artifact_uri"]
        stored = [f for f in artifacts.rglob(res["name"]) if res["run_id"] in f.parts]
        assert len(stored) == 1, f"{res['name']} not in the server's artifacts destination {artifacts}"
        got = mlflow.artifacts.download_artifacts(run_id=res["run_id"], artifact_path=f"blobs/{res['name']}",
                                                  dst_path=str(dl / str(i)), tracking_uri=uri)
        assert hashlib.sha256(Path(got).read_bytes()).hexdigest() == res["sha256"]
        assert Path(got).resolve().is_relative_to(dl.resolve())
        print(f"writer_{i}: run {res['run_id']} FINISHED, {len(history)} loss steps, parent "
              f"{run.data.tags.get('mlflow.parentRunId')}, {res['artifact_uri']}/blobs/{res['name']} "
              f"({Path(got).stat().st_size} bytes) stored at {stored[0].relative_to(artifacts)}, downloaded "
              "through the server: sha256 equal")
    print(f"round trip through {uri} in {time.monotonic() - t0:.1f} s")
