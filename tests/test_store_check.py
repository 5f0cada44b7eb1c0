"""tracking.check_store: a store that cannot be used is one line, within about 10 s."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dqn_jax import config
from dqn_jax.config import ConfigError
from dqn_jax.tracking import check_store
from tests.conftest import free_port

# MLflow's own retries take minutes against a store that is not there; the check answers in
# seconds (a hung server: its 5 s timeout). 30 s stays far from minutes on a busy machine.
LIMIT_SECONDS = 30


def cfg_for(root: Path, uri: str | None, logger: str = "mlflow"):
    cfg = OmegaConf.structured(config.Config)
    cfg.paths.root = str(root)
    cfg.logger.name = logger
    cfg.logger.tracking_uri = uri
    return cfg


def rejected(root: Path, uri: str | None) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_store(cfg_for(root, uri))
    seconds = time.monotonic() - started
    message = str(err.value)
    assert "\n" not in message and seconds < LIMIT_SECONDS, (message, seconds)
    return message, seconds


def test_an_unreachable_server_is_one_line_within_seconds(tmp_path):
    message, _ = rejected(tmp_path, "http://127.0.0.1:9")
    assert message == ("cannot reach the MLflow tracking server at http://127.0.0.1:9 (connection refused); "
                       "start it or use logger.tracking_uri=null for the embedded store, or logger=none")
    port = free_port()
    message, _ = rejected(tmp_path, f"https://127.0.0.1:{port}")
    assert f"at https://127.0.0.1:{port} (connection refused)" in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_server_that_never_answers_is_cut_short(tmp_path):
    """A port that accepts connections but never answers (a hung server, a firewall)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        message, seconds = rejected(tmp_path, f"http://127.0.0.1:{port}")
    assert "(no answer within 5 s)" in message and seconds >= 4, (message, seconds)


@pytest.mark.parametrize(("uri", "expected"), [
    ("ftp://x/y", "logger.tracking_uri=ftp://x/y: unsupported scheme 'ftp'; use http(s)://host:port, "
                  "sqlite:///path, postgresql://, mysql:// or databricks, or logger.tracking_uri=null "
                  "for the embedded store, or logger=none"),
    ("http://127.0.0.1:port", "logger.tracking_uri=http://127.0.0.1:port: malformed URI (Port could not"),
    ("http:///path", "logger.tracking_uri=http:///path: no host in the URI; use http(s)://"),
    ("file:///tmp/mlruns", "logger.tracking_uri=file:///tmp/mlruns: MLflow's file store is refused unless "
                           "MLFLOW_ALLOW_FILE_STORE=true"),
    ("mlruns", "logger.tracking_uri=mlruns: MLflow's file store is refused"),
])
def test_malformed_or_unsupported_uris_are_named(tmp_path, uri, expected, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    message, _ = rejected(tmp_path, uri)
    assert message.startswith(expected) or expected in message, message


def test_an_unknown_host_is_named(tmp_path, monkeypatch):
    """The resolver's answer for a name that does not exist (stood in for here: whether a
    lookup of an unknown name fails at once or after the resolver's own timeout depends on
    the machine's DNS, and the mapping of its error is what is under test)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    message, _ = rejected(tmp_path, "http://no-such-host.invalid:5000")
    assert message == ("cannot reach the MLflow tracking server at http://no-such-host.invalid:5000 (unknown host); "
                       "start it or use logger.tracking_uri=null for the embedded store, or logger=none")


def test_sqlite_stores(tmp_path):
    check_store(cfg_for(tmp_path / "new" / "project", None))  # the embedded store: can be created
    assert not (tmp_path / "new").exists()  # ... and was not
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello")
    message, _ = rejected(tmp_path, f"sqlite:///{not_a_db}")
    assert message == f"logger.tracking_uri=sqlite:///{not_a_db}: {not_a_db} is not an SQLite database"
    message, _ = rejected(tmp_path, f"sqlite:///{tmp_path}")
    assert message.endswith(f"{tmp_path} is a directory, not an SQLite file")


def test_logger_none_checks_nothing(tmp_path):
    check_store(cfg_for(tmp_path, "ftp://x/y", logger="none"))
