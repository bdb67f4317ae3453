"""MLflow recording rate over HTTP: runs/s a sweep's Recorder logs to a real `mlflow server`, on a
SQLite store and on a PostgreSQL one, with one logging thread (how the Recorder logged before
orchestrator.mlflow_pool: one run after another) and with a pool; with and without each job's files.

Each run is a train job's record as a sweep logs it: ~25 params, 17 figures, a 21-point loss
curve, the job's tags; with files its folder too (metrics.json, model.pt, job.json, ~14 kB, one
upload each), sent either to the artifact URI create_run returned (now) or through
MlflowClient.log_artifact, which asks the server for the whole run first (before: `+lookup`).
Rates are timed from the first result handed to the Recorder to the last run logged
(Recorder.close), the rows side by side in one process against one server; every run is counted
back from the server afterwards ("lost" must be 0). The server's CPU time per run (its processes'
user + system time) is printed too: on a shared machine the rate depends on what else runs, the
CPU a run costs does not, and cores / that cost is the server's ceiling. The breakdown then logs
a few runs on one thread and charges each request its server CPU: where a run's cost goes.
`--fronts` repeats the rows with mlflow server under other HTTP servers (FRONTS).

    python benchmarks/mlflow_rate.py                   # SQLite (as made, in WAL mode), PostgreSQL
    python benchmarks/mlflow_rate.py --runs 400 --stores sqlite --rows 1,4,8,16,8+files
    python benchmarks/mlflow_rate.py --stores postgresql --rows 8,8+files --fronts uvicorn,gunicorn

PostgreSQL: the server binaries (apt-get install postgresql; found under /usr/lib/postgresql/*/bin)
and psycopg2 (pip install psycopg2-binary) in this environment; the cluster is a throwaway one in
a temporary folder, started as the `postgres` user when run as root, on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
BIN = Path(sys.executable).parent

from circuitry.orchestrator.recorder import JOB_TAG, MlflowLogger, Recorder  # noqa: E402
from circuitry.orchestrator.store import JobResult, JobStore  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FRONTS = {"uvicorn": [],  # mlflow server's default: FastAPI around MLflow's Flask app
          "gunicorn": ["--gunicorn-opts", "--worker-class gthread --threads 8 --log-level warning"]}  # Flask alone


def start_mlflow(store_uri: str, base: Path, workers: int, wal: bool = False,
                 front: str = "uvicorn") -> tuple[subprocess.Popen, str]:
    """`mlflow server` on `store_uri` (SQLite: in WAL mode when `wal`, where readers do not block
    its writer), serving artifacts from `base`, under the `front` HTTP server (FRONTS)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    subprocess.run([str(BIN / "mlflow"), "db", "upgrade", store_uri], env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if store_uri.startswith("sqlite:") and wal:  # kept in the file: every connection the server opens uses it
        with contextlib.closing(sqlite3.connect(store_uri.removeprefix("sqlite:///"))) as db:
            db.execute("PRAGMA journal_mode=WAL")
    port = free_port()
    log = open(base / "mlflow-server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", store_uri,
                             "--artifacts-destination", str(base / "mlartifacts"), "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), *FRONTS[front]],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("mlflow server did not start: " + (base / "mlflow-server.log").read_text()[-2000:])
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


class Postgres:
    """A throwaway PostgreSQL cluster in `base`, on 127.0.0.1:port, trust authentication."""

    def __init__(self, base: Path):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
        self.bin = Path(bins[-1]).parent
        self.data, self.port = base / "pgdata", free_port()
        self.user = "postgres" if os.geteuid() == 0 else None  # the server refuses to run as root
        base.mkdir(parents=True, exist_ok=True)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(base, pw.pw_uid, pw.pw_gid)
            base.parent.chmod(0o711)  # mkdtemp's folder is private; the postgres user must pass through it
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(base / "pg.log"), "-w", "start",
                   "-o", f"-p {self.port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=on"])
        self._run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow"])
        self.uri = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"  # SQLAlchemy 2.1 would pick psycopg 3

    def _run(self, cmd: list[str]) -> None:
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        """The postmaster's process id (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])


@functools.cache
def model_bytes() -> bytes:
    """A width-20 model's checkpoint (the store checks that model.pt loads as one)."""
    from circuitry.workers.model import CoordMLP, checkpoint_bytes

    return checkpoint_bytes(CoordMLP([4, 20, 20, 2]).to_checkpoint("independence", "bimt", 0, {}))


def train_record(i: int, sweep_dir: Path, artifacts: bool) -> dict:
    """A record shaped like a train job's (orchestrator.execute), and its folder when `artifacts`
    (metrics.json, model.pt and the signed job.json)."""
    jid = f"{i:016x}"
    settings = {"task": "independence", "regime": "bimt", "seed": i, "steps": 2000, "lam": 0.001, "width": 20,
                "swap_every": 200, "lr": 0.002, "batch_size": 0, "log_every": 100, "device": "cpu",
                **{f"recipe_{k}": v for k, v in zip("abcdefghijklmn", range(14))}}
    figures = {k: 0.1 * (i + 1) + j for j, k in enumerate(
        ["connection_cost", "test_loss", "train_loss", "steps_per_second", "train_seconds", "swap_seconds",
         "swap_share", "neurons_swapped", "n_parameters", "peak_memory_bytes", "peak_memory_delta_bytes",
         "inference_per_second_batch1", "inference_per_second_batch1024", "train_examples",
         "weights_above_1e-2", "weights_above_5e-2", "weights_above_1e-1"])}
    now = time.time()
    rec = {"job_id": jid, "kind": "train", "label": f"independence/bimt/s{i}/steps2000", "status": "finished",
           "settings": settings, "model_id": None, "version": "bench", "figures": figures,
           "duration_seconds": 1.0, "peak_memory_bytes": 2 ** 20, "attempts": 1, "finished_at": now,
           "curve": [{"step": s, "train_loss": 1 / (s + 1), "test_loss": 1.1 / (s + 1)} for s in range(0, 2001, 100)]}
    if artifacts:  # a signed folder, as the driver's store writes it: the Recorder uploads only those
        store = JobStore(sweep_dir, fsync=False)
        store.prepare()
        rec = store.commit(jid, JobResult(rec, {"metrics.json": json.dumps({**figures, "curve": rec["curve"]}).encode(),
                                                "model.pt": model_bytes()}))
    return rec


def server_pids(proc: subprocess.Popen) -> list[int]:
    """The server and every process it started (its workers), from Linux /proc."""
    return server_pids_of(proc.pid)


def server_pids_of(root: int) -> list[int]:
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, changed = {root}, True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return sorted(tree)


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process, its living descendants and the children it has reaped (a
    PostgreSQL server's backends, one per connection)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in server_pids_of(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if pid == root else 0)) / tick
    return total


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of these processes so far."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Variant(NamedTuple):
    """One row: `threads` runs logged at once; with `files`, each job's folder uploaded too;
    `lookup`: uploads through MlflowClient.log_artifact, which asks the server for the whole run
    first (how the Recorder uploaded before it kept create_run's artifact URI)."""
    threads: int
    files: bool = False
    lookup: bool = False

    @classmethod
    def parse(cls, text: str) -> Variant:
        threads, *flags = text.split("+")
        if set(flags) - {"files", "lookup"}:
            raise SystemExit(f"--rows: {text!r}: write THREADS[+files[+lookup]]")
        return cls(int(threads), "files" in flags, "lookup" in flags)

    def label(self) -> str:
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}" + \
            (", files" + (" (run looked up first)" if self.lookup else "") if self.files else "")


class LookupFirst(MlflowLogger):
    """The Recorder's uploads before: MlflowClient.log_artifact (a get_run per run first)."""

    def _upload(self, run_id, files, under=None, artifact_uri=None):
        super()._upload(run_id, files, under)


@contextlib.contextmanager
def logger_class(cls):
    from circuitry.orchestrator import recorder

    saved, recorder.MlflowLogger = recorder.MlflowLogger, cls
    try:
        yield
    finally:
        recorder.MlflowLogger = saved


@contextlib.contextmanager
def server_cpu_per_call(pids: list[int], spent: dict[str, list[float]]):
    """Each MLflow request the logger makes, with the server CPU it cost (one thread logging, so
    the server serves nothing else meanwhile)."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.store.tracking.rest_store import RestStore

    calls = {(RestStore, "create_run"): "create_run", (RestStore, "log_batch"): "log_batch",
             (RestStore, "update_run_info"): "update_run (set_terminated)", (RestStore, "get_run"): "get_run",
             (HttpArtifactRepository, "log_artifact"): "upload one file"}
    saved = {key: getattr(*key) for key in calls}

    def timed(fn, name):
        def call(*args, **kwargs):
            before = cpu_seconds(pids)
            try:
                return fn(*args, **kwargs)
            finally:
                spent.setdefault(name, []).append(cpu_seconds(pids) - before)
        return call

    for (owner, attr), name in calls.items():
        setattr(owner, attr, timed(saved[(owner, attr)], name))
    try:
        yield
    finally:
        for (owner, attr), fn in saved.items():
            setattr(owner, attr, fn)


def count_runs(url: str, name: str, job_ids: set[str]) -> int:
    """How many of these jobs have a FINISHED run on the server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(name)
    found, token = set(), None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.`circuitry.role` = 'job'", max_results=1000,
                                  page_token=token)
        found |= {r.data.tags[JOB_TAG] for r in page if r.info.status == "FINISHED"}
        token = page.token
        if not token:
            return len(found & job_ids)


def measure(url: str, runs: int, variant: Variant, base: Path, pids: list[int],
            spent: dict[str, list[float]] | None = None, db_pid: int | None = None) -> dict:
    name = f"rate-{variant.threads}-{time.monotonic_ns()}"
    sweep_dir = base / name
    sweep_dir.mkdir()
    records = [train_record(i, sweep_dir, variant.files) for i in range(runs)]
    with logger_class(LookupFirst if variant.lookup else MlflowLogger), \
            (server_cpu_per_call(pids, spent) if spent is not None else contextlib.nullcontext()):
        rec = Recorder(sweep_dir, name, url, mlflow_threads=variant.threads, warn=lambda m: print(m, file=sys.stderr))
        rec.start({})
        db0 = tree_cpu_seconds(db_pid) if db_pid else 0.0
        server0, client0, t0 = cpu_seconds(pids), time.process_time(), time.perf_counter()
        for r in records:
            rec.add(r)
        rec.close("FINISHED")
        seconds = time.perf_counter() - t0
        server_cpu, client_cpu = cpu_seconds(pids) - server0, time.process_time() - client0
        db_cpu = tree_cpu_seconds(db_pid) - db0 if db_pid else None
    lost = runs - count_runs(url, name, {r["job_id"] for r in records})
    return {"threads": variant.threads, "files": variant.files, "lookup": variant.lookup, "runs": runs,
            "seconds": seconds, "runs_per_s": runs / seconds, "server_cpu_ms_per_run": 1000 * server_cpu / runs,
            "client_cpu_ms_per_run": 1000 * client_cpu / runs,
            "database_cpu_ms_per_run": None if db_cpu is None else 1000 * db_cpu / runs,
            "load_average": os.getloadavg()[0],
            "lost": lost, "error": rec.mlflow_error}


def print_breakdown(store: str, spent: dict[str, list[float]], runs: int) -> None:
    for name, costs in spent.items():
        each = 1000 * sum(costs) / len(costs)
        print(f"{store:19s}   {name:28s} {len(costs) / runs:4.1f} / run, server CPU {each:5.1f} ms each, "
              f"{1000 * sum(costs) / runs:5.1f} ms / run", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rows", default="1,8,8+files+lookup,8+files",
                    help="comma-separated THREADS[+files[+lookup]]: logging threads (1 = before the pool), "
                         "each job's folder uploaded too (+files), through a lookup of the run first (+lookup: before)")
    ap.add_argument("--stores", default="sqlite,sqlite-wal,postgresql",
                    help="sqlite: as `mlflow db upgrade` makes it; sqlite-wal: that file switched to WAL mode")
    ap.add_argument("--server-workers", type=int, default=2, help="the mlflow server's worker processes")
    ap.add_argument("--fronts", default="uvicorn",
                    help=f"comma-separated HTTP servers for mlflow server: {', '.join(FRONTS)}")
    ap.add_argument("--breakdown", type=int, default=40, metavar="RUNS",
                    help="then log RUNS runs (files, run looked up first) on one thread, timing the server's CPU "
                         "per request (0: no)")
    args = ap.parse_args()
    variants = [Variant.parse(v) for v in args.rows.split(",")]
    fronts = args.fronts.split(",")
    if set(fronts) - set(FRONTS):
        raise SystemExit(f"--fronts: one of {', '.join(FRONTS)}, comma-separated")
    rows = []
    for store in args.stores.split(","):
        base = Path(tempfile.mkdtemp(prefix=f"mlflow-rate-{store}-"))
        pg = server = None
        try:
            if store in ("sqlite", "sqlite-wal"):
                uri = f"sqlite:///{base / 'mlflow.db'}"
            else:
                try:
                    import psycopg2  # noqa: F401 - the server's driver for the postgresql+psycopg2:// URI
                    pg = Postgres(base / "pg")
                except Exception as e:  # noqa: BLE001
                    print(f"{store}: skipped ({type(e).__name__}: {e})")
                    continue
                uri = pg.uri
            for front in fronts:
                server, url = start_mlflow(uri, base, args.server_workers, wal=store == "sqlite-wal", front=front)
                where = store if fronts == ["uvicorn"] else f"{store}/{front}"
                pids = server_pids(server)
                measure(url, 10, Variant(2, files=True), base, pids)  # warm-up: imports, connections, caches
                for v in variants:
                    row = {"store": where, **measure(url, args.runs, v, base, pids, db_pid=pg and pg.pid)}
                    rows.append(row)
                    print(f"{where:19s} {v.label():38s}: {row['runs']} runs in {row['seconds']:.1f} s = "
                          f"{row['runs_per_s']:.1f} runs/s; server CPU {row['server_cpu_ms_per_run']:.0f} ms/run, "
                          f"client CPU {row['client_cpu_ms_per_run']:.0f} ms/run"
                          + (f", database CPU {row['database_cpu_ms_per_run']:.0f} ms/run" if pg else "")
                          + f"; load {row['load_average']:.1f}; "
                          f"lost {row['lost']}" + (f", error {row['error']}" if row["error"] else ""), flush=True)
                if args.breakdown:
                    spent: dict[str, list[float]] = {}
                    measure(url, args.breakdown, Variant(1, files=True, lookup=True), base, pids, spent)
                    print_breakdown(where, spent, args.breakdown)
                    rows.append({"store": where, "breakdown_ms_per_run": {k: 1000 * sum(c) / args.breakdown
                                                                          for k, c in spent.items()}})
                stop(server)
                server = None
        finally:
            if server is not None:
                stop(server)
            if pg is not None:
                pg.stop()
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
