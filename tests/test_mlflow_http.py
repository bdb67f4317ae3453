"""A sweep recorded to a real MLflow tracking server over HTTP (`mlflow server`, SQLite store, on
127.0.0.1): the progress output stays clean of MLflow's "View run ..." lines, and the runs carry
the jobs' own start/end times, names that tell them apart, and the jobs' files."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from circuitry.orchestrator.recorder import read_records
from circuitry.orchestrator.scheduler import Scheduler
from circuitry.orchestrator.spec import parse_spec

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-http")
    uri, port = f"sqlite:///{base / 'mlflow.db'}", _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    subprocess.run([str(BIN / "mlflow"), "db", "upgrade", uri], env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the store exists before the server
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", uri,
                             "--artifacts-destination", str(base / "mlartifacts"), "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (base / "server.log").read_text()[-2000:]
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and the workers it started, nothing else
        proc.wait(timeout=30)
        log.close()


SPEC = """
[sweep]
name = "http"
root = "{root}"
metrics_port = -1

[train]
task = "independence"
regime = ["vanilla", "bimt"]
steps = 40
width = 4
log_every = 20

[discover]
method = "acdc"
threshold = [0.01, 0.1]
"""


def test_http_tracking_is_quiet_and_runs_span_their_jobs(ray_local, mlflow_server, tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    spec = parse_spec(SPEC.format(root=tmp_path))
    out = Scheduler(spec, tracking_uri=mlflow_server, echo=print).run()  # progress on: a line per job
    assert (out.finished, out.failed, out.mlflow_error) == (6, 0, None)
    said = capfd.readouterr()
    text = said.out + said.err
    assert text.count("finished ") == 6, text  # the progress output is there ...
    assert "View run" not in text and "View experiment" not in text, text  # ... and MLflow's links are not

    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("http")
    runs = c.search_runs([exp.experiment_id], "tags.`circuitry.role` = 'job'")
    recs = read_records(spec.sweep_dir)
    assert len(runs) == 6
    for r in runs:
        rec = recs[r.data.tags["circuitry.job_id"]]
        dur = (r.info.end_time - r.info.start_time) / 1000
        assert abs(dur - rec["duration_seconds"]) <= max(0.1 * rec["duration_seconds"], 0.01), (dur, rec)
        assert abs(r.info.end_time / 1000 - rec["finished_at"]) <= 0.002
        # the job's files, uploaded to the artifact URI create_run returned (mlflow-artifacts:/...)
        assert {"job.json", *rec["sha256"]} <= {a.path for a in c.list_artifacts(r.info.run_id)}, rec["sha256"]
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(["vanilla s0 · independence", "bimt s0 · independence",
                            "acdc t=0.01 · vanilla s0 · independence", "acdc t=0.1 · vanilla s0 · independence",
                            "acdc t=0.01 · bimt s0 · independence", "acdc t=0.1 · bimt s0 · independence"])
    acdc = c.search_runs([exp.experiment_id], "tags.method = 'acdc' and tags.threshold = '0.1'")
    assert len(acdc) == 2 and {r.data.tags["regime"] for r in acdc} == {"vanilla", "bimt"}
