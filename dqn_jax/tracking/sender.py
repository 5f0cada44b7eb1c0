"""The background sender of one MLflow run: in order, never blocking play, through outages.

The play loop only puts operations (:mod:`dqn_jax.tracking.journal`) on a queue. A thread sends
them at most every ``flush_seconds``, metrics in batches. When the store cannot be
reached (connection refused, timeout, 5xx, a locked SQLite file) the operations stay in
memory, in order, and the thread tries again every ``RETRY_SECONDS``; the user is told
once when the store goes and once when it is back. A checkpoint's :meth:`Sender.flush`
during an outage appends what is kept to the run directory's unsent file instead of
waiting, and so does :meth:`Sender.close` if the store is still away at the end, with
one line giving the command that sends the file later. A value the store refuses (a bad
value, a deleted run) is dropped, counted and reported once.

Each MLflow HTTP call is bounded by ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (dqn_jax sets short defaults, see
:func:`dqn_jax.tracking.configure_http`), so no call blocks for minutes.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from pathlib import Path

from dqn_jax.tracking import journal
from dqn_jax.tracking.errors import is_transient, reason

log = logging.getLogger("dqn_jax.tracking")

RETRY_SECONDS = 5.0  # while the store is away, how often the sender tries again


class Sender:
    """Sends one run's operations from a background thread; see the module's docstring."""

    def __init__(self, client, run_id: str, tracking_uri: str, *, run_dir: str | Path | None,
                 flush_seconds: float):
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.flush_seconds = float(flush_seconds)
        self.error: BaseException | None = None  # the first refusal, if any
        self.failures = 0  # operations the store refused
        self.dropped_metrics = 0  # metric values that never reached the store
        self.send_cpu_seconds = 0.0  # CPU time spent sending: the tracker's cost to a run
        self.down_since: float | None = None  # monotonic time the store went away
        self._failed_at = 0.0  # monotonic time of the last try that found the store away
        self.unsent_file: Path | None = None  # where kept operations went, if they had to
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # the play loop only puts
        self._pending: collections.deque = collections.deque()  # taken, in order, not yet sent
        self._spooled = 0  # the first _spooled operations of _pending are in the unsent file
        self._file_was_there = False  # an earlier process's unsent file: kept for the import
        self._lock = threading.Lock()  # _pending and _spooled
        self._send_lock = threading.Lock()  # one sending thread at a time keeps the order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-sender", daemon=True)
        self._thread.start()

    def put(self, op: list) -> None:
        self._queue.put(op)

    def failed(self, what: str, exc: BaseException, metrics: int = 0) -> None:
        """A refusal: remembered, warned about once, never raised into the play loop."""
        self.failures += 1
        self.dropped_metrics += metrics
        if self.error is None:
            self.error = exc
            log.warning("MLflow: %s failed (%s: %s); training goes on, later failures are "
                        "counted and reported when the run finishes", what, type(exc).__name__, exc)

    # -- sending

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds if self.down_since is None
                            else max(self.flush_seconds, RETRY_SECONDS))
            self._wake.clear()
            if not self._stop.is_set():
                self.send_pending()

    def _take(self) -> None:
        """Move what the play loop queued to the pending list; values become floats here,
        off the play loop (a JAX scalar may still be computing when it is logged)."""
        with self._lock:
            while True:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    return
                if op[0] == "metric":
                    try:
                        op = ["metric", op[1], float(op[2]), op[3], op[4]]
                    except Exception as exc:
                        self.failed(f"converting metric {op[1]!r}", exc, 1)
                        continue
                self._pending.append(op)

    def send_pending(self, only_if_up: bool = False) -> bool:
        """Send everything pending, in order; False when the store is away (the rest is kept).

        ``only_if_up``: do not try while the store is known to be away (the lock may have
        been held by a try that just found it away).
        """
        with self._send_lock:
            if only_if_up and self.down_since is not None:
                return False
            started = time.thread_time()
            try:
                return self._send_all()
            finally:
                self.send_cpu_seconds += time.thread_time() - started

    def _send_all(self) -> bool:
        self._take()
        while True:
            with self._lock:
                if not self._pending:
                    break
                batch = journal.batch_at(list(itertools.islice(self._pending, journal.METRICS_PER_BATCH)))
            try:
                journal.send(self.client, self.run_id, batch)
            except Exception as exc:
                if is_transient(exc):
                    self._went_away(exc)
                    self._failed_at = time.monotonic()
                    return False
                self.failed(f"sending {batch[0][0]}", exc, sum(op[0] == "metric" for op in batch))
            else:
                if self.down_since is not None:
                    self._came_back()
            with self._lock:
                for _ in batch:
                    self._pending.popleft()
                self._spooled = max(0, self._spooled - len(batch))
        if self.unsent_file is not None and self._spooled == 0 and not self._file_was_there:
            self.unsent_file.unlink(missing_ok=True)  # everything it held has now been sent
            self.unsent_file = None
        return True

    def _went_away(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("MLflow: the tracking store at %s does not answer (%s); training goes on, "
                        "the values are kept and sent when it is back", self.tracking_uri,
                        reason(exc))

    def _came_back(self) -> None:
        with self._lock:
            kept = journal.counts(self._pending)
        log.warning("MLflow: the tracking store at %s is back after %.0f s; sending the %s kept",
                    self.tracking_uri, time.monotonic() - self.down_since, kept)
        self.down_since = None

    # -- checkpoints and the end of the run

    def flush(self) -> None:
        """Send what is queued now, in the caller's thread; while the store is away, append
        it to the unsent file instead (a crash then loses none of it) and return at once."""
        if self.send_pending(only_if_up=True):
            return
        self._take()
        self._spool()

    def persist(self) -> None:
        """What is queued, appended to the unsent file now (a local write, the store not
        waited on); the thread sends it at its usual time and removes the file once all is
        sent (sending at once would make many small batches, at a cost per batch).
        Sent twice after a crash between the two, a metric value is stored once by MLflow
        (same key, step, time and value), and params, tags and files are the same again."""
        if self.run_dir is None:
            self.flush()
            return
        self._take()
        self._spool()

    def _spool(self) -> int:
        """Append the pending operations not yet in the unsent file to it; returns how many."""
        with self._lock:
            new = list(itertools.islice(self._pending, self._spooled, None))
            if not new or self.run_dir is None:
                return 0
            try:
                if self.unsent_file is None:
                    self._file_was_there = journal.unsent_path(self.run_dir, self.run_id).exists()
                self.unsent_file = journal.append(self.run_dir, self.tracking_uri, self.run_id, new)
            except OSError as exc:
                self.failed("keeping the unsent values in the run directory", exc)
                return 0
            self._spooled = len(self._pending)
            return len(new)

    def close(self) -> None:
        """Stop the thread, send what is left once more, keep in a file what cannot be sent."""
        self._stop.set()
        self._wake.set()
        self._thread.join()  # bounded: each call it may be in is bounded by the HTTP timeouts
        # one more try, unless one has just failed (a server that hangs costs a whole budget)
        if time.monotonic() - self._failed_at > RETRY_SECONDS and self.send_pending():
            return
        self._take()
        self._spool()
        with self._lock:
            left = list(self._pending)
        if self.unsent_file is None:
            self.dropped_metrics += sum(op[0] == "metric" for op in left)
            log.warning("MLflow: the tracking store at %s did not come back; %s of run %s are lost",
                        self.tracking_uri, journal.counts(left), self.run_id)
            return
        with self.unsent_file.open() as kept:
            total = sum(1 for _ in kept) - 1
        log.warning("MLflow: the tracking store at %s did not come back; %d operations of run %s "
                    "(its metrics and final status) are kept in %s; send them when it is back with: %s",
                    self.tracking_uri, total, self.run_id, self.unsent_file,
                    journal.IMPORT_COMMAND.format(run_dir=self.run_dir))
