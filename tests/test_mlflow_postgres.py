"""The parallel MLflow logging on a PostgreSQL tracking store (a throwaway cluster, as
benchmarks/mlflow_rate.py starts it): concurrent loggers, every run once. Skipped where the
PostgreSQL server binaries (apt-get install postgresql) or psycopg2 (the `bench` extra) are absent."""
from __future__ import annotations

import glob
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
    pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)", allow_module_level=True)
pytest.importorskip("psycopg2", reason="psycopg2 absent (pip install -e '.[bench]')")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from mlflow_rate import Postgres, train_record  # noqa: E402

from circuitry.orchestrator.recorder import JOB_TAG, Recorder  # noqa: E402


def test_pool_logs_every_run_once_on_postgresql(tmp_path):
    from mlflow.tracking import MlflowClient

    base = Path(tempfile.mkdtemp(prefix="circuitry-pg-"))  # under /tmp: the postgres user must reach it
    pg = Postgres(base / "pg")
    try:
        sweep = tmp_path / "sweep"
        sweep.mkdir()
        rec = Recorder(sweep, "pg", pg.uri, mlflow_threads=4)
        rec.start({})
        records = [train_record(i, sweep, artifacts=False) for i in range(16)]
        for r in records:
            rec.add(r)
        rec.close("FINISHED")
        assert rec.mlflow_error is None
        client = MlflowClient(pg.uri)
        exp = client.get_experiment_by_name("pg")
        runs = client.search_runs([exp.experiment_id], "tags.`circuitry.role` = 'job'", max_results=100)
        assert sorted(r.data.tags[JOB_TAG] for r in runs) == sorted(r["job_id"] for r in records)
        assert all(r.info.status == "FINISHED" for r in runs)
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
