"""The MLflow record's shared schema (DESIGN §7): store location, tags and roles, paged search, SQLite retries.

The writer (tracking.py) and the reader (report/record.py) both go through here; only these
three modules import mlflow.
"""
from __future__ import annotations

import logging
import os
import random
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from mlflow.tracking import MlflowClient

from interventions.registry import AtlasError

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating the SQLite tables
TAG = "orchestrator."
ROLE_PARENT, ROLE_CHILD = "parent", "trial"
ROLE_ESTIMATE = "estimate"  # a screen's estimate of a grid point: never an exact result, never in the resume ledger
MODELS_TAG = f"{TAG}models"  # on the parent run: JSON {model: {n_layers, d_model, n_heads, n_params, dtype, weights}}
MODEL_FACTS = ("n_layers", "d_model", "n_heads", "n_params", "dtype", "weights")  # also params, one value per model


def model_facts(parent) -> dict[str, dict]:
    """model -> its facts as the parent run recorded them ({} for a sweep recorded before they were)."""
    import json

    return json.loads(parent.data.tags.get(MODELS_TAG, "{}"))


def store_dir() -> Path:
    return Path.cwd() / "mlruns"


def resolve_uri(cli_value: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's SQLite store under ./mlruns."""
    uri = cli_value or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_dir() / 'mlflow.db'}"
    if "://" not in uri or uri.startswith("file:"):
        where = "--tracking-uri" if cli_value else "MLFLOW_TRACKING_URI"
        raise AtlasError(f"{where}: {uri!r} is a bare file store, which MLflow 3 rejects; give a database or "
                         "server URI such as sqlite:////abs/path/mlflow.db or http://host:5000")
    return uri


def checked_store(cli_value: str | None = None) -> str:
    """The MLflow store to use (--tracking-uri, else $MLFLOW_TRACKING_URI, else the default), checked to answer before
    anything starts."""
    uri = resolve_uri(cli_value)
    check_store(uri, cli_value)
    return uri


def default_store(uri: str) -> bool:
    return uri == f"sqlite:///{store_dir() / 'mlflow.db'}"


def check_store(uri: str, cli_value: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast, before anything starts, on a store that cannot answer.

    An http(s) server must answer its /health endpoint within `timeout` (401/403 count: a
    server behind a login answered; a proxy's 404 or 502 does not); MLflow's own client would
    otherwise retry for minutes. A SQLite file's folder must exist (MLflow creates the file,
    never the folder).
    """
    where = "--tracking-uri" if cli_value else "MLFLOW_TRACKING_URI"
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError as exc:
            if exc.code not in (401, 403):
                raise AtlasError(f"{where}: no MLflow server answered at {uri} "
                                 f"(HTTP {exc.code} from /health)") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            reason = getattr(reason, "strerror", None) or reason  # 'Connection refused', not '[Errno 111] ...'
            raise AtlasError(f"{where}: no MLflow server answered at {uri} ({reason})") from None
    elif uri.startswith("sqlite:///") and not default_store(uri):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise AtlasError(f"{where}: folder {folder} of the SQLite store {uri} does not exist")


def locked(exc: Exception) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


class RetryOnLock:
    """An MlflowClient whose calls retry, with jittered backoff, when SQLite says 'database is locked'.

    Two sweeps writing one SQLite file take turns at its write lock; SQLite's own busy wait
    (5 s) can run out under load, and MLflow then raises. Every write the Tracker makes is one
    transaction that SQLite rolled back, so repeating it is safe.
    """

    def __init__(self, client: MlflowClient, attempts: int = 12) -> None:
        self._client, self._attempts = client, attempts

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            delay = 0.1
            for attempt in range(self._attempts):
                try:
                    return attr(*args, **kwargs)
                except Exception as exc:  # MlflowException or SQLAlchemy's OperationalError
                    if not locked(exc) or attempt == self._attempts - 1:
                        raise
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 3.0)

        return call


@contextmanager
def schema_lock(uri: str) -> Iterator[None]:
    """One process at a time makes its first contact with a SQLite store.

    The first MlflowClient on a new SQLite file creates its tables by running MLflow's
    migrations; two sweeps starting at once would run them interleaved and leave a broken
    schema ("table _alembic_tmp_tags already exists"). An exclusive flock on the store's folder
    serialises that step; later writes are ordinary transactions (see RetryOnLock).
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; start concurrent sweeps on a new store one after the other
        yield
        return
    fd = os.open(Path(uri.removeprefix("sqlite:///")).parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def seed_sqlite(uri: str) -> None:
    """A new SQLite store starts as a copy of an empty one whose tables this MLflow version's migrations made once
    (cached under the cache root), instead of running the migrations again: seconds of commits per new store. Call
    under `schema_lock`. The copy holds tables only; MLflow adds the Default experiment, with this store's
    artifact root, when it first opens it. Any failure leaves the file absent, for MLflow to create as before."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists() or not path.parent.is_dir():
        return
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        import shutil

        import mlflow

        shutil.copyfile(_template(f"mlflow-{mlflow.__version__}-tables.db"), part)
        os.replace(part, path)
    except Exception:  # a private MLflow call changed, the cache is read-only: MLflow migrates, as without the copy
        with suppress(OSError):
            part.unlink(missing_ok=True)


def _template(name: str) -> Path:
    """The cached empty store: made by MLflow's own table set-up on a file of its own, then renamed into place."""
    from interventions.packs import cache_root

    template = cache_root() / name
    if not template.exists():
        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables

        template.parent.mkdir(parents=True, exist_ok=True)
        part = template.with_name(f".{name}.{os.getpid()}.part")
        engine = sqlalchemy.create_engine(f"sqlite:///{part}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(part, template)
    return template


def search_all(client, experiment_id: str, filter_string: str, order_by=None):
    """Every run of the experiment that matches, page by page (one search returns at most 10,000)."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=10_000, page_token=token,
                                  order_by=order_by)
        yield from page
        token = page.token
        if not token:
            return


