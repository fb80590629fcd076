"""MLflow tracking for every stage: store creation, runs with the study's common tags, safe logging.

* **Store.** The tracking URI is the ``MLFLOW_TRACKING_URI`` environment variable when set, else
  ``params.mlflow.tracking_uri`` (default ``sqlite:///mlflow.db``; a relative SQLite path is taken
  relative to the repository root). A new SQLite store must be created *once* before parallel jobs
  start - several processes running MLflow's schema migration on one fresh database at once crash -
  so :func:`init_store` creates it under an exclusive ``fcntl`` lock (``<db>-lock``). The Makefile
  runs ``retina-sr tracking init`` before ``dvc repro``/``snakemake``; :func:`start_run` calls
  :func:`init_store` too, so a single stage run works on its own.
* **Parallel writers.** SQLite allows one writer at a time; concurrent stages (Snakemake ``--cores 8``)
  can see ``database is locked``. Every write goes through :func:`retry`, which retries such
  transient errors with exponential back-off, so nothing is lost.
* **A store that cannot be used.** Store setup (:func:`init_store`, the experiment) waits at most
  :func:`store_wait` seconds in all (``RETINA_SR_MLFLOW_WAIT``, default 60) for a store another process
  holds locked, then raises :class:`TrackingStoreError`; so does a database file that is not SQLite
  (corrupt). Its message is one line naming the file and what to do, not SQLAlchemy's traceback.
* **Runs.** :func:`start_run` is the one context manager used by training and evaluation: it sets the
  URI, creates the store and experiment, starts (or resumes) the run with the common tags (git
  commit, study, data source, params digest) and logs every parameter flattened
  (:func:`retina_sr.config.flatten`), values truncated to MLflow's limit.

References: MLflow tracking documentation, "Backend stores" (https://mlflow.org/docs/latest/tracking/).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .config import flatten

if TYPE_CHECKING:  # pragma: no cover
    import mlflow

    from .config import Params

__all__ = [
    "DEFAULT_URI",
    "TrackingStoreError",
    "store_wait",
    "resolve_tracking_uri",
    "sqlite_path",
    "init_store",
    "get_or_create_experiment",
    "start_run",
    "common_tags",
    "log_params",
    "log_metrics",
    "set_tags",
    "log_artifact",
    "retry",
    "truncate",
]

DEFAULT_URI = "sqlite:///mlflow.db"
#: MLflow's limits (mlflow.utils.validation): param values 6000 chars, tag values 8000, keys 250.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
#: seconds store setup waits, in all, for a store another process holds locked (RETINA_SR_MLFLOW_WAIT)
STORE_WAIT = 60.0

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

T = TypeVar("T")


class TrackingStoreError(RuntimeError):
    """The tracking store cannot be used (corrupt, locked past the wait, unopenable); one-line message."""


def store_wait() -> float:
    """Total seconds store setup waits for a locked store: ``RETINA_SR_MLFLOW_WAIT``, else :data:`STORE_WAIT`."""
    raw = os.environ.get("RETINA_SR_MLFLOW_WAIT", "").strip()
    if not raw:
        return STORE_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"RETINA_SR_MLFLOW_WAIT={raw!r} must be a number of seconds (e.g. 60); fix or unset it")
    return value


# ------------------------------------------------------------------------------------------ URIs
def resolve_tracking_uri(params: Params | None = None, root: str | Path = ".") -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` wins, else ``params.mlflow.tracking_uri``.

    A relative SQLite path (``sqlite:///mlflow.db``) is made absolute against ``root`` (the repository
    root), so every stage and the ``mlflow ui`` of the Makefile see the same database.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (params.mlflow.tracking_uri if params is not None else DEFAULT_URI)
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():
        uri = "sqlite:///" + str((Path(root) / db).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other stores or in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store go next to the database (``<dir>/mlruns``), not into the cwd."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "mlruns").resolve().as_uri()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``) on ``path``, held for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _lock_for(uri: str) -> contextlib.AbstractContextManager[None]:
    db = sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext()
    return _file_lock(db.with_name(db.name + "-lock"))  # matches .gitignore's mlflow.db-*


# ---------------------------------------------------------------------------------------- retries
_TRANSIENT = ("database is locked", "database table is locked", "database is busy")


def _is_transient(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}".lower()
    return any(t in text for t in _TRANSIENT)


def retry(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 30,
    base_delay: float = 0.05,
    max_wait: float | None = None,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)``, retrying SQLite lock contention with jittered exponential back-off.

    Any other error is raised at once; lock contention that outlasts ``attempts`` (about a minute)
    or ``max_wait`` seconds in all is raised too, with the original message.
    """
    deadline = None if max_wait is None else time.monotonic() + max_wait
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - filtered below
            if not _is_transient(err) or i == attempts - 1:
                raise
            delay = min(2.0, base_delay * 2**i) * (0.5 + random.random())
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                delay = min(delay, left)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------------------ store
_CORRUPT = ("file is not a database", "database disk image is malformed", "not a database")


def _probe_sqlite(db: Path, deadline: float) -> None:
    """Open ``db`` as a writer would, briefly: raises ``sqlite3`` errors (locked, not a database).

    Done before MLflow opens the file, whose own busy timeout is 20 s per call and whose engine setup
    retries a corrupt file for seconds, each failure logged with a traceback.
    """
    timeout = max(0.05, min(2.0, deadline - time.monotonic()))
    con = sqlite3.connect(db.resolve().as_uri() + "?mode=rw", uri=True, timeout=timeout, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")  # waits for a writer that holds the database (up to `timeout`)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header: corrupt files fail here
        con.execute("ROLLBACK")
    finally:
        con.close()


def _store_error(uri: str, err: BaseException, wait: float) -> TrackingStoreError | None:
    """One line for an error from opening the store (``None``: not a store problem, re-raise it)."""
    where = sqlite_path(uri) or uri
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if _is_transient(err):
        return TrackingStoreError(
            f"{where}: the MLflow store is still locked after {wait:g} s; another process is writing to it: "
            "wait for it to finish or stop it, then rerun (RETINA_SR_MLFLOW_WAIT sets the wait in seconds)"
        )
    if any(c in text.lower() for c in _CORRUPT):
        return TrackingStoreError(
            f"{where}: not an SQLite database, the MLflow store is corrupt ({text}); move it away or delete it "
            "to start a new store (its runs are lost), or point MLFLOW_TRACKING_URI at another store"
        )
    if isinstance(err, sqlite3.Error) or type(err).__module__.startswith("sqlalchemy"):
        return TrackingStoreError(
            f"{where}: cannot open the MLflow store ({text}); check the file and that its folder is writable, "
            "or point MLFLOW_TRACKING_URI at another store"
        )
    return None


@contextlib.contextmanager
def _store_errors(uri: str, wait: float) -> Iterator[None]:
    """Turn the errors of opening the store into one-line :class:`TrackingStoreError`."""
    try:
        yield
    except TrackingStoreError:
        raise
    except Exception as err:  # noqa: BLE001 - only store errors are translated, others re-raised
        clear = _store_error(uri, err, wait)
        if clear is None:
            raise
        raise clear from None


def init_store(uri: str, *, wait: float | None = None) -> str:
    """Create the tracking store behind ``uri`` once (schema migration under a file lock).

    Safe to call from many processes at once: the first creates/migrates the SQLite database while
    the others wait on ``<db>-lock``; later calls only open it. A store another process holds locked
    is waited for up to ``wait`` seconds in all (default :func:`store_wait`); then, or for a corrupt
    file, :class:`TrackingStoreError` says which file and what to do. Returns ``uri``.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    wait = store_wait() if wait is None else float(wait)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    with _lock_for(uri), _store_errors(uri, wait):
        deadline = time.monotonic() + wait
        if db is not None and db.is_file() and db.stat().st_size:
            retry(_probe_sqlite, db, deadline, attempts=10_000, max_wait=wait)
        client = MlflowClient(tracking_uri=uri)
        left = max(0.0, deadline - time.monotonic())
        retry(client.search_experiments, max_results=1, max_wait=left)  # creates and migrates the schema
    return uri


def get_or_create_experiment(name: str, uri: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, creating it (under the store lock)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise RuntimeError(
                f"MLflow experiment {name!r} is deleted in {uri}: restore it (mlflow experiments restore) "
                "or choose another mlflow.experiment"
            )
        return exp.experiment_id
    with _lock_for(uri):  # another process may have created it meanwhile
        exp = retry(client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        root = _artifact_root(uri)
        location = f"{root}/{name}" if root else None
        return retry(client.create_experiment, name, artifact_location=location)


# ------------------------------------------------------------------------------------------- runs
def truncate(value: Any, limit: int) -> str:
    """``str(value)`` cut to ``limit`` characters (ending in ``...[truncated]`` when cut)."""
    text = str(value)
    if len(text) <= limit:
        return text
    mark = "...[truncated]"
    return text[: limit - len(mark)] + mark


def common_tags(params: Params, root: str | Path = ".") -> dict[str, str]:
    """Tags every run of the study carries: git commit, study, data source, params digest."""
    from .runtime import git_commit

    return {
        "git_commit": git_commit(root),
        "study": params.study,
        "data_source": params.data.source,
        "params_digest": params.digest(),
    }


def log_params(params: Mapping[str, Any] | Params, skip: set[str] | tuple = ()) -> None:
    """Log every parameter flattened (``train.l1.lr``), in batches, values truncated safely.

    Keys in ``skip`` (already logged, e.g. by the run being resumed) are left out.
    """
    import mlflow
    from mlflow.entities import Param

    if not isinstance(params, Mapping):
        params = params.model_dump(mode="json")
    flat = flatten(dict(params))
    items = [Param(truncate(k, MAX_KEY), truncate(v, MAX_PARAM_VALUE)) for k, v in sorted(flat.items())]
    items = [p for p in items if p.key not in skip]
    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    for i in range(0, len(items), _BATCH):
        retry(client.log_batch, run_id, params=items[i : i + _BATCH])


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log ``metrics`` at ``step`` in one batch (non-finite values are logged as MLflow allows: NaN)."""
    import mlflow

    clean = {truncate(k, MAX_KEY): float(v) for k, v in metrics.items()}
    if clean:
        retry(mlflow.log_metrics, clean, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    import mlflow

    clean = {truncate(k, MAX_KEY): truncate(v, MAX_TAG_VALUE) for k, v in tags.items() if v is not None}
    if clean:
        retry(mlflow.set_tags, clean)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    retry(mlflow.log_artifact, str(path), artifact_path=artifact_path)


def register_model(name: str, artifact_path: str, tags: Mapping[str, Any] | None = None,
                   description: str | None = None) -> str:
    """Register the active run's ``artifact_path`` folder as a new version of registered model ``name``
    (created when absent); returns the version. ``models:/<name>/<version>`` then downloads that folder.

    (MLflow 3's ``mlflow.register_model`` accepts only logged models; our checkpoints are plain files, so
    the version is created from the artifact location with the client.)
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_model needs an active MLflow run")
    try:
        retry(client.create_registered_model, name)
    except MlflowException as err:
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = retry(client.create_model_version, name, source, run_id=run.info.run_id,
               tags={k: str(v) for k, v in (tags or {}).items() if v is not None}, description=description)
    return str(mv.version)


@contextlib.contextmanager
def start_run(
    params: Params,
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    root: str | Path = ".",
    log_all_params: bool = True,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with ``run_id``, resume) an MLflow run with the study's common tags and params.

    Handles the tracking URI (:func:`resolve_tracking_uri`), store creation (:func:`init_store`) and
    the experiment; ``tags`` are added to :func:`common_tags`. When ``run_id`` names a run that is not
    in the store (e.g. the database was deleted), a new run is started and the tag
    ``resumed_run_missing`` says so. The run ends FINISHED, or FAILED when the block raises.
    """
    import mlflow

    wait = store_wait()
    uri = init_store(resolve_tracking_uri(params, root), wait=wait)
    mlflow.set_tracking_uri(uri)
    with _store_errors(uri, wait):
        exp_id = get_or_create_experiment(experiment, uri)
    all_tags = {**common_tags(params, root), **dict(tags or {})}
    resumed = None
    if run_id is not None:
        try:
            resumed = retry(mlflow.MlflowClient().get_run, run_id)
        except Exception as err:  # noqa: BLE001 - mlflow raises MlflowException(RESOURCE_DOES_NOT_EXIST)
            if _is_transient(err):
                raise
            all_tags["resumed_run_missing"] = run_id
            run_id, resumed = None, None
    if mlflow.active_run() is not None:  # a stale run left by a crashed caller in this process
        mlflow.end_run("FAILED")
    if run_id is not None:
        active = retry(mlflow.start_run, run_id=run_id)
    else:
        active = retry(mlflow.start_run, experiment_id=exp_id, run_name=run_name)
    with active:
        if resumed is not None:
            all_tags = {**all_tags, **_param_changes(params, resumed)}
        set_tags(all_tags)
        if log_all_params:
            log_params(params, skip=set(resumed.data.params) if resumed is not None else ())
        yield active


def _param_changes(params: Params, run: Any) -> dict[str, str]:
    """Keys whose value differs from what a resumed run logged (MLflow forbids changing params)."""
    flat = {truncate(k, MAX_KEY): truncate(v, MAX_PARAM_VALUE) for k, v in flatten(params.model_dump(mode="json")).items()}
    changed = sorted(k for k, v in flat.items() if k in run.data.params and run.data.params[k] != v)
    return {"params_changed_on_resume": truncate(",".join(changed), MAX_TAG_VALUE)} if changed else {}
