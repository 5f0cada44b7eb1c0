"""``make ui``: the addresses it prints and the ``mlflow ui`` it starts, answering on them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, answers, free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv/bin/mlflow").exists(),
                                reason="needs GNU make and the project's virtual environment (make install)")


def search_runs(base: str, experiment_id: str) -> list[dict]:
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["runs"]


def test_make_ui_serves_the_store_on_the_printed_addresses(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    experiment_id = client.create_experiment("dqn_jax/breakout")
    made = {client.create_run(experiment_id, run_name=name).info.run_id: name for name in ("first", "second")}
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), "ui", f"STORE={tmp_path}",
                                    f"PORT={port}"], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/health"), "mlflow ui", timeout=180, process=process)
        printed = re.findall(r"(http://\S+)", log.read_text())
        assert printed[0] == f"{base}/#/experiments?workflowType=machine_learning"
        assert printed[1] == (f"{base}/#/experiments/{experiment_id}/runs"
                              "?workflowType=machine_learning&compareRunsMode=CHART")
        for address in printed:  # the page behind each address (the part after # is the browser's)
            with urllib.request.urlopen(address.split("#")[0], timeout=10) as page:
                assert page.status == 200 and b"<html" in page.read().lower()
        runs = search_runs(base, experiment_id)
        assert {r["info"]["run_id"]: r["info"]["run_name"] for r in runs} == made
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
