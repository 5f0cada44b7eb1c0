"""Is the configured MLflow tracking store usable? Checked before anything is built or written.

An unreachable or malformed ``logger.tracking_uri`` is one line (:class:`ConfigError`)
within about 10 s, instead of MLflow's minutes of retries and a traceback:

* ``http(s)://``, databases and ``databricks``: one ``search_experiments`` call with no
  retry and a ``CHECK_SECONDS`` timeout, in a thread (a name lookup that hangs is not
  bound by the HTTP timeout);
* ``sqlite:///path`` (and the embedded store): the file is an SQLite database, or can be
  created; nothing is written;
* ``file://`` and plain paths: MLflow 3 refuses its file store unless
  ``MLFLOW_ALLOW_FILE_STORE=true``, so that is said first;
* any other scheme is named as unsupported, with the ones that work.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

from dqn_jax.config import ConfigError
from dqn_jax.tracking import store
from dqn_jax.tracking.errors import reason
from dqn_jax.tracking.http import HTTP_DEFAULTS

ALLOWED_URIS = ("use http(s)://host:port, sqlite:///path, postgresql://, mysql:// or databricks, "
                "or logger.tracking_uri=null for the embedded store, or logger=none")
DATABASES = ("postgresql", "mysql", "mssql")
CHECK_SECONDS = 5  # one try, no retries: a store that does not answer in time is an error


def check(uri: str, configured: str | None = None) -> None:
    """Raise ConfigError unless the store at ``uri`` (``configured``: logger.tracking_uri) answers."""
    given = f"logger.tracking_uri={configured}" if configured else "the embedded store"
    try:
        scheme = urlsplit(uri).scheme.lower().split("+")[0]
        port = urlsplit(uri).port  # ValueError when it is not a number
    except ValueError as err:
        raise ConfigError(f"{given}: malformed URI ({err}); {ALLOWED_URIS}") from None
    if scheme == "sqlite":
        _check_sqlite(given, uri)
    elif scheme in ("http", "https"):
        if not urlsplit(uri).hostname:
            raise ConfigError(f"{given}: no host in the URI; {ALLOWED_URIS}")
        _probe(uri, f"cannot reach the MLflow tracking server at {uri}",
               "start it or use logger.tracking_uri=null for the embedded store, or logger=none")
    elif scheme in (*DATABASES, "databricks"):
        _probe(uri, f"cannot use the MLflow tracking store {uri}",
               "check it or use logger.tracking_uri=null for the embedded store, or logger=none")
    elif scheme in ("", "file") and port is None:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise ConfigError(f"{given}: MLflow's file store is refused unless MLFLOW_ALLOW_FILE_STORE=true "
                              f"(it is in maintenance mode); {ALLOWED_URIS}")
        _probe(uri, f"cannot use the MLflow file store {uri}", ALLOWED_URIS)
    else:
        raise ConfigError(f"{given}: unsupported scheme '{scheme}'; {ALLOWED_URIS}")


def _check_sqlite(given: str, uri: str) -> None:
    path = Path(uri.removeprefix("sqlite:///")).expanduser()
    if path.is_dir():
        raise ConfigError(f"{given}: {path} is a directory, not an SQLite file")
    if path.exists():
        with open(path, "rb") as db:
            head = db.read(16)
        if head and head != b"SQLite format 3\x00":
            raise ConfigError(f"{given}: {path} is not an SQLite database")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"{given}: {path} cannot be written (permissions)")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{given}: cannot create {path} ({parent} is not a writable directory); "
                          "set paths.root or logger.tracking_uri")


def _probe(uri: str, what: str, advice: str) -> None:
    """One search_experiments call without retries, in a thread given CHECK_SECONDS + 3."""
    import mlflow.tracking  # noqa: F401 - here, not in the thread: the import's seconds are not the store's

    outcome: list = []

    def call() -> None:
        try:
            store.client(uri).search_experiments(max_results=1)
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    saved = {k: os.environ.get(k) for k in HTTP_DEFAULTS}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_SECONDS)})
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        thread = threading.Thread(target=call, name="mlflow-check", daemon=True)
        thread.start()
        thread.join(CHECK_SECONDS + 3)  # a name lookup that hangs is not bound by the HTTP timeout
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if not outcome:
        raise ConfigError(f"{what} (no answer within {CHECK_SECONDS + 3} s); {advice}")
    if outcome[0] is not None:
        why = reason(outcome[0], timed_out=f"no answer within {CHECK_SECONDS} s", limit=200)
        raise ConfigError(f"{what} ({why}); {advice}")
