"""A DVC remote on S3: `dvc push` then `dvc pull` into a fresh clone, against a real local S3 server.

The test starts moto's S3 server (``moto_server``, from ``moto[server]``) on 127.0.0.1 on a free port,
creates a bucket, and in a small DVC repository made in a temporary folder adds a file and a folder,
configures the remote as a user would (``dvc remote add -d ... s3://bucket/prefix``, ``dvc remote
modify ... endpointurl``; credentials only in the environment, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``), pushes, checks the objects are in the bucket, and pulls into a ``git clone``
that starts without DVC cache; the bytes must match.

Run with ``make test-cluster`` (marker ``cluster``); 10-15 s on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BUCKET = "retina-sr-test"
PREFIX = "dvcstore"
READY_TIMEOUT = 60.0
# moto accepts any credentials; they travel only in the environment, never in .dvc/config
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(tmp_path):
    """moto's S3 server on 127.0.0.1:<free port>; yields its endpoint URL; always stopped."""
    if not (BIN / "moto_server").exists():
        pytest.skip("moto_server is not installed: pip install -e '.[cluster]'")
    port = free_port()
    log = tmp_path / "moto.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}; its log ({log}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server not ready at {url} after {READY_TIMEOUT:.0f} s; "
                                       f"its log ({log}):\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, **CREDS, PATH=f"{BIN}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(k, None)
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def digests(root: Path, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        p = root / name
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_dvc_push_pull_through_s3(s3, tmp_path):
    pytest.importorskip("dvc_s3", reason="dvc-s3 is not installed: pip install -e '.[cluster]'")
    import boto3

    t0 = time.monotonic()
    client = boto3.client("s3", endpoint_url=s3, aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"], region_name=CREDS["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket=BUCKET)

    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([str(BIN / "dvc"), "init", "-q"], repo)
    (repo / "model.pt").write_bytes(os.urandom(300_000))
    (repo / "patches").mkdir()
    for i in range(3):
        (repo / "patches" / f"p{i}.npz").write_bytes(os.urandom(50_000 + i))
    run([str(BIN / "dvc"), "add", "-q", "model.pt", "patches"], repo)
    run([str(BIN / "dvc"), "remote", "add", "-d", "s3store", f"s3://{BUCKET}/{PREFIX}"], repo)
    run([str(BIN / "dvc"), "remote", "modify", "s3store", "endpointurl", s3], repo)
    config = (repo / ".dvc" / "config").read_text()
    assert CREDS["AWS_SECRET_ACCESS_KEY"] not in config
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "data"], repo)
    push = run([str(BIN / "dvc"), "push"], repo)
    print(push.stdout.strip())

    # the objects are in the bucket, in DVC's content-addressed layout under the prefix
    objects = client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("Contents", [])
    keys = [o["Key"] for o in objects]
    assert len(keys) == 5, keys  # model.pt, 3 patches, the folder's .dir listing
    assert all(k.startswith(f"{PREFIX}/files/md5/") for k in keys), keys

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "model.pt").exists() and not (clone / ".dvc" / "cache").exists()
    pull = run([str(BIN / "dvc"), "pull"], clone)
    print(pull.stdout.strip())
    names = ["model.pt", "patches"]
    assert digests(clone, names) == digests(repo, names)
    assert len(digests(clone, names)) == 4
    print(f"S3 round trip: {len(keys)} objects, {sum(o['Size'] for o in objects)} bytes pushed and pulled "
          f"in {time.monotonic() - t0:.1f} s")
