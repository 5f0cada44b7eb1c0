"""What an exception means to tracking: a run's status, a busy store, a few words of why.

* :func:`run_status`: the status a run closes with after an exception (or none);
* :func:`is_transient`: the store was away or busy (keep the values, try again);
* :func:`reason`: a few words for a log line or an error message, from one table of
  MLflow's, ``requests``' and SQLite's messages.

Imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Iterator

# MLflow error codes that mean "try again later", not "this request is wrong"
TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
                   "DEADLINE_EXCEEDED", "ABORTED"}
TIMED_OUT = "timed out"
# (text found anywhere in the exception chain, the words that say it); the first match wins
REASONS = (("Connection refused", "connection refused"),
           ("Name or service not known", "unknown host"),
           ("Temporary failure in name resolution", "unknown host"),
           ("nodename nor servname", "unknown host"),
           (TIMED_OUT, TIMED_OUT),
           ("database is locked", "database is locked"),
           ("error code 401", "HTTP 401: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
           ("error code 403", "HTTP 403: this user may not use the server"),
           ("error code 404", "HTTP 404: no MLflow tracking API at this address"),
           ("failed with error code 50", "server error"))  # a 5xx answer with no JSON body


class RunStopped(RuntimeError):
    """A run stopped by a signal with its checkpoint saved: it ends KILLED, not FAILED."""


def run_status(error: BaseException | None) -> str:
    """The status a run ends with: FINISHED without ``error``; KILLED when it was stopped
    (Ctrl-C or a stop signal: ``KeyboardInterrupt``, or a :class:`RunStopped`); else FAILED."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, (KeyboardInterrupt, RunStopped)) else "FAILED"


def chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, each once."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(exc: BaseException) -> bool:
    """True when the store could not be reached or was busy: keep the values and retry.

    MLflow wraps a connection failure, a timeout or retries run out in an
    ``MlflowException`` whose context is the ``requests`` error; a locked SQLite store
    is an ``OperationalError`` (error code TEMPORARILY_UNAVAILABLE).
    """
    import requests
    import sqlalchemy.exc

    for error in chain(exc):
        if isinstance(error, (requests.exceptions.RequestException, ConnectionError, TimeoutError,
                              sqlalchemy.exc.OperationalError)):
            return True
        if getattr(error, "error_code", None) in TRANSIENT_CODES:
            return True
        if "failed with error code 50" in str(error):  # a 5xx answer with no JSON body
            return True
    return False


def reason(exc: BaseException, timed_out: str = TIMED_OUT, limit: int = 300) -> str:
    """A few words on why a call failed, from the whole exception chain (MLflow's messages
    run to 500 characters); else the error's first line, at most ``limit`` characters.
    ``timed_out``: the words for a timeout (a check says how long it waited)."""
    text = " ".join(str(e) for e in chain(exc))
    for needle, words in REASONS:
        if needle in text:
            return timed_out if needle == TIMED_OUT else words
    return first_line(exc, limit)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``"Type: the message's first line"``, at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:limit]
