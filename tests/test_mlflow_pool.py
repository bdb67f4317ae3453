"""MLflow logging on a pool of threads (orchestrator.mlflow_pool) against a real MLflow store:
every run logged exactly once, one run per job when a job is handed over twice at once, and the
experiment tagged for the UI's model-training view."""
from __future__ import annotations

import threading

import pytest

from mlflow.tracking import MlflowClient

from circuitry.orchestrator.mlflow_pool import LogPool
from circuitry.orchestrator.recorder import JOB_TAG, KIND_TAG, MODEL_TRAINING, Recorder, embedded_uri


def record(i: int) -> dict:
    return {"job_id": f"{i:016x}", "kind": "train", "label": f"independence/vanilla/s{i}", "status": "finished",
            "settings": {"task": "independence", "regime": "vanilla", "seed": i}, "figures": {"test_loss": 0.1 * i},
            "duration_seconds": 0.5, "finished_at": 1.7e9, "curve": [{"step": 0, "train_loss": 1.0, "test_loss": 1.0}]}


def job_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return exp, client.search_runs([exp.experiment_id], "tags.`circuitry.role` = 'job'", max_results=1000)


def test_pool_logs_every_run_once(tmp_path):
    uri = embedded_uri(tmp_path)
    rec = Recorder(tmp_path, "pool", uri, mlflow_threads=4)
    rec.start({})
    for i in range(24):
        rec.add(record(i))
    rec.add(record(3))  # the same job again while its first run may still be logging
    rec.close("FINISHED")
    assert rec.mlflow_error is None
    exp, runs = job_runs(uri, "pool")
    ids = sorted(r.data.tags[JOB_TAG] for r in runs if r.info.status == "FINISHED")
    assert ids == sorted(f"{i:016x}" for i in range(24))
    assert rec.logged == 25 and rec.backlog() == 0
    assert exp.tags[KIND_TAG] == MODEL_TRAINING


class SlowLogger:
    """Counts how many runs are logged at once."""

    def __init__(self):
        self.now = self.most = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.ended = None

    def log_job(self, rec, replace):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        self.release.wait(10)
        with self.lock:
            self.now -= 1
        return True

    def end(self, status):
        self.ended = status


def test_pool_runs_threads_at_once_and_counts_the_backlog():
    logger = SlowLogger()
    pool = LogPool(lambda: logger, threads=3, on_error=lambda e: None)
    for i in range(7):
        pool.put((record(i), True))
    deadline = threading.Event()
    while logger.now < 3 and not deadline.wait(0.01):
        pass
    assert pool.backlog() == 7  # 3 being logged, 4 queued
    logger.release.set()
    pool.close("FINISHED")
    assert logger.most == 3 and pool.logged == 7 and pool.backlog() == 0 and logger.ended == "FINISHED"


def test_first_failure_stops_logging_once():
    errors = []

    class Failing(SlowLogger):
        def log_job(self, rec, replace):
            raise ConnectionError("server went away")

    pool = LogPool(Failing, threads=4, on_error=errors.append)
    for i in range(10):
        pool.put((record(i), True))
    pool.close("FINISHED")
    assert len(errors) == 1 and pool.failed and pool.backlog() == 0 and pool.logged == 0


def test_ui_url_opens_the_sweep_in_the_model_training_view(tmp_path):
    from circuitry.orchestrator.cli_sweep import _experiment_id
    from circuitry.orchestrator.recorder import ui_url

    uri = embedded_uri(tmp_path)
    rec = Recorder(tmp_path, "ui", uri, mlflow_threads=1)
    rec.start({})
    rec.close("FINISHED")
    exp_id = _experiment_id(uri, "ui")
    assert exp_id == MlflowClient(uri).get_experiment_by_name("ui").experiment_id
    # the query goes inside the hash route: MLflow's UI reads it there, not before the '#'
    assert ui_url("http://127.0.0.1:5000", exp_id) == \
        f"http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning"
    assert _experiment_id(uri, "no such sweep") is None


def test_sync_logs_through_the_pool_with_every_param_metric_and_file(tmp_path, monkeypatch):
    """`circuitry sync` logs a sweep's runs on the pool, each job once, with the params, metrics
    and files a sweep logs; uploads go to the run's artifact URI from create_run, never through a
    lookup of the whole run (the get_run MlflowClient.log_artifact makes, a request per run)."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient
    from tests.test_sweep_safety import store_sweep

    from circuitry.orchestrator.backfill import sync

    spec, d = store_sweep(tmp_path, seeds=range(6))
    uri = embedded_uri(d)

    def no_lookup(self, run_id):
        raise AssertionError("a run looked up while logging")

    monkeypatch.setattr(TrackingServiceClient, "get_run", no_lookup)
    assert sync(d, "s", uri, threads=3) == (6, 0, 0)
    monkeypatch.undo()
    assert sync(d, "s", uri, threads=3) == (0, 6, 0)  # no duplicates
    exp, runs = job_runs(uri, "s")
    assert sorted(r.data.tags[JOB_TAG] for r in runs) == sorted(j.id for j in spec.jobs)
    client = MlflowClient(uri)
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["regime"] == "vanilla"
        assert r.data.metrics["test_loss"] == 0.1 and r.data.tags["kind"] == "train"
        assert {"model.pt", "metrics.json", "job.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}


def test_sync_raises_the_first_mlflow_failure(tmp_path):
    from tests.test_sweep_safety import store_sweep

    from circuitry.orchestrator.backfill import sync

    _, d = store_sweep(tmp_path, seeds=(0, 1))
    with pytest.raises(Exception, match="127.0.0.1:9"):
        sync(d, "s", "http://127.0.0.1:9", threads=2)


def test_more_threads_than_mlflows_http_pool_keep_their_connections(monkeypatch):
    import os

    from circuitry.orchestrator.mlflow_pool import size_http_pool

    monkeypatch.setenv("MLFLOW_HTTP_POOL_MAXSIZE", "0")
    monkeypatch.delenv("MLFLOW_HTTP_POOL_MAXSIZE")  # absent again after the test (monkeypatch restores it)
    size_http_pool(8)
    assert "MLFLOW_HTTP_POOL_MAXSIZE" not in os.environ  # MLflow's 10 are enough
    size_http_pool(16)
    assert os.environ["MLFLOW_HTTP_POOL_MAXSIZE"] == "16"
