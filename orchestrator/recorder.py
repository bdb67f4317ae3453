"""Recording a sweep: `jobs.parquet` (the local source of truth, one row per job with all its
figures) and MLflow (one experiment per sweep, a parent run for the sweep, a child run per job).

Only the driver records; workers return their records (and files, which orchestrator.store writes
before they are recorded here). MLflow calls run on background threads (a dispatcher and a pool
of `mlflow_threads` loggers, each run's calls in order, different runs at once: a run is a few
round trips to the tracking server, so one thread leaves the server idle while it waits),
so a slow or unreachable tracking server never stalls the sweep: the first failure is reported
once (naming the tracking URI), MLflow is switched off for the rest of the sweep, and
`circuitry sync SWEEP` backfills it later. Runs are keyed by the tag `circuitry.job_id`: a job
that already has a FINISHED run is never logged twice by a backfill; a job that ran again (its
folder was damaged and moved aside) replaces its older run, so MLflow shows the result on disk.
Only jobs of the sweep's spec are recorded, and a run's artifacts are the files its signed
record lists, read through orchestrator.store (no link followed, each sha256 checked) and uploaded
file by file from a private temporary copy of those bytes: never a folder, never a path a record
or a link names. A job whose folder fails those checks at upload time gets no run.

Where runs go: `run` logs to --tracking-uri, the spec's tracking_uri or the embedded store;
`sync` and `report` to --tracking-uri or the embedded store only. sweep.json's tracking_uri is
anyone's who can write the sweep folder, so they name it and never follow it.

Embedded default tracking store: `sqlite:///SWEEP/mlflow.db` with artifacts in `SWEEP/mlartifacts`,
created once by the driver before anything is logged. SQLite stores are opened in WAL mode with
synchronous=NORMAL (`_sqlite_without_fsync_per_commit`): MLflow commits ~9 times per run, and with
SQLite's default each commit waits for the disk, a few runs a second at most. A power
loss may then lose the last runs, never corrupt the store; the job folders are the record and
`circuitry sync` logs what is missing.

Throughput: a run is one create_run (with its tags), one log_batch (params, metrics and the error
tag together), its files (one upload each, to the artifact URI create_run returned) and
set_terminated; `circuitry sync` logs on the same pool. Runs that wait are counted
(`Recorder.backlog`, shown on the sweep's progress line); the sweep says how many are left when
its jobs are done and waits for them (Ctrl-C leaves the rest to `circuitry sync`).
benchmarks/mlflow_rate.py measures runs/s against a real `mlflow server` on SQLite and PostgreSQL.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from circuitry.orchestrator.mlflow_pool import LogPool, default_threads
from circuitry.orchestrator.safe_fs import move_links_aside
from circuitry.orchestrator.store import DamagedResult, JobStore, WriteFailed, is_job_id, write_atomic
from circuitry.workers.names import DEFAULT_ABLATION, DEFAULT_ORDER

JOB_TAG = "circuitry.job_id"
ROLE_TAG = "circuitry.role"
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def ui_url(base: str, experiment_id: str | None = None) -> str:
    """The MLflow UI's page of a sweep in its model-training view (runs table, charts). MLflow 3's
    UI opens in its GenAI view unless told otherwise, and (3.17, checked in headless Chromium) the
    experiment's kind tag alone does not switch it; the hash route's `workflowType` query does."""
    page = f"experiments/{experiment_id}" if experiment_id else ""
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


STORE_FILES = ("mlflow.db", "mlflow.db-wal", "mlflow.db-shm", "mlflow.db-journal", "mlartifacts")


def embedded_uri(sweep_dir: Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'mlflow.db'}"


def resolve_uri(sweep_dir: Path, uri: str | None) -> str:
    return uri or embedded_uri(sweep_dir)


def sync_command(sweep_dir: Path, uri: str) -> str:
    """The `circuitry sync` line that backfills `uri` (which sync takes from its command line only)."""
    flag = "" if uri == embedded_uri(sweep_dir) else f" --tracking-uri {uri}"
    return f"circuitry sync {sweep_dir}{flag}"


def read_records(sweep_dir: Path) -> dict[str, dict]:
    """The finished jobs' records (SWEEP/jobs/<id>/job.json); damaged folders are skipped."""
    return JobStore(sweep_dir).records()


def flat_row(rec: dict) -> dict:
    """One jobs.parquet row: identity, settings, timings and every scalar figure."""
    row = {
        "job_id": rec["job_id"], "kind": rec["kind"], "label": rec.get("label"), "status": rec.get("status"),
        "model_id": rec.get("model_id"), "duration_seconds": rec.get("duration_seconds"),
        "peak_memory_bytes": rec.get("peak_memory_bytes"), "attempts": rec.get("attempts"),
        "worker_pid": rec.get("worker_pid"), "hostname": rec.get("hostname"), "node_id": rec.get("node_id"),
        "finished_at": rec.get("finished_at"), "version": rec.get("version"), "error": rec.get("error"),
        "chunks": rec.get("chunks"),
    }
    for k, v in (rec.get("settings") or {}).items():
        row[k] = v
    for k, v in (rec.get("figures") or {}).items():
        if k in row:
            if row[k] == v or (k == "seed" and row["kind"] == "discover"):
                continue
            k = f"figure_{k}"
        if isinstance(v, (list, dict)):
            v = json.dumps(v)
        row.setdefault(k, v)
    return row


def write_parquet(rows: list[dict], path: Path) -> None:
    df = pd.DataFrame(rows)
    for col in df.columns:  # mixed-type columns (e.g. None and str, int and float) as strings
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 and not kinds <= {int, float}:
                df[col] = df[col].map(lambda v: None if v is None else str(v))
    table = pa.Table.from_pandas(df, preserve_index=False)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_atomic(path, buf.getvalue().to_pybytes())  # unique temp name, fsync, rename


def run_times(rec: dict) -> tuple[int, int]:
    """(start, end) of a job in epoch milliseconds, as MLflow wants them: the end is the record's
    finished_at, the start that minus the job's duration in the worker (a failed job has no
    duration: the driver's first sight of its first attempt, else its end)."""
    end = rec.get("finished_at") or time.time()
    dur = rec.get("duration_seconds")
    start = end - dur if isinstance(dur, (int, float)) and dur >= 0 else (rec.get("started_at") or end)
    return int(start * 1000), int(end * 1000)


_TAIL = re.compile(r"(out|dseed)\d+")


def run_name(rec: dict) -> str:
    """The MLflow run name: what tells a sweep's runs apart first, since the runs table cuts names
    short ("acdc t=0.01 · bimt s1 · independence", "bimt s1 steps=3000 · independence"); the
    job's label (orchestrator.jobs.expand) is in the run's description and its tags. Settings
    the label shows because the grid varies them (train: steps, lam, ...; discover: output and
    the discover seed) come after the regime and seed they belong to."""
    from circuitry.orchestrator.spec import TRAIN_GRID

    s, label = rec.get("settings") or {}, rec.get("label") or ""
    parts = label.split("/")
    if len(parts) < 4 or not {"task", "regime"} <= set(s):
        return label or rec["job_id"]
    tail: list[str] = []
    if rec["kind"] == "discover":
        while parts and _TAIL.fullmatch(parts[-1]):
            tail.insert(0, parts.pop())
        parts = parts[:-3]  # method, threshold, ablation: from the settings below
    extras = []
    for p in parts[4:]:  # train grid axes that vary, as "<key><value>" in the label
        key = max((k for k in TRAIN_GRID if p.startswith(k)), key=len, default=None)
        extras.append(f"{key}={p[len(key):]}" if key else p)
    seed = s.get("train_seed", s.get("seed"))
    model = " ".join([f"{s['regime']} s{seed}", *extras])
    if rec["kind"] != "discover":
        return f"{model} · {s['task']}"
    method = f"{s.get('method')} t={s.get('threshold'):g}" if isinstance(s.get("threshold"), (int, float)) \
        else str(s.get("method"))
    if isinstance(s.get("target_f"), (int, float)):
        method += f" f>={s['target_f']:g}"
    if s.get("order") not in (None, DEFAULT_ORDER):
        method += f" {s['order']}"
    if s.get("ablation") not in (None, DEFAULT_ABLATION):
        method += f" {s['ablation']}"
    return " ".join([method, *tail]) + f" · {model} · {s['task']}"


def run_tags(rec: dict) -> dict[str, str]:
    """Tags for the runs table's columns, filters and group-by (`tags.method = 'acdc'`): the
    settings that tell a sweep's runs apart. `seed` is the model's seed for both kinds."""
    s = rec.get("settings") or {}
    tags = {k: str(s[k]) for k in ("task", "regime", "method", "threshold", "target_f", "order", "ablation", "output")
            if s.get(k) is not None}
    seed = s.get("train_seed", s.get("seed"))
    if seed is not None:
        tags["seed"] = str(seed)
    if rec["kind"] == "discover" and s.get("seed") is not None:
        tags["discover_seed"] = str(s["seed"])
    return tags


_SQLITE_TUNED = False


def _sqlite_without_fsync_per_commit() -> None:
    """WAL and synchronous=NORMAL on every SQLite connection this process opens (module doc)."""
    global _SQLITE_TUNED
    if _SQLITE_TUNED:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_connection, _record):
        if isinstance(dbapi_connection, sqlite3.Connection):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    _SQLITE_TUNED = True


class MlflowLogger:
    """Synchronous MLflow logging of job records (used by the Recorder's thread and by sync)."""

    def __init__(self, uri: str, sweep_name: str, sweep_dir: Path, spec_params: dict | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # with an http(s) URI, MlflowClient.set_terminated prints "View run ... / View experiment
        # ..." to stdout for every run (two lines per job amid the progress output) and asks the
        # server for the run once more to do it; the sweep prints where its store is once
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if uri.startswith("http"):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import logging

        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)

        if uri.startswith("sqlite:"):
            _sqlite_without_fsync_per_commit()
        self.uri, self.sweep_name, self.sweep_dir = uri, sweep_name, Path(sweep_dir)
        embedded = uri == embedded_uri(self.sweep_dir)
        if embedded:  # SQLite and MLflow open these by path: a planted link is moved aside, not followed
            move_links_aside(self.sweep_dir, STORE_FILES, lambda m: print(m, file=sys.stderr))
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.client = MlflowClient(tracking_uri=uri)  # an SQLite store is created here, once
        exp = self.client.get_experiment_by_name(sweep_name)
        if exp is None:
            artifacts = None
            if uri.startswith("sqlite:") and uri == embedded_uri(self.sweep_dir):
                artifacts = (self.sweep_dir.resolve() / "mlartifacts").as_uri()
            self.exp_id = self.client.create_experiment(sweep_name, artifact_location=artifacts)
        else:
            self.exp_id = exp.experiment_id
        if embedded and (self.sweep_dir / "mlartifacts").is_dir():
            move_links_aside(self.sweep_dir / "mlartifacts", (str(self.exp_id),), lambda m: print(m, file=sys.stderr))
        if exp is None or exp.tags.get(KIND_TAG) != MODEL_TRAINING:
            # MLflow 3 records what an experiment is for in this tag (its UI reads it where the
            # global GenAI / model-training switch does not decide; ui_url sets that switch)
            self.client.set_experiment_tag(self.exp_id, KIND_TAG, MODEL_TRAINING)
        self.known = self._known_runs()
        parents = self.client.search_runs([self.exp_id], f"tags.`{ROLE_TAG}` = 'sweep'", max_results=1)
        if parents:
            self.parent = parents[0].info.run_id
            self.client.update_run(self.parent, status="RUNNING")
        else:
            self.parent = self.client.create_run(self.exp_id, run_name=sweep_name,
                                                 tags={ROLE_TAG: "sweep", "sweep": sweep_name}).info.run_id
        for k, v in (spec_params or {}).items():  # tags, not params: a re-run may change them
            self.client.set_tag(self.parent, k, str(v)[:5000])

    def _known_runs(self) -> dict[str, str]:
        """job id -> status of the runs already in the experiment (FINISHED wins). Runs that did not
        finish (a FAILED job, or a run cut off when the server went away) are remembered in
        self.stale and replaced when the job is logged again: one run per job id."""
        known: dict[str, str] = {}
        self.stale: dict[str, list[str]] = {}
        self.finished_runs: dict[str, list[str]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.exp_id], f"tags.`{ROLE_TAG}` = 'job'", max_results=1000,
                                           page_token=token)
            for run in page:
                jid = run.data.tags.get(JOB_TAG)
                if jid and known.get(jid) != "FINISHED":
                    known[jid] = run.info.status
                if jid and run.info.status != "FINISHED":
                    self.stale.setdefault(jid, []).append(run.info.run_id)
                elif jid:
                    self.finished_runs.setdefault(jid, []).append(run.info.run_id)
            token = page.token
            if not token:
                return known

    def _log(self, run_id: str, params: dict | None = None, metrics: list | None = None,
             when_ms: int | None = None, tags: dict | None = None) -> None:
        """Params, tags, and metrics (name, value, timestamp or None for `when_ms`, step) in as few
        log_batch calls as MLflow's limits allow (100 params, 1000 entries a call): one for a
        typical job."""
        from mlflow.entities import Metric, Param, RunTag

        ps = [Param(str(k)[:250], str(v)[:6000]) for k, v in (params or {}).items()]
        ts_ = [RunTag(k, v) for k, v in (tags or {}).items()]
        when_ms = when_ms or int(time.time() * 1000)
        ms = [Metric(k, float(v), when_ms if ts is None else ts, step) for k, v, ts, step in metrics or []]
        while ps or ms or ts_:
            p, ps = ps[:100], ps[100:]
            t, ts_ = ts_[:1000 - len(p)], ts_[1000 - len(p):]
            m, ms = ms[:1000 - len(p) - len(t)], ms[1000 - len(p) - len(t):]
            self.client.log_batch(run_id, params=p, metrics=m, tags=t)

    def _job_lock(self, jid: str) -> threading.Lock:
        """One lock per job id: a job's runs are logged one at a time (a backfill and a fresh
        result of the same job must not both create a run), different jobs' at once."""
        with self._locks_guard:
            return self._locks.setdefault(jid, threading.Lock())

    def log_job(self, rec: dict, replace: bool = False) -> bool:
        """One child run for a job record; False when the job already has a FINISHED run, unless
        `replace` (a result just written, which supersedes the run of an earlier one). The run's
        start and end are the job's own (in the worker), not the time it was logged."""
        jid = rec["job_id"]
        if not is_job_id(jid):  # callers pass the spec's jobs only; the id becomes a path below
            raise ValueError(f"{jid!r} is not a job id")
        with self._job_lock(jid):
            return self._log_job(jid, rec, replace)

    def _log_job(self, jid: str, rec: dict, replace: bool) -> bool:
        status = "FINISHED" if rec.get("status") == "finished" else "FAILED"
        if replace and jid in self.finished_runs:
            self.stale.setdefault(jid, []).extend(self.finished_runs.pop(jid))
            self.known.pop(jid, None)
        if self.known.get(jid) == "FINISHED":
            return False
        files = {}
        if status == "FINISHED":
            try:  # the checked bytes of the files the signed record lists (module doc), and that record
                rec, files = JobStore(self.sweep_dir).read(jid)
                files = {**files, "job.json": json.dumps(rec, indent=2, sort_keys=True).encode()}
            except FileNotFoundError:  # no jobs/ at all (a record logged on its own): no artifacts
                files = {}
            except DamagedResult:
                return False
        for old in self.stale.pop(jid, []):
            self.client.delete_run(old)
        tags = {ROLE_TAG: "job", JOB_TAG: jid, "mlflow.parentRunId": self.parent, "kind": rec["kind"],
                "status": rec.get("status", ""), "sweep": self.sweep_name, **run_tags(rec),
                "mlflow.note.content": f"{rec.get('label') or jid} (job id {jid})"}
        start_ms, end_ms = run_times(rec)
        run = self.client.create_run(self.exp_id, start_time=start_ms, run_name=run_name(rec), tags=tags).info
        run_id = run.run_id
        settings = rec.get("settings") or {}
        params = {"job_id": jid, "kind": rec["kind"], **settings}
        if rec.get("model_id"):
            params["model_id"] = rec["model_id"]
        if rec.get("version"):
            params["version"] = rec["version"]
        metrics = []
        for k, v in (rec.get("figures") or {}).items():
            if isinstance(v, bool):
                v = int(v)
            if isinstance(v, (int, float)) and math.isfinite(v):
                metrics.append((k, v, None, 0))
        for k in ("duration_seconds", "peak_memory_bytes", "attempts"):
            if isinstance(rec.get(k), (int, float)):
                metrics.append((f"job_{k}", rec[k], None, 0))
        for point in rec.get("curve") or []:
            for k in ("train_loss", "test_loss"):
                if point.get(k) is not None and math.isfinite(point[k]):
                    metrics.append((f"curve_{k}", point[k], None, int(point["step"])))
        self._log(run_id, params, metrics, end_ms, {"error": str(rec["error"])[:5000]} if rec.get("error") else None)
        if files:
            self._upload(run_id, files, artifact_uri=run.artifact_uri)
        self.client.set_terminated(run_id, status, end_time=end_ms)
        self.known[jid] = status
        if status != "FINISHED":
            self.stale.setdefault(jid, []).append(run_id)
        else:
            self.finished_runs[jid] = [run_id]
        return True

    def _upload(self, run_id: str, files: dict[str, bytes], under: str | None = None,
                artifact_uri: str | None = None) -> None:
        """Each file as its own artifact, from a copy in a private temporary folder (mode 0700).
        With the run's `artifact_uri` (create_run returns it) the files go straight to its
        artifact store, as MlflowClient.log_artifact sends them once it has asked the server for
        the whole run (params, metrics, tags, inputs) to learn that URI: a request that costs the
        server about what create_run does, saved for every run."""
        import tempfile

        if artifact_uri:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
            from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

            repo = get_artifact_repository(add_databricks_profile_info_to_artifact_uri(artifact_uri, self.uri),
                                           tracking_uri=self.uri)
            log = repo.log_artifact
        else:
            def log(path: str, under: str | None) -> None:
                self.client.log_artifact(run_id, path, under)
        with tempfile.TemporaryDirectory(prefix="circuitry-upload-") as tmp:
            for name, data in files.items():
                path = Path(tmp) / name
                path.write_bytes(data)
                log(str(path), under)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.parent, status)


class Recorder:
    """jobs.parquet (driver thread, throttled rewrites) + MLflow (background threads,
    orchestrator.mlflow_pool)."""

    def __init__(self, sweep_dir: Path, sweep_name: str, tracking_uri: str, spec_params: dict | None = None,
                 mlflow_enabled: bool = True, warn=None, mlflow_threads: int | None = None):
        self.sweep_dir = Path(sweep_dir)
        self.name, self.uri, self.spec_params = sweep_name, tracking_uri, spec_params or {}
        self.threads = mlflow_threads or default_threads(tracking_uri)
        self.rows: dict[str, tuple] = {}  # job id -> (column names, values): compact, see _keep
        self._names: dict[tuple, tuple] = {}
        self.parquet = self.sweep_dir / "jobs.parquet"
        self.dirty, self.last_write = False, 0.0
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.mlflow_enabled = mlflow_enabled
        self.mlflow_error: str | None = None
        self.pool: LogPool | None = None

    def start(self, existing: dict[str, dict]) -> None:
        old = {}
        try:  # keep what only the table knows (attempts) for jobs finished in earlier runs
            if self.parquet.is_symlink() or not self.parquet.is_file():  # a planted link or FIFO: not read
                raise FileNotFoundError(self.parquet)
            for row in pq.read_table(self.parquet).to_pylist():
                if row.get("status") == "finished":
                    old[row["job_id"]] = row
        except (OSError, pa.ArrowException, KeyError):
            pass
        for rec in existing.values():
            row = flat_row(rec)
            prev = old.get(rec["job_id"])
            if prev and prev.get("attempts") is not None:
                row["attempts"] = rec["attempts"] = prev["attempts"]
            self._keep(row)
        self.dirty = True
        self.flush_parquet(force=True)
        if self.mlflow_enabled:
            self.pool = LogPool(lambda: MlflowLogger(self.uri, self.name, self.sweep_dir, self.spec_params),
                                self.threads, self._fail)
            for rec in existing.values():  # backfill finished jobs without a run (no duplicates)
                self.pool.put((rec, False))

    def _keep(self, row: dict) -> None:
        """A job's row as a tuple of values beside its column names, shared by the rows that have
        the same (one tuple per kind of job): a third of a dict's memory, for every job of a sweep."""
        names = tuple(row)
        names = self._names.setdefault(names, names)
        self.rows[row["job_id"]] = (names, tuple(row.values()))

    def add(self, rec: dict) -> None:
        """A job that ran now: its row, and its run (replacing the run of an earlier result)."""
        self._keep(flat_row(rec))
        self.dirty = True
        self.flush_parquet()
        if self.pool is not None:
            self.pool.put((rec, True))

    @property
    def logged(self) -> int:
        """Runs logged to MLflow so far."""
        return self.pool.logged if self.pool is not None else 0

    def backlog(self) -> int:
        """Runs waiting to be logged to MLflow (0 when MLflow is off or failed)."""
        return self.pool.backlog() if self.pool is not None else 0

    write_error: str | None = None

    def flush_parquet(self, force: bool = False) -> None:
        """Rewrite jobs.parquet (at most every 2 s unless `force`); WriteFailed when it cannot."""
        if self.dirty and (force or time.monotonic() - self.last_write > 2.0):
            write_parquet([dict(zip(names, values)) for names, values in self.rows.values()], self.parquet)
            self.dirty, self.last_write = False, time.monotonic()

    def _fail(self, e: Exception) -> None:
        self.mlflow_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        self.warn(f"warning: MLflow at {self.uri} failed ({self.mlflow_error}); recording goes on in "
                  f"{self.parquet}; run `{sync_command(self.sweep_dir, self.uri)}` to backfill MLflow")

    def close(self, status: str = "FINISHED", timeout: float | None = None) -> None:
        """The last jobs.parquet (a failure is kept in write_error, not raised: MLflow still ends)."""
        try:
            self.flush_parquet(force=True)
        except WriteFailed as e:
            self.write_error = str(e)
        if self.pool is not None:
            self.pool.close(status, timeout)
