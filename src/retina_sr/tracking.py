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
* **Experiments** are created as model-training experiments (tag ``mlflow.experimentKind`` =
  ``custom_model_development``, the value MLflow 3's UI writes when a user sets the experiment type);
  an existing experiment without the tag gets it. MLflow 3.17's UI itself decides the layout by its
  "GenAI / Model training" switch (default GenAI, remembered per browser): open it once with
  :data:`UI_QUERY` (``?workflowType=machine_learning``) or click "Model training" to land on the runs
  table.
* **One study run, its stages as children.** Each DVC/Snakemake stage is its own process, so the
  study's parameters go on ONE parent run per experiment and study key (:func:`study_key`: study name
  and params digest), found by its tags or created by the first stage that needs it
  (:func:`get_or_create_study_run`; race-safe: a file lock serialises find-or-create on one machine;
  across machines the parents are settled to the earliest one, its duplicates' children moved under it
  and the duplicates deleted, so concurrent jobs never end up under two). The
  stages (:func:`start_run`) are child runs with only what differs (their tags, ``own_params``,
  metrics, models): the compare view is not 100 identical parameters, and files that belong to the
  whole study (comparison panels) go once on the parent (``log_artifact(..., run_id=study_run_id())``).
* **Runs.** :func:`start_run` is the one context manager used by training and evaluation: it sets the
  URI, creates the store and experiment, starts (or resumes) the child run with the common tags (git
  commit, study, data source, params digest), values truncated to MLflow's limits.
* **Models, images, datasets.** :func:`log_model` logs an MLflow pyfunc model (with a signature and an
  input example) and registers it; :func:`log_image` logs an image at a step (the UI's step slider);
  :func:`log_dataset` records an input data set (source, digest, schema) in the run's inputs.

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
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "UI_QUERY",
    "STUDY_KEY_TAG",
    "ROLE_TAG",
    "TrackingStoreError",
    "store_wait",
    "resolve_tracking_uri",
    "sqlite_path",
    "init_store",
    "get_or_create_experiment",
    "study_key",
    "get_or_create_study_run",
    "study_run_id",
    "start_run",
    "common_tags",
    "log_params",
    "log_metrics",
    "set_tags",
    "log_artifact",
    "log_image",
    "log_dataset",
    "log_model",
    "register_model",
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
#: the experiment tag MLflow 3's UI reads to choose its layout (mlflow/server/js: ExperimentKind), and the
#: value of a classic model-training experiment: the UI opens on the runs table, not on GenAI traces
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
#: query string that opens MLflow 3.17's UI in its "Model training" layout (runs table), e.g.
#: http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning (the UI's own switch otherwise)
UI_QUERY = "?workflowType=machine_learning"
#: tags that find a study's parent run and tell parents from stage runs
STUDY_KEY_TAG = "retina_sr.study_key"
ROLE_TAG = "retina_sr.role"
PARENT_TAG = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID

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


def _study_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """The lock around finding-or-creating a study's parent run: beside an SQLite store, else a file in
    the temporary folder named after the URI (serialises the jobs of one machine on any store)."""
    db = sqlite_path(uri)
    if db is not None:
        return _file_lock(db.with_name(db.name + "-lock"))
    import hashlib
    import tempfile

    tag = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return _file_lock(Path(tempfile.gettempdir()) / f"retina-sr-mlflow-{tag}.lock")


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
    """The id of experiment ``name`` in the store at ``uri``, creating it (under the store lock) as a
    model-training experiment (:data:`EXPERIMENT_KIND_TAG`); an existing one without that tag gets it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = retry(client.get_experiment_by_name, name)
    if exp is None:
        with _lock_for(uri):  # another process may have created it meanwhile
            exp = retry(client.get_experiment_by_name, name)
            if exp is None:
                root = _artifact_root(uri)
                location = f"{root}/{name}" if root else None
                try:
                    return retry(client.create_experiment, name, artifact_location=location,
                                 tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
                except Exception as err:  # noqa: BLE001 - a job on another machine (no shared lock) was first
                    if not _already_exists(err):
                        raise
                    exp = retry(client.get_experiment_by_name, name)
    if exp is None:  # created by another job and gone again before it could be read
        raise TrackingStoreError(f"MLflow experiment {name!r} could not be created or found in {uri}: rerun")
    if exp.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow experiment {name!r} is deleted in {uri}: restore it (mlflow experiments restore) "
            "or choose another mlflow.experiment"
        )
    if exp.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        retry(client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return exp.experiment_id


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


def _param_items(params: Mapping[str, Any] | Params) -> list[Any]:
    """Flattened ``Param`` entities (``train.l1.lr``), keys and values truncated to MLflow's limits."""
    from mlflow.entities import Param

    if not isinstance(params, Mapping):
        params = params.model_dump(mode="json")
    flat = flatten(dict(params))
    return [Param(truncate(k, MAX_KEY), truncate(v, MAX_PARAM_VALUE)) for k, v in sorted(flat.items())]


def _log_batches(client: Any, run_id: str, *, params: list | None = None,
                 tags: Mapping[str, Any] | None = None) -> None:
    """Params and tags of run ``run_id`` in batches of MLflow's maximum, retried on lock contention."""
    from mlflow.entities import RunTag

    items = list(params or [])
    for i in range(0, len(items), _BATCH):
        retry(client.log_batch, run_id, params=items[i : i + _BATCH])
    tag_items = [RunTag(truncate(k, MAX_KEY), truncate(v, MAX_TAG_VALUE)) for k, v in (tags or {}).items()
                 if v is not None]
    for i in range(0, len(tag_items), _BATCH):
        retry(client.log_batch, run_id, tags=tag_items[i : i + _BATCH])


def log_params(params: Mapping[str, Any] | Params, skip: set[str] | tuple = ()) -> None:
    """Log every parameter flattened (``train.l1.lr``) on the active run, in batches, values truncated.

    Keys in ``skip`` (already logged, e.g. by the run being resumed) are left out.
    """
    import mlflow

    items = [p for p in _param_items(params) if p.key not in skip]
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_params: no active MLflow run (start one first)")
    _log_batches(mlflow.MlflowClient(), run.info.run_id, params=items)


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


def log_artifact(path: str | Path, artifact_path: str | None = None, *, run_id: str | None = None) -> None:
    """Log the file ``path`` into the active run, or into run ``run_id`` (e.g. :func:`study_run_id`:
    files of the whole study, logged once on the parent rather than in every child)."""
    import mlflow

    if run_id is None:
        retry(mlflow.log_artifact, str(path), artifact_path=artifact_path)
    else:
        retry(mlflow.MlflowClient().log_artifact, run_id, str(path), artifact_path=artifact_path)


def log_image(key: str, image: Any, step: int) -> None:
    """Log ``image`` (``HxWx3`` uint8 array, or a PIL image) as image ``key`` at ``step``: the run's
    images then have a step slider in the MLflow UI (e.g. the validation grid at every validation step)."""
    import mlflow
    import numpy as np

    if isinstance(image, np.ndarray) and image.dtype != np.uint8:
        raise ValueError(f"log_image({key!r}): give a uint8 image (0..255), not {image.dtype}")
    retry(mlflow.log_image, image, key=key, step=int(step), synchronous=True)


def log_dataset(
    source: str | Path,
    name: str,
    context: str,
    *,
    digest: str | None = None,
    table: Any = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Record an input data set of the active run (the run's *Datasets used*): where it lies
    (``source``, a local path), ``name``, a ``digest`` (e.g. the data hash the stage keyed its work on)
    and, with ``table`` (a pandas DataFrame such as the processed manifest), its schema and row count.
    ``context`` says what for: ``training``, ``validation``, ``evaluation``."""
    import warnings

    import mlflow
    from mlflow.data.dataset import Dataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.pandas_dataset import from_pandas

    uri = str(Path(source).resolve())
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore", UserWarning)
        src = resolve_dataset_source(uri)
        if table is not None:
            ds: Dataset = from_pandas(table, source=src, name=name, digest=digest)
        else:  # Dataset marks `profile` abstract without ABCMeta; MetaDataset is instantiable (mlflow's own use)
            ds = MetaDataset(src, name=name, digest=digest)  # type: ignore[abstract]
    retry(mlflow.log_input, ds, context=context, tags=dict(tags) if tags else None)


# --------------------------------------------------------------------------------- the study's run
def study_key(params: Params) -> str:
    """What identifies one study's parent run: the study name and the digest of all its parameters
    (a changed parameter is another study run; the commit is a tag, code changes alone do not split it)."""
    return f"{params.study}-{params.digest()}"


def _study_run_name(params: Params) -> str:
    return f"study {params.study} {params.digest()[:8]}"


def _find_study_runs(client: Any, exp_id: str, key: str) -> list[Any]:
    """The live parents of ``key`` in ``exp_id``, the elected one (earliest created, then smallest id) first."""
    flt = f"tags.`{STUDY_KEY_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'study'"
    runs = retry(client.search_runs, [exp_id], filter_string=flt, max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def get_or_create_study_run(params: Params, experiment_id: str, uri: str, root: str | Path = ".") -> str:
    """The id of the study's parent run in ``experiment_id`` (study, data source, commit, every
    parameter), found by :func:`study_key` or created.

    Race-safe for the parallel jobs of a workflow: find-or-create runs under a file lock (beside an
    SQLite store, or in the temporary folder for a server URI), so the jobs of one machine create one
    parent. Jobs on several machines sharing a server cannot share that lock: a job that created a
    parent waits :data:`SETTLE_S`, then every job keeps the same one of the parents it sees (the
    earliest created) and the others are deleted (:func:`_settle_study_runs`); each stage settles
    again when it ends (:func:`start_run`), so a parent created unseen in between is merged too.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    key = study_key(params)
    with _study_lock(uri):
        found = _find_study_runs(client, experiment_id, key)
        if found:
            return found[0].info.run_id
        tags = {**common_tags(params, root), STUDY_KEY_TAG: key, ROLE_TAG: "study",
                "mlflow.note.content": f"The {params.study} study's parameters (digest {params.digest()}); "
                "its stages are the child runs."}
        run = retry(client.create_run, experiment_id, run_name=_study_run_name(params),
                    tags={k: truncate(v, MAX_TAG_VALUE) for k, v in tags.items()})
        run_id = run.info.run_id
        try:
            _log_batches(client, run_id, params=_param_items(params))
        finally:
            retry(client.set_terminated, run_id, "FINISHED")
    if sqlite_path(uri) is None:  # no lock shared with other machines: let their parents become visible
        time.sleep(SETTLE_S)
    return _settle_study_runs(client, experiment_id, key) or run_id


#: seconds a job that created a study parent on a server store waits before choosing among the parents
SETTLE_S = 1.0


def _settle_study_runs(client: Any, experiment_id: str, key: str) -> str | None:
    """Keep one parent of ``key``: the earliest created; the children of any other are moved under it
    (their ``mlflow.parentRunId`` tag) and it is deleted (its parameters are the same: same key)."""
    found = _find_study_runs(client, experiment_id, key)
    if not found:
        return None
    winner = found[0].info.run_id
    for loser in found[1:]:
        lid = loser.info.run_id
        children = retry(client.search_runs, [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{lid}'",
                         max_results=1000)
        for child in children:
            retry(client.set_tag, child.info.run_id, PARENT_TAG, winner)
        retry(client.delete_run, lid)  # deleting a deleted run (another job was first) is no error
    return winner


def study_run_id(run: Any = None) -> str | None:
    """The parent (study) run of ``run`` (default: the active run), or ``None`` when it has none."""
    import mlflow

    if run is None:
        active = mlflow.active_run()
        if active is None:
            return None
        run = retry(mlflow.MlflowClient().get_run, active.info.run_id)
    return run.data.tags.get(PARENT_TAG)


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
    own_params: Mapping[str, Any] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with ``run_id``, resume) a stage's MLflow run, a child of the study's parent run.

    Handles the tracking URI (:func:`resolve_tracking_uri`), store creation (:func:`init_store`), the
    experiment and the parent (:func:`get_or_create_study_run`, which holds every parameter when
    ``log_all_params``). The child carries :func:`common_tags` plus ``tags`` and only its own
    parameters, ``own_params`` (flattened), so that comparing stages shows what differs. When ``run_id``
    names a run that is not in the store (e.g. the database was deleted), a new run is started and the
    tag ``resumed_run_missing`` says so. The run ends FINISHED, or FAILED when the block raises.
    """
    import mlflow

    wait = store_wait()
    uri = init_store(resolve_tracking_uri(params, root), wait=wait)
    mlflow.set_tracking_uri(uri)
    with _store_errors(uri, wait):
        exp_id = get_or_create_experiment(experiment, uri)
    all_tags = {**common_tags(params, root), ROLE_TAG: "stage", **dict(tags or {})}
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
    if resumed is not None:
        active = retry(mlflow.start_run, run_id=run_id)
    else:
        parent = get_or_create_study_run(params, exp_id, uri, root) if log_all_params else None
        active = retry(mlflow.start_run, experiment_id=exp_id, run_name=run_name, parent_run_id=parent)
    with active:
        client = mlflow.MlflowClient()
        own = _param_items(own_params) if own_params else []
        if resumed is not None:
            all_tags = {**all_tags, **_param_changes(params, resumed)}
            own = [p for p in own if p.key not in resumed.data.params]
        _log_batches(client, active.info.run_id, params=own, tags=all_tags)
        ok = False
        try:
            yield active
            ok = True
        finally:
            if log_all_params:  # a parent made unseen by a job on another machine: merge it now
                try:
                    _settle_study_runs(client, exp_id, study_key(params))
                except Exception:  # noqa: BLE001 - never hide the stage's own error behind this one
                    if ok:
                        raise


def _param_changes(params: Params, run: Any) -> dict[str, str]:
    """Keys whose value differs from what a resumed run was started with (its parent's parameters, or
    its own for a run logged before runs had parents; MLflow forbids changing a logged param)."""
    import mlflow

    logged = run.data.params
    parent = run.data.tags.get(PARENT_TAG)
    if parent:
        try:
            logged = retry(mlflow.MlflowClient().get_run, parent).data.params
        except Exception as err:  # noqa: BLE001 - a deleted parent: nothing to compare with
            if _is_transient(err):
                raise
            logged = {}
    flat = {p.key: p.value for p in _param_items(params)}
    changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
    return {"params_changed_on_resume": truncate(",".join(changed), MAX_TAG_VALUE)} if changed else {}


# -------------------------------------------------------------------------------------- models
def log_model(
    python_model: Any,
    artifacts: Mapping[str, str | Path],
    *,
    signature: Any,
    input_example: Any,
    name: str = "model",
    pip_requirements: list[str] | None = None,
    registered_model: str | None = None,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> tuple[str, str | None]:
    """Log ``python_model`` (an ``mlflow.pyfunc.PythonModel``, or the path of a "models from code" script) with its ``artifacts`` (files it loads,
    e.g. ``{"checkpoint": "models/l1/model.pt"}``), ``signature`` and ``input_example`` into the active
    run as an MLflow model, and register it as a new version of ``registered_model`` (when given) with
    ``tags`` and ``description``. Returns ``(model_uri, version)`` (``version`` ``None`` unregistered).

    ``pip_requirements`` default to this installation's retina-sr and torch, given explicitly so that
    MLflow does not re-load the model in a subprocess to guess them.
    """
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_model needs an active MLflow run (inside tracking.start_run)")
    if pip_requirements is None:
        pip_requirements = _own_requirements()
    clean_tags = {truncate(k, MAX_KEY): truncate(v, MAX_TAG_VALUE) for k, v in (tags or {}).items() if v is not None}
    info = retry(mlflow.pyfunc.log_model, name=name, python_model=python_model,
                 artifacts={k: str(v) for k, v in artifacts.items()}, signature=signature,
                 input_example=input_example, pip_requirements=pip_requirements, tags=clean_tags or None)
    if registered_model is None:
        return info.model_uri, None
    version = _register(info.model_uri, registered_model, clean_tags, description)
    return info.model_uri, version


def _own_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("retina-sr", "torch"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def _already_exists(err: BaseException) -> bool:
    return "RESOURCE_ALREADY_EXISTS" in str(err) or "already exists" in str(err).lower()


def _register(source: str, name: str, tags: Mapping[str, str], description: str | None) -> str:
    """A new version of registered model ``name`` (created when absent) from ``source``; returns it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        retry(client.create_registered_model, name,
              description="retina-sr LapSRN models: `retina-sr zoom --model models:/<name>/<version>`")
    except MlflowException as err:
        if not _already_exists(err):
            raise
    run = mlflow.active_run()
    mv = retry(client.create_model_version, name, source, run_id=run.info.run_id if run else None,
               tags=dict(tags), description=description)
    return str(mv.version)


def register_model(name: str, artifact_path: str, tags: Mapping[str, Any] | None = None,
                   description: str | None = None) -> str:
    """Register the active run's ``artifact_path`` folder (plain files, e.g. ``checkpoint/model.pt``)
    as a new version of registered model ``name``; returns the version. Prefer :func:`log_model`, which
    logs an MLflow model with a signature first; ``models:/<name>/<version>`` works for both."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_model needs an active MLflow run")
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    return _register(source, name, {k: str(v) for k, v in (tags or {}).items() if v is not None}, description)
