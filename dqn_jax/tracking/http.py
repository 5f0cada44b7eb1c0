"""How every MLflow call of this process talks HTTP: a short budget, and quiet retries.

Imports nothing of the package, so every tracking module can use it.
"""

from __future__ import annotations

import logging
import os

# Short HTTP timeouts and few retries: one MLflow call (about 3 s against a server that
# refuses connections) never blocks for minutes; the sender retries itself. The
# environment wins: set these variables to change the budget.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def configure_http() -> None:
    """Short MLflow HTTP timeouts and retries (unless the environment sets them), and no
    urllib3 warning per retry: an outage would print one every few seconds."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
